"""Assistants with closed-form fits: :class:`Popularity` and :class:`EASE` (Steck, WWW 2019)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from constrained_rec.collaborative.base import (
    Assistant,
    AssistantData,
    columns_of,
    exclusion_mask,
    load_array,
    log_softmax_rows,
    read_config,
    target_ranks,
    write_config,
)
from constrained_rec.evaluation import metrics

EASE_LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


class Popularity(Assistant):
    """The same distribution for every user: training counts with additive smoothing.

    ``p(item) = (count + smoothing) / (total + smoothing * items)``; with ``smoothing > 0`` no item has
    probability 0, with ``smoothing=0`` items never seen in training get ``-inf``.

    Example:

    ```python
    >>> import numpy as np
    >>> from constrained_rec.collaborative import AssistantData, Popularity
    >>> view = AssistantData(np.array([1, 2, 3]), [np.array([1, 1, 2])], [np.array([1])], np.array([3]))
    >>> np.exp(Popularity.fit(view, smoothing=1.0).item_log_probs([[2]]).astype(float)).round(3).tolist()
    [[0.5, 0.333, 0.167]]

    ```
    """

    name = "popularity"

    def __init__(self, item_ids: np.ndarray, counts: np.ndarray, smoothing: float = 1.0):
        if not (smoothing >= 0 and math.isfinite(smoothing)):
            raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.shape != self.item_ids.shape:
            raise ValueError(f"got {self.counts.shape} counts for {len(self.item_ids)} items")
        mass = self.counts + float(smoothing)
        if mass.sum() <= 0:
            raise ValueError("no training interactions and smoothing=0: the distribution is undefined")
        self.smoothing = float(smoothing)
        with np.errstate(divide="ignore"):
            self._row = (np.log(mass) - np.log(mass.sum())).astype(np.float32)

    @classmethod
    def fit(cls, data: AssistantData, smoothing: float = 1.0, seed: int = 0) -> "Popularity":
        """Count the training interactions per catalog item (``seed`` is unused: the fit is exact)."""
        sequences = [columns_of(data.item_ids, s, "training sequence") for s in data.train_sequences]
        flat = np.concatenate(sequences) if sequences else np.zeros(0, np.int64)
        return cls(data.item_ids, np.bincount(flat, minlength=data.num_items), smoothing)

    def _log_probs(self, columns: list[np.ndarray]) -> np.ndarray:
        return np.tile(self._row, (len(columns), 1))

    def _write(self, folder: Path) -> None:
        write_config(folder, self.name, self.item_ids, smoothing=self.smoothing)
        np.save(folder / "counts.npy", self.counts)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Popularity":
        config = read_config(folder, cls.name)
        counts = load_array(Path(folder) / "counts.npy", (len(config["item_ids"]),))
        return cls(config["item_ids"], counts, config["smoothing"])


def ease_weights(interactions: np.ndarray, l2: float) -> np.ndarray:
    """EASE's item-item matrix: ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``, diagonal zero.

    ``interactions`` is the binary user x item matrix ``X``; returns float64 items x items (column ``j``
    of ``B`` scores item ``j`` from the items a user has).
    """
    gram = interactions.T.astype(np.float64) @ interactions.astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def _binary_rows(columns: list[np.ndarray], num_items: int) -> np.ndarray:
    return exclusion_mask(columns, num_items).astype(np.float32)


def _choose_temperature(scores: np.ndarray, excluded: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The softmax temperature maximising the mean log-likelihood of the targets among non-excluded items.

    The negative log-likelihood is convex in ``1 / temperature``, so a bounded 1-D search finds the optimum.
    Returns ``(temperature, mean log-likelihood)``.
    """
    scores = np.where(excluded, -np.inf, scores.astype(np.float64))
    target_scores = scores[np.arange(len(targets)), targets]

    def negative_log_likelihood(log_inverse: float) -> float:
        inverse = math.exp(log_inverse)
        scaled = scores * inverse
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float(np.mean(log_norm - target_scores * inverse))

    best = minimize_scalar(negative_log_likelihood, bounds=(math.log(1e-3), math.log(1e5)), method="bounded",
                           options={"xatol": 1e-4})
    return float(math.exp(-best.x)), -float(best.fun)


