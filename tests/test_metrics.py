"""Metric functions against hand-computed cases and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constrained_rec.metrics import (
    bootstrap_interval,
    catalog_coverage,
    hit_rate,
    mean_popularity_percentile,
    ndcg,
    popularity_percentiles,
    ranking_metrics,
    target_rank,
)


def test_hand_computed_hr_and_ndcg():
    # users: target at rank 1, rank 2, rank 4, absent
    rankings = [[5, 1, 2], [1, 5, 2], [9, 8, 7, 5, 3], [1, 2, 3]]
    targets = [5, 5, 5, 5]
    figures = ranking_metrics(rankings, targets, ks=[1, 2, 5], num_resamples=200)
    assert figures["hr@1"]["value"] == 0.25
    assert figures["hr@2"]["value"] == 0.5
    assert figures["hr@5"]["value"] == 0.75
    assert figures["ndcg@1"]["value"] == 0.25
    assert figures["ndcg@2"]["value"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert figures["ndcg@5"]["value"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    for figure in figures.values():
        low, high = figure["ci"]
        assert low <= figure["value"] <= high


def test_target_rank_takes_the_first_occurrence():
    assert target_rank([3, 4, 3], 3) == 1
    assert target_rank([], 3) == math.inf


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 15), max_size=12, unique=True), min_size=1, max_size=20),
       st.integers(1, 12), st.data())
def test_hr_and_ndcg_match_brute_force(rankings, k, data):
    targets = [data.draw(st.integers(0, 15)) for _ in rankings]
    ranks = [target_rank(r, t) for r, t in zip(rankings, targets)]
    expected_hr = [1.0 if t in r[:k] else 0.0 for r, t in zip(rankings, targets)]
    expected_ndcg = [1.0 / math.log2(r[:k].index(t) + 2) if t in r[:k] else 0.0 for r, t in zip(rankings, targets)]
    assert hit_rate(ranks, k).tolist() == expected_hr
    np.testing.assert_allclose(ndcg(ranks, k), expected_ndcg)


def test_bootstrap_interval_of_constant_values_is_a_point():
    assert bootstrap_interval([0.25] * 30) == pytest.approx((0.25, 0.25))


def test_bootstrap_interval_matches_the_normal_approximation():
    values = np.array([1.0] * 300 + [0.0] * 700)
    low, high = bootstrap_interval(values, num_resamples=2000, seed=1)
    half_width = 1.96 * math.sqrt(0.3 * 0.7 / len(values))
    assert low == pytest.approx(0.3 - half_width, abs=0.006)
    assert high == pytest.approx(0.3 + half_width, abs=0.006)


def test_bootstrap_interval_is_reproducible_and_seeded():
    values = np.random.default_rng(0).random(50)
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_bootstrap_interval_without_users_is_nan():
    assert all(math.isnan(x) for x in bootstrap_interval([]))


def test_catalog_coverage_counts_distinct_items_in_the_top_k():
    rankings = [[1, 2, 3, 4], [2, 1, 5, 6], [7]]
    assert catalog_coverage(rankings, catalog_size=20, k=2) == 3 / 20
    assert catalog_coverage(rankings, catalog_size=20, k=10) == 7 / 20


def test_popularity_percentiles_are_mid_ranks():
    # counts 0, 0, 1, 5, 5 over five items: below/equal shares give the mid-rank percentiles
    percentiles = popularity_percentiles({3: 1, 4: 5, 5: 5}, catalog_item_ids=[1, 2, 3, 4, 5])
    assert percentiles == {1: 20.0, 2: 20.0, 3: 50.0, 4: 80.0, 5: 80.0}
    assert mean_popularity_percentile([[4, 3], [1, 5, 2]], percentiles, k=2) == (80 + 50 + 20 + 80) / 4


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="K must be a positive integer, got 0"):
        hit_rate([1], 0)
    with pytest.raises(ValueError, match="2 rankings for 1 targets"):
        ranking_metrics([[1], [2]], [1])
    with pytest.raises(ValueError, match=r"items \[9\] that are not in the catalog"):
        popularity_percentiles({9: 3}, [1, 2])
    with pytest.raises(ValueError, match="recommended item 9"):
        mean_popularity_percentile([[9]], {1: 50.0})
    with pytest.raises(ValueError, match="confidence must lie in"):
        bootstrap_interval([1.0], confidence=95)
