"""Ranking metrics of full-catalog leave-one-out evaluation, with bootstrap intervals over users.

Each user has exactly one relevant item (the held-out next item), so for a ranked list of item ids:

- ``rank`` is the 1-based position of the target in the list (``inf`` when it is absent, also from a list shorter
  than K: a user whose history leaves fewer titles than K gets a short list, and its missing ranks are misses);
- HR@K = 1 if ``rank <= K`` else 0;
- NDCG@K = ``1 / log2(rank + 1)`` if ``rank <= K`` else 0 (the ideal DCG of one relevant item is 1).

Beside these item-id hits, the *title hits* of D3 and MiniOneRec (their ``calc.py``): a hit when a recommended
title equals the target's title, ranked among the distinct recommended titles (:func:`title_rank`). With
duplicate titles they differ: any item sharing the target's title counts, and an item repeating a title
already ranked takes no place of its own.

Figures are means over users; the 95% interval is the percentile bootstrap over users (resample users
with replacement, recompute the mean), which says how sure a figure measured on a sample of users is.
Beside accuracy: the validity rate of the model's outputs (catalog titles / outputs), the catalog
coverage of the top-10 (distinct recommended items / catalog size) and the mean popularity percentile
of recommended items (how strongly a method leans on popular items, D3's homogeneity concern).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from constrained_rec.data.interactions import title_hit_rank
from constrained_rec.validation import check_int


def _check_k(k: int) -> int:
    return int(check_int(k, "K", least=1, numpy=True))


def target_rank(ranked_item_ids: Sequence[int], target_item_id: int) -> float:
    """The 1-based position of ``target_item_id`` in ``ranked_item_ids``; ``inf`` when it is absent.

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import target_rank
    >>> target_rank([7, 3, 9], 3), target_rank([7, 3, 9], 4)
    (2, inf)

    ```
    """
    for position, item in enumerate(ranked_item_ids, start=1):
        if item == target_item_id:
            return position
    return math.inf


def title_rank(recommended_titles: Sequence[str], target_title: str) -> float:
    """The 1-based position of ``target_title`` among the distinct ``recommended_titles`` (first occurrences, in
    order); ``inf`` when it is absent. This is the rank D3 and MiniOneRec score: that of the generated title.

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import title_rank
    >>> title_rank(["Tape", "Tape", "Glue", "Wire"], "Glue"), title_rank(["Tape"], "Glue")
    (2, inf)

    ```
    """
    rank = title_hit_rank(list(dict.fromkeys(recommended_titles)), target_title)
    return math.inf if rank is None else rank + 1


def hit_rate(ranks: Sequence[float], k: int) -> np.ndarray:
    """Per-user HR@K: 1.0 where the target is within the first ``k`` items, else 0.0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return (ranks <= _check_k(k)).astype(np.float64)


def ndcg(ranks: Sequence[float], k: int) -> np.ndarray:
    """Per-user NDCG@K with one relevant item: ``1 / log2(rank + 1)`` within the first ``k``, else 0.

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import ndcg
    >>> ndcg([1, 3, float("inf")], k=5).round(4).tolist()
    [1.0, 0.5, 0.0]

    ```
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks <= _check_k(k)
    return np.where(inside, 1.0 / np.log2(np.where(inside, ranks, 1.0) + 1.0), 0.0)


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, num_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values``.

    Args:
        values (`Sequence[float]`):
            One value per user (e.g. :func:`hit_rate`).
        confidence (`float`, defaults to 0.95):
            Coverage of the interval, in (0, 1).
        num_resamples (`int`, defaults to 1000):
            Number of resamples of the users, with replacement.
        seed (`int`, defaults to 0):
            Seed of the resampling, so that a report is reproducible.

    Returns:
        `(low, high)`; ``(nan, nan)`` for no users.

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import bootstrap_interval
    >>> low, high = bootstrap_interval([0, 1] * 50)
    >>> low < 0.5 < high
    True

    ```
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    check_int(num_resamples, "num_resamples", least=1)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be one value per user (1-D), got shape {values.shape}")
    if len(values) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples)
    # resample in chunks so that memory stays at ~8 MB whatever the number of users
    chunk = max(1, 1_000_000 // len(values))
    for start in range(0, num_resamples, chunk):
        stop = min(start + chunk, num_resamples)
        means[start:stop] = values[rng.integers(0, len(values), size=(stop - start, len(values)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def catalog_coverage(rankings: Iterable[Sequence[int]], catalog_size: int, k: int = 10) -> float:
    """Distinct items among every user's first ``k`` recommendations, as a fraction of the catalog.

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import catalog_coverage
    >>> catalog_coverage([[1, 2, 3], [2, 4, 5]], catalog_size=10, k=2)
    0.3

    ```
    """
    check_int(catalog_size, "catalog_size", least=1)
    k = _check_k(k)
    distinct = {item for ranking in rankings for item in list(ranking)[:k]}
    return len(distinct) / catalog_size


def popularity_percentiles(counts: Mapping[int, int], catalog_item_ids: Iterable[int]) -> dict[int, float]:
    """Each catalog item's popularity percentile (0-100) among the catalog, from interaction counts.

    The percentile is the mid-rank one: the share of catalog items less popular than the item plus half
    the share exactly as popular (scipy's ``percentileofscore(kind="mean")``). Items absent from
    ``counts`` have count 0, so a catalog where every item is equally popular puts all of them at 50.

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import popularity_percentiles
    >>> popularity_percentiles({1: 10, 2: 5}, catalog_item_ids=[1, 2, 3, 4])
    {1: 87.5, 2: 62.5, 3: 25.0, 4: 25.0}

    ```
    """
    items = list(dict.fromkeys(int(i) for i in catalog_item_ids))
    if not items:
        raise ValueError("the catalog is empty: popularity percentiles need at least one item")
    unknown = sorted(set(counts) - set(items))
    if unknown:
        raise ValueError(f"counts name items {unknown[:10]} that are not in the catalog of {len(items)} items")
    values = np.array([counts.get(i, 0) for i in items], dtype=np.float64)
    ordered = np.sort(values)
    below = np.searchsorted(ordered, values, side="left")
    at_or_below = np.searchsorted(ordered, values, side="right")
    percentiles = (below + at_or_below) / 2.0 / len(items) * 100.0
    return {item: float(p) for item, p in zip(items, percentiles)}


def mean_popularity_percentile(
    rankings: Iterable[Sequence[int]], percentiles: Mapping[int, float], k: int = 10
) -> float:
    """Mean of :func:`popularity_percentiles` over every user's first ``k`` recommended items."""
    k = _check_k(k)
    values = []
    for ranking in rankings:
        for item in list(ranking)[:k]:
            if item not in percentiles:
                raise ValueError(f"recommended item {item!r} is not in the catalog the percentiles were computed for")
            values.append(percentiles[item])
    return float(np.mean(values)) if values else math.nan