class EASE(Assistant):
    """EASE item-item regression; log-probabilities are ``log_softmax(x_u B / temperature)``.

    ``l2`` (lambda) is chosen from ``l2_grid`` by validation NDCG@10 (history excluded); the temperature
    then maximises the validation targets' log-likelihood under the softmax over the items *not* in the
    user's history (the distribution the trie uses once history is excluded). Validation samples whose
    target is in their own history have likelihood 0 there and are left out of that choice (counted in
    ``fit_info["validation_targets_in_history"]``).

    Example:

    ```python
    >>> import numpy as np
    >>> from constrained_rec.collaborative import EASE, AssistantData
    >>> rng = np.random.default_rng(0)
    >>> sequences = [rng.choice(np.arange(1, 21), size=6, replace=False) for _ in range(30)]
    >>> view = AssistantData(np.arange(1, 21), sequences, [s[:3] for s in sequences[:5]],
    ...                      np.array([s[3] for s in sequences[:5]]))
    >>> ease = EASE.fit(view, l2_grid=(1.0, 10.0))
    >>> ease.item_log_probs([[1, 2]]).shape
    (1, 20)

    ```
    """

    name = "ease"

    def __init__(self, item_ids: np.ndarray, weights: np.ndarray, temperature: float, l2: float,
                 fit_info: dict | None = None):
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float32)
        if self.weights.shape != (len(self.item_ids),) * 2:
            raise ValueError(f"weights must be {len(self.item_ids)} x {len(self.item_ids)}, got {self.weights.shape}")
        self.temperature, self.l2, self.fit_info = float(temperature), float(l2), dict(fit_info or {})

    @classmethod
    def fit(cls, data: AssistantData, l2_grid: Sequence[float] = EASE_LAMBDAS, seed: int = 0) -> "EASE":
        """Fit on the training sequences, choose lambda and the temperature on validation (``seed`` unused)."""
        if not l2_grid or any(not (l2 > 0 and math.isfinite(l2)) for l2 in l2_grid):
            raise ValueError(f"l2_grid must be finite numbers > 0, got {l2_grid!r}")
        data.require_validation("choosing EASE's lambda and temperature")
        train = _binary_rows([columns_of(data.item_ids, s, "training sequence") for s in data.train_sequences],
                             data.num_items)
        histories = [columns_of(data.item_ids, h) for h in data.validation_histories]
        targets = columns_of(data.item_ids, data.validation_targets, "validation target")
        excluded = exclusion_mask(histories, data.num_items)
        history_rows = excluded.astype(np.float32)
        sweep, best = {}, None
        for l2 in l2_grid:
            weights = ease_weights(train, float(l2)).astype(np.float32)
            scores = history_rows @ weights
            sweep[float(l2)] = float(metrics.ndcg(target_ranks(scores, excluded, targets), 10).mean())
            if best is None or sweep[float(l2)] > sweep[best[0]]:
                best = (float(l2), weights, scores)
        l2, weights, scores = best
        usable = ~excluded[np.arange(len(targets)), targets]
        temperature, log_likelihood = _choose_temperature(scores[usable], excluded[usable], targets[usable])
        info = {"validation_ndcg@10_by_l2": sweep, "validation_log_likelihood": log_likelihood,
                "validation_targets_in_history": int((~usable).sum()), "validation_samples": len(targets)}
        return cls(data.item_ids, weights, temperature, l2, info)

    def scores(self, columns: list[np.ndarray]) -> np.ndarray:
        return _binary_rows(columns, len(self.item_ids)) @ self.weights

    def _log_probs(self, columns: list[np.ndarray]) -> np.ndarray:
        return log_softmax_rows(self.scores(columns).astype(np.float64) / self.temperature)

    def _write(self, folder: Path) -> None:
        write_config(folder, self.name, self.item_ids, temperature=self.temperature, l2=self.l2,
                     fit_info=self.fit_info)
        np.save(folder / "weights.npy", self.weights)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "EASE":
        config = read_config(folder, cls.name)
        weights = load_array(Path(folder) / "weights.npy", (len(config["item_ids"]),) * 2)
        return cls(config["item_ids"], weights, config["temperature"], config["l2"], config.get("fit_info"))
