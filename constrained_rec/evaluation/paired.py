"""Paired comparisons of two methods on the same users: per-user difference in NDCG@K, a paired bootstrap
interval, win / loss / tie counts and the verdict a report may state (issue 20).

Two methods evaluated on the same users are compared user by user: ``d_u = NDCG@K(a, u) - NDCG@K(b, u)``. The
interval is the percentile bootstrap of the mean of ``d_u`` over users (:func:`constrained_rec.evaluation.metrics.bootstrap_interval`,
users resampled with replacement, so the pairing is kept); wins, losses and ties count the users with ``d_u``
above, below and at zero. A report says "a beats b" only when the whole interval lies above zero, "a trails b"
when it lies below, and "no clear difference" otherwise (:func:`verdict`).

A run compares (:func:`run_pairs`) LM + prior against the assistant alone (does the LM add anything to the
assistant?) and the LM alone against most-popular (has the LM learnt more than popularity?).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from constrained_rec.evaluation.metrics import bootstrap_interval, ndcg, target_rank

PAIRED_K = 10


def per_user_ndcg(records: Sequence[Mapping], method: str, k: int = PAIRED_K) -> dict[int, float]:
    """``{sample index: NDCG@k}`` of ``method``'s prediction records."""
    rows = [r for r in records if r["method"] == method]
    ranks = [target_rank(r["item_ids"], r["target_item_id"]) for r in rows]
    return {int(r["sample"]): float(v) for r, v in zip(rows, ndcg(ranks, k))}


def paired_difference(records: Sequence[Mapping], a: str, b: str, k: int = PAIRED_K, confidence: float = 0.95,
                      num_resamples: int = 1000, seed: int = 0) -> dict:
    """``a`` minus ``b`` in NDCG@``k``, user by user, over the users both were evaluated on (all of them, or an error).

    Returns, JSON-ready: ``a``, ``b``, ``metric``, ``users``, ``value`` (mean difference), ``ci``, ``wins`` /
    ``losses`` / ``ties`` (users where ``a`` is above / below / equal to ``b``), ``confidence`` and ``verdict``.

    Example:

    ```python
    >>> from constrained_rec.evaluation.paired import paired_difference
    >>> records = [{"method": m, "sample": u, "item_ids": ids, "target_item_id": 1}
    ...            for u in range(40) for m, ids in (("lm", [1, 2]), ("pop", [2, 1] if u % 2 else [3, 4]))]
    >>> d = paired_difference(records, "lm", "pop")
    >>> round(d["value"], 3), d["wins"], d["losses"], d["ties"], d["verdict"]
    (0.685, 40, 0, 0, 'lm beats pop')

    ```
    """
    first, second = per_user_ndcg(records, a, k), per_user_ndcg(records, b, k)
    if not first or not second:
        raise ValueError(f"no records of {a if not first else b!r}: a paired comparison needs both methods")
    if set(first) != set(second):
        only = sorted(set(first) ^ set(second))[:5]
        raise ValueError(f"{a!r} and {b!r} were evaluated on different users (e.g. samples {only}); a paired "
                         "comparison needs the same users")
    users = sorted(first)
    differences = np.array([first[u] - second[u] for u in users])
    low, high = bootstrap_interval(differences, confidence, num_resamples, seed)
    comparison = {"a": a, "b": b, "metric": f"ndcg@{k}", "users": len(users), "value": float(differences.mean()),
                  "ci": [low, high], "wins": int((differences > 0).sum()), "losses": int((differences < 0).sum()),
                  "ties": int((differences == 0).sum()), "confidence": confidence}
    return {**comparison, "verdict": verdict(comparison)}


def verdict(comparison: Mapping) -> str:
    """``"a beats b"`` only when the interval lies above zero, ``"a trails b"`` when below, else
    ``"no clear difference between a and b"``."""
    low, high = comparison["ci"]
    a, b = comparison["a"], comparison["b"]
    if math.isfinite(low) and low > 0:
        return f"{a} beats {b}"
    if math.isfinite(high) and high < 0:
        return f"{a} trails {b}"
    return f"no clear difference between {a} and {b}"


def run_pairs(methods: Sequence[str], assistant: str | None = None, fused: str | None = None) -> list[tuple[str, str]]:
    """The comparisons a run reports among its ``methods``: LM + prior (``fused``) against the assistant alone,
    and the LM alone (``constrained``) against ``most-popular``; each only where both were evaluated."""
    wanted = [(fused, assistant), ("constrained", "most-popular")]
    return [(a, b) for a, b in wanted if a in methods and b in methods]


def paired_comparisons(records: Sequence[Mapping], pairs: Sequence[tuple[str, str]], confidence: float = 0.95,
                       num_resamples: int = 1000, seed: int = 0, k: int = PAIRED_K) -> list[dict]:
    """:func:`paired_difference` for every pair."""
    return [paired_difference(records, a, b, k, confidence, num_resamples, seed) for a, b in pairs]


def paired_markdown(comparisons: Sequence[Mapping]) -> list[str]:
    """report.md's section: one row per comparison, and its verdict."""
    if not comparisons:
        return []
    confidence = int(round(comparisons[0].get("confidence", 0.95) * 100))
    metric = comparisons[0]["metric"].upper()
    lines = ["## Paired comparisons", "",
             f"Per-user difference in {metric} (first minus second method, same users), its {confidence}% paired "
             "bootstrap interval over users, and the users where the first is better / worse / equal. A method "
             f"is said to beat another only when the whole interval lies above zero.", "",
             f"| comparison | users | mean difference | {confidence}% CI | better / worse / tied | verdict |",
             "|---|---|---|---|---|---|"]
    for c in comparisons:
        low, high = c["ci"]
        lines.append(f"| {c['a']} - {c['b']} | {c['users']} | {c['value']:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                     f"{c['wins']} / {c['losses']} / {c['ties']} | {c['verdict']} |")
    return lines


def plot_paired(axis, comparisons: Sequence[Mapping]) -> None:
    """The differences with their intervals as horizontal error bars on a matplotlib ``axis`` (zero marked)."""
    names = [f"{c['a']}\n- {c['b']}" for c in comparisons]
    values = [c["value"] for c in comparisons]
    errors = [[v - c["ci"][0] for v, c in zip(values, comparisons)], [c["ci"][1] - v for v, c in zip(values, comparisons)]]
    colors = ["tab:green" if c["ci"][0] > 0 else "tab:red" if c["ci"][1] < 0 else "tab:gray" for c in comparisons]
    axis.barh(range(len(names)), values, xerr=errors, capsize=4, color=colors)
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(names)), names, fontsize="small")
    confidence = int(round(comparisons[0].get("confidence", 0.95) * 100))
    axis.set_xlabel(f"paired difference in {comparisons[0]['metric'].upper()} ({confidence}% CI)")
    axis.set_title("paired comparisons (same users)", fontsize="small")
