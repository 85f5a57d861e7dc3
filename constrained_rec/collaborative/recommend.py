"""Fitting an assistant by name, loading one from a folder, and ranking the catalog with it."""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from constrained_rec.collaborative.base import Assistant, DamagedAssistantError, assistant_data, columns_of, read_config
from constrained_rec.collaborative.registry import assistant_class
from constrained_rec.collaborative.sasrec import SASRec, SASRecConfig
from constrained_rec.data import InteractionData, SplitConfig


def _check_name(name: str) -> type[Assistant]:
    return assistant_class(name)


def fit_assistant(name: str, data: InteractionData, split_config: SplitConfig | None = None, seed: int = 0,
                  positions: dict | None = None, **options) -> Assistant:
    """Fit the assistant ``name`` on the training interactions of ``data`` split by ``split_config``.

    Args:
        name (`str`): ``"popularity"``, ``"ease"`` or ``"sasrec"``.
        data ([`InteractionData`]): The data set; only its training interactions reach fitted parameters,
            its validation samples choose hyper-parameters (see :func:`assistant_data`).
        split_config ([`SplitConfig`], *optional*): The split (defaults to leave-one-out).
        seed (`int`, defaults to 0): Seed of the fit (only SASRec is random).
        positions (`dict`, *optional*): :func:`~constrained_rec.data.split_positions` of ``data`` under
            ``split_config``, where the caller has them already.
        options: ``smoothing`` (popularity), ``l2_grid`` (ease), any :class:`SASRecConfig` field and ``log``
            (sasrec).

    Example:

    ```python
    >>> from constrained_rec.collaborative import fit_assistant
    >>> from constrained_rec.data import load_interactions
    >>> ease = fit_assistant("ease", load_interactions("ml-100k"))
    >>> ease.item_log_probs([[1, 50, 100]]).shape
    (1, 1681)

    ```
    """
    cls = _check_name(name)
    if cls is SASRec:
        fields = {f.name for f in dataclasses.fields(SASRecConfig)}
        unknown = sorted(set(options) - fields - {"log"})
        if unknown:
            raise ValueError(f"unknown sasrec option(s) {unknown}; accepted: {sorted(fields | {'log'})}")
        log = options.pop("log", None)
        return SASRec.fit(assistant_data(data, split_config, positions), SASRecConfig(**options), seed=seed, log=log)
    accepted = {"popularity": {"smoothing"}, "ease": {"l2_grid"}}[name]
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; accepted: {sorted(accepted)}")
    return cls.fit(assistant_data(data, split_config, positions), seed=seed, **options)


def load_assistant(folder: str | os.PathLike) -> Assistant:
    """An assistant saved with ``save(folder)``, whatever its kind; a :class:`DamagedAssistantError` naming the
    folder where its files are missing, unreadable or inconsistent (e.g. a save killed by an older version)."""
    cls = _check_name(read_config(folder)["kind"])
    try:
        return cls.load(folder)
    except DamagedAssistantError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, KeyError, TypeError) as error:
        raise DamagedAssistantError(f"{folder} holds a damaged {cls.name} assistant "
                                    f"({type(error).__name__}: {error})") from None


def rank_columns(log_probs: np.ndarray, excluded: np.ndarray, k: int) -> list[np.ndarray]:
    """The first ``k`` columns of each row by descending score, excluded columns never, ties by column."""
    order = np.lexsort((np.broadcast_to(np.arange(log_probs.shape[1]), log_probs.shape), -log_probs, excluded),
                       axis=1)
    top = order[:, :k]
    return [row[~excluded[r, row]] for r, row in enumerate(top)]


class AssistantRecommender:
    """An assistant as a recommender for :func:`constrained_rec.evaluation.evaluate.evaluate`: exact full-catalog ranking.

    Every catalog item is ranked by the assistant's log-probability (ties by item id); with
    ``config.exclude_history`` the sample's ``exclude`` items never appear. Records have the format of
    :class:`constrained_rec.evaluation.recommenders.MostPopularRecommender`'s, with the log-probabilities as scores.

    Args:
        assistant ([`Assistant`]): A fitted assistant.
        histories (`Sequence[Sequence[int]]`): ``histories[sample.index]`` is the sample's user's items
            before the target, oldest first (e.g. :func:`histories_before` of the split's rows).
        catalog (`Mapping[int, str]`): item id -> title, covering the assistant's items.
        config: An ``EvalConfig`` (``max_k`` and ``exclude_history`` are used).
        name (`str`, *optional*): The method name in reports; defaults to the assistant's name.

    Example:

    ```python
    >>> import numpy as np
    >>> from constrained_rec.collaborative import AssistantData, AssistantRecommender, Popularity
    >>> from constrained_rec.evaluation.evaluate import EvalConfig, EvalSample
    >>> view = AssistantData(np.array([1, 2, 3]), [np.array([2, 2, 3, 1, 2])], [], np.zeros(0, np.int64))
    >>> sample = EvalSample(0, user_id=7, prompt="...", target_item_id=3, target_title="C", exclude=frozenset({2}))
    >>> recommender = AssistantRecommender(Popularity.fit(view), [[2]], {1: "A", 2: "B", 3: "C"}, EvalConfig(ks=(2,)))
    >>> recommender([sample])["popularity"][0]["item_ids"]
    [1, 3]

    ```
    """

    def __init__(self, assistant: Assistant, histories: Sequence[Sequence[int]], catalog: Mapping[int, str],
                 config, name: str | None = None):
        missing = [int(i) for i in assistant.item_ids if int(i) not in catalog]
        if missing:
            raise ValueError(f"{len(missing)} of the assistant's items have no title in the catalog, e.g. {missing[0]}")
        if config.max_k > len(assistant.item_ids):
            raise ValueError(f"K = {config.max_k} is larger than the catalog of {len(assistant.item_ids)} items")
        self.assistant, self.histories, self.catalog, self.config = assistant, histories, catalog, config
        self.names = (name or assistant.name,)

    def __call__(self, samples) -> dict[str, list[dict]]:
        for sample in samples:
            if not 0 <= sample.index < len(self.histories):
                raise ValueError(f"sample {sample.index} has no history: {len(self.histories)} histories were given")
        log_probs = self.assistant.item_log_probs([self.histories[sample.index] for sample in samples])
        excluded = np.zeros(log_probs.shape, dtype=bool)
        if self.config.exclude_history:
            for row, sample in enumerate(samples):
                excluded[row, columns_of(self.assistant.item_ids, sorted(sample.exclude), "exclusion set")] = True
        records = []
        for sample, scores, columns in zip(samples, log_probs, rank_columns(log_probs, excluded, self.config.max_k)):
            items = [int(i) for i in self.assistant.item_ids[columns]]
            records.append({"sample": sample.index, "user_id": sample.user_id,
                            "target_item_id": sample.target_item_id, "target_title": sample.target_title,
                            "item_ids": items, "titles": [self.catalog[i] for i in items],
                            "scores": [float(s) for s in scores[columns]], "num_outputs": 0, "num_valid_outputs": 0})
        return {self.names[0]: records}