def ranking_metrics(
    rankings: Sequence[Sequence[int]],
    targets: Sequence[int],
    ks: Sequence[int] = (1, 5, 10, 20),
    confidence: float = 0.95,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """HR@K and NDCG@K for every K, each as ``{"value": mean, "ci": [low, high]}``.

    Args:
        rankings (`Sequence[Sequence[int]]`):
            One ranked list of item ids per user (best first); it may be shorter than K.
        targets (`Sequence[int]`):
            The held-out item of each user.
        ks (`Sequence[int]`, defaults to `(1, 5, 10, 20)`):
            Cut-offs.
        confidence, num_resamples, seed:
            Of the bootstrap interval (:func:`bootstrap_interval`).

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import ranking_metrics
    >>> figures = ranking_metrics([[4, 2, 9], [1, 7, 3]], targets=[2, 5], ks=[1, 3])
    >>> figures["hr@3"]["value"], round(figures["ndcg@3"]["value"], 4)
    (0.5, 0.3155)

    ```
    """
    if len(rankings) != len(targets):
        raise ValueError(f"got {len(rankings)} rankings for {len(targets)} targets: one ranking per user is needed")
    ranks = [target_rank(r, t) for r, t in zip(rankings, targets)]
    return rank_metrics(ranks, ks, confidence, num_resamples, seed)


def title_ranking_metrics(title_rankings: Sequence[Sequence[str]], target_titles: Sequence[str],
                          ks: Sequence[int] = (1, 5, 10, 20), confidence: float = 0.95, num_resamples: int = 1000,
                          seed: int = 0) -> dict[str, dict]:
    """Title hits as D3 / MiniOneRec count them: ``title_hr@K`` and ``title_ndcg@K`` from :func:`title_rank`.

    Args:
        title_rankings (`Sequence[Sequence[str]]`): Per user, the titles of the recommended items, best first.
        target_titles (`Sequence[str]`): The held-out item's title of each user.
        ks, confidence, num_resamples, seed: As in :func:`ranking_metrics`.

    Example:

    ```python
    >>> from constrained_rec.evaluation.metrics import title_ranking_metrics
    >>> figures = title_ranking_metrics([["Tape", "Tape", "Glue"]], ["Glue"], ks=[2])
    >>> figures["title_hr@2"]["value"], round(figures["title_ndcg@2"]["value"], 4)
    (1.0, 0.6309)

    ```
    """
    if len(title_rankings) != len(target_titles):
        raise ValueError(f"got {len(title_rankings)} title rankings for {len(target_titles)} target titles: one "
                         "ranking per user is needed")
    ranks = [title_rank(r, t) for r, t in zip(title_rankings, target_titles)]
    return rank_metrics(ranks, ks, confidence, num_resamples, seed, prefix="title_")


def rank_metrics(ranks: Sequence[float], ks: Sequence[int], confidence: float = 0.95, num_resamples: int = 1000,
                 seed: int = 0, prefix: str = "") -> dict[str, dict]:
    """``{prefix}hr@K`` and ``{prefix}ndcg@K`` for every K from per-user 1-based ranks (``inf``: not ranked),
    each as ``{"value": mean, "ci": [low, high]}``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    figures = {}
    for k in ks:
        for name, per_user in (("hr", hit_rate(ranks, k)), ("ndcg", ndcg(ranks, k))):
            low, high = bootstrap_interval(per_user, confidence, num_resamples, seed)
            value = float(per_user.mean()) if len(per_user) else math.nan
            figures[f"{prefix}{name}@{k}"] = {"value": value, "ci": [low, high]}
    return figures
