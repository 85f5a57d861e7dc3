"""Metric functions against hand-computed cases and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constrained_rec.evaluation.metrics import (
    bootstrap_interval,
    catalog_coverage,
    hit_rate,
    mean_popularity_percentile,
    ndcg,
    popularity_percentiles,
    ranking_metrics,
    target_rank,
    title_rank,
    title_ranking_metrics,
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
    with pytest.raises(ValueError, match="K must be an integer >= 1, got 0"):
        hit_rate([1], 0)
    with pytest.raises(ValueError, match="2 rankings for 1 targets"):
        ranking_metrics([[1], [2]], [1])
    with pytest.raises(ValueError, match=r"items \[9\] that are not in the catalog"):
        popularity_percentiles({9: 3}, [1, 2])
    with pytest.raises(ValueError, match="recommended item 9"):
        mean_popularity_percentile([[9]], {1: 50.0})
    with pytest.raises(ValueError, match="confidence must lie in"):
        bootstrap_interval([1.0], confidence=95)
    with pytest.raises(ValueError, match="2 title rankings for 1 target titles"):
        title_ranking_metrics([["a"], ["b"]], ["a"])


def test_title_hits_differ_from_item_hits_with_duplicate_titles():
    # items 2 and 3 share the title "Tape"; the target is item 3
    titles = {1: "Glue", 2: "Tape", 3: "Tape", 4: "Saw"}
    rankings = [[2, 1, 3], [1, 2, 4], [2, 3, 4], [4, 1, 3]]
    targets = [3, 3, 3, 3]
    items = ranking_metrics(rankings, targets, ks=[1, 2, 3], num_resamples=50)
    by_title = title_ranking_metrics([[titles[i] for i in r] for r in rankings], ["Tape"] * 4, ks=[1, 2, 3],
                                     num_resamples=50)
    # item ranks 3, inf, 2, 3; title ranks (among distinct titles) 1, 2, 1, 3
    assert [items[f"hr@{k}"]["value"] for k in (1, 2, 3)] == [0.0, 0.25, 0.75]
    assert [by_title[f"title_hr@{k}"]["value"] for k in (1, 2, 3)] == [0.5, 0.75, 1.0]
    assert by_title["title_ndcg@2"]["value"] == pytest.approx((1 + 1 / math.log2(3) + 1) / 4)
    assert set(by_title) == {f"title_{m}@{k}" for m in ("hr", "ndcg") for k in (1, 2, 3)}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdef"), max_size=8), min_size=1, max_size=10), st.data())
def test_title_rank_is_the_rank_among_distinct_titles(rankings, data):
    for ranking in rankings:
        target = data.draw(st.sampled_from("abcdefg"))
        distinct = []
        for title in ranking:
            if title not in distinct:
                distinct.append(title)
        expected = distinct.index(target) + 1 if target in distinct else math.inf
        assert title_rank(ranking, target) == expected
        # a title hit within K distinct titles whenever the target item's title is within the first K items
        assert title_rank(ranking, target) <= target_rank(ranking, target)


def test_method_metrics_report_item_and_title_hits():
    from constrained_rec.evaluation.evaluate import EvalConfig, method_metrics

    record = {"method": "m", "target_item_id": 3, "target_title": "Tape", "num_outputs": 0, "num_valid_outputs": 0,
              "seconds": 0.1}
    records = [{**record, "item_ids": [2, 1], "titles": ["Tape", "Glue"]},
               {**record, "item_ids": [3, 1], "titles": ["Tape", "Glue"]},
               {**record, "method": "old", "item_ids": [3, 1]}]  # a record without titles (an older version's)
    figures = method_metrics(records, EvalConfig(ks=(1, 2), bootstrap_resamples=50), catalog_size=4,
                             popularity={i: 50.0 for i in range(1, 5)})
    assert figures["m"]["hr@1"]["value"] == 0.5 and figures["m"]["title_hr@1"]["value"] == 1.0
    assert figures["m"]["title_ndcg@2"]["ci"] == [1.0, 1.0]
    assert "title_hr@1" not in figures["old"] and figures["old"]["hr@1"]["value"] == 1.0
