"""constrained_rec.evaluation.paired: per-user NDCG differences, the paired bootstrap, counts, verdicts, report and figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constrained_rec.evaluation.paired import paired_difference, paired_markdown, run_pairs, verdict


def _records(method: str, ranks: list) -> list[dict]:
    """One record per user whose target (item 0) sits at ``rank`` (None: absent) among items 1..20."""
    out = []
    for user, rank in enumerate(ranks):
        items = list(range(1, 21))
        if rank is not None:
            items[rank - 1] = 0
        out.append({"method": method, "sample": user, "item_ids": items, "target_item_id": 0})
    return out


ranks_strategy = st.lists(st.one_of(st.none(), st.integers(1, 20)), min_size=1, max_size=40)


@settings(max_examples=50, deadline=None)
@given(pairs=st.lists(st.tuples(st.one_of(st.none(), st.integers(1, 20)), st.one_of(st.none(), st.integers(1, 20))),
                      min_size=1, max_size=40), seed=st.integers(0, 5))
def test_the_paired_difference_matches_brute_force(pairs, seed):
    def brute_ndcg(rank):
        return 1.0 / math.log2(rank + 1) if rank is not None and rank <= 10 else 0.0

    a_ranks, b_ranks = [p[0] for p in pairs], [p[1] for p in pairs]
    records = _records("b", b_ranks)[::-1] + _records("a", a_ranks)  # order of records does not matter
    result = paired_difference(records, "a", "b", seed=seed)
    differences = [brute_ndcg(x) - brute_ndcg(y) for x, y in pairs]
    assert result["users"] == len(pairs)
    assert result["value"] == pytest.approx(float(np.mean(differences)))
    assert (result["wins"], result["losses"], result["ties"]) == (
        sum(d > 0 for d in differences), sum(d < 0 for d in differences), sum(d == 0 for d in differences))
    low, high = result["ci"]
    assert min(differences) - 1e-12 <= low <= result["value"] + 1e-12 and result["value"] - 1e-12 <= high <= max(differences) + 1e-12
    assert result["verdict"] == ("a beats b" if low > 0 else "a trails b" if high < 0 else
                                 "no clear difference between a and b")


def test_a_method_beats_another_only_when_the_interval_is_above_zero():
    assert verdict({"a": "x", "b": "y", "ci": [0.001, 0.2]}) == "x beats y"
    assert verdict({"a": "x", "b": "y", "ci": [-0.2, -0.001]}) == "x trails y"
    for ci in ([0.0, 0.2], [-0.1, 0.1], [math.nan, math.nan]):
        assert verdict({"a": "x", "b": "y", "ci": ci}) == "no clear difference between x and y"
    same = _records("a", [1, 2, None]) + _records("b", [1, 2, None])
    result = paired_difference(same, "a", "b")
    assert (result["value"], result["ties"], result["verdict"]) == (0.0, 3, "no clear difference between a and b")


def test_methods_on_different_users_cannot_be_paired():
    records = _records("a", [1, 2, 3]) + _records("b", [1, 2])
    with pytest.raises(ValueError, match="different users"):
        paired_difference(records, "a", "b")
    with pytest.raises(ValueError, match="no records of 'c'"):
        paired_difference(records, "a", "c")


def test_a_run_pairs_lm_plus_prior_with_the_assistant_and_the_lm_with_most_popular():
    methods = ["most-popular", "sasrec", "constrained", "constrained+sasrec"]
    assert run_pairs(methods, "sasrec", "constrained+sasrec") == [("constrained+sasrec", "sasrec"),
                                                                  ("constrained", "most-popular")]
    assert run_pairs(["most-popular", "sasrec", "constrained+sasrec"], "sasrec", "constrained+sasrec") == [
        ("constrained+sasrec", "sasrec")]
    assert run_pairs(["constrained", "unconstrained-exact"]) == []


def test_the_report_section_and_figure(tmp_path):
    from constrained_rec.experiment.report import plot_metrics

    records = _records("constrained+sasrec", [1] * 30 + [None] * 10) + _records("sasrec", [3] * 40)
    comparison = paired_difference(records, "constrained+sasrec", "sasrec")
    lines = paired_markdown([comparison])
    assert lines[0] == "## Paired comparisons"
    row = lines[-1]
    assert row.startswith("| constrained+sasrec - sasrec | 40 | ") and "30 / 10 / 0" in row
    assert row.endswith(f"| {comparison['verdict']} |")
    figure = {"users": 40, "hr@10": {"value": 0.5, "ci": [0.4, 0.6]}, "ndcg@10": {"value": 0.3, "ci": [0.2, 0.4]}}
    plot_metrics({"sasrec": figure}, tmp_path / "metrics.png", paired=[comparison])
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_the_report_says_when_lm_plus_prior_falls_back_and_shows_the_sweep_with_intervals():
    from constrained_rec.experiment.report import assistant_markdown

    versus = {"value": -0.01, "ci": [-0.03, 0.01], "wins": 3, "losses": 5, "ties": 92}
    sweep = {"users": 100, "num_beams": 10, "grid": [1.0, 4.0], "chosen": "assistant", "fallback": True,
             "validation_ndcg@10": [0.1, 0.12], "validation_ndcg@10_ci": [[0.05, 0.15], [0.07, 0.17]],
             "assistant_ndcg@10": {"value": 0.13, "ci": [0.08, 0.18]}, "versus_assistant": [versus, versus],
             "prefill": "once"}
    assistant = {"name": "sasrec", "method": "constrained+sasrec", "prior_weight": None, "falls_back": True,
                 "prior_weight_sweep": sweep}
    text = "\n".join(assistant_markdown(assistant))
    assert "LM + prior falls back to the assistant" in text and "constrained+sasrec's recommendations are sasrec's" in text
    assert "| w = 4.00 | 0.1200 | [0.0700, 0.1700] | -0.0100 | [-0.0300, +0.0100] | 3 / 5 / 92 |" in text
    assert "| sasrec alone | 0.1300 | [0.0800, 0.1800] |" in text and "chosen: assistant" in text
    chosen = {**assistant, "prior_weight": 4.0, "falls_back": False,
              "prior_weight_sweep": {**sweep, "chosen": 4.0, "fallback": False}}
    text = "\n".join(assistant_markdown(chosen))
    assert "w = 4.000, prior lookahead sum (" in text and "falls back" not in text and "chosen: w = 4.00" in text


def test_the_docstring_examples_run():
    import doctest

    import constrained_rec.evaluation.paired

    failures, tried = doctest.testmod(constrained_rec.evaluation.paired)
    assert tried > 0 and failures == 0
