"""What every assistant shares: the training view of a split, the catalog column order, histories, save/load.

An assistant sees only :class:`AssistantData`: the catalog, each user's *training* interactions and the
validation samples used to choose hyper-parameters. :func:`assistant_data` builds it from a split of
:func:`constrained_rec.data.split_positions`: the training interactions are every interaction that is not a
validation or test target (under leave-one-out: all of a user's interactions but the last two), so no
held-out target reaches a fitted parameter; validation targets only choose hyper-parameters (EASE's
lambda and temperature, SASRec's stopping epoch).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from constrained_rec.data import InteractionData, SplitConfig, split_positions

CONFIG_FILE = "assistant.json"


@dataclass(frozen=True)
class AssistantData:
    """The part of a split an assistant may learn from.

    Attributes:
        item_ids: The catalog's item ids, sorted ascending; column ``j`` of every score matrix is
            ``item_ids[j]`` (the order the pipeline builds the title trie in).
        train_sequences: One int64 array of item ids per user with training interactions, in time order.
        validation_histories: For each validation sample, every item its user interacted with before
            the validation target, in time order.
        validation_targets: The validation target item ids.
    """

    item_ids: np.ndarray
    train_sequences: list[np.ndarray]
    validation_histories: list[np.ndarray]
    validation_targets: np.ndarray

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def require_validation(self, purpose: str) -> None:
        if len(self.validation_targets) == 0:
            raise ValueError(f"the split has no validation samples, which {purpose} needs")


def histories_before(data: InteractionData, rows: Sequence[int]) -> list[np.ndarray]:
    """Each row's user's item ids strictly before that row (rows of ``data.interactions``), in time order.

    Example:

    ```python
    >>> import pandas as pd
    >>> from constrained_rec.data import InteractionData
    >>> frame = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 2], "item_id": [7, 8, 9, 9, 8, 7],
    ...                       "timestamp": [1, 2, 3, 1, 2, 3]})
    >>> data = InteractionData.from_frame(frame, {7: "A", 8: "B", 9: "C"})
    >>> [h.tolist() for h in histories_before(data, [2, 4])]
    [[7, 8], [9]]

    ```
    """
    users = data.interactions["user_id"].to_numpy()
    items = data.interactions["item_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    user_start = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or ((rows < 0) | (rows >= len(users))).any():
        bad = rows[(rows < 0) | (rows >= len(users))] if rows.ndim == 1 else rows
        raise ValueError(f"rows {bad.tolist()[:10]} are not rows of the {len(users)} interactions")
    return [items[user_start[row] : row].copy() for row in rows.tolist()]


def sample_rows(data: InteractionData, samples) -> np.ndarray:
    """The row of ``data.interactions`` that is each sample's target (a split of ``make_splits``).

    The row is the user's last interaction with the target item whose preceding items end with the
    sample's ``history_item_ids``; :func:`histories_before` of these rows gives the full, ordered histories.
    A sample that matches no row is a ``ValueError``.
    """
    users = data.interactions["user_id"].to_numpy()
    items = data.interactions["item_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    bounds = dict(zip(users[starts].tolist(), zip(starts.tolist(), np.r_[starts[1:], len(users)].tolist())))
    rows = []
    for sample in samples:
        user, target, history = int(sample["user_id"]), int(sample["target_item_id"]), list(sample["history_item_ids"])
        start, end = bounds.get(user, (0, 0))
        candidates = start + np.flatnonzero(items[start:end] == target)
        matching = [r for r in candidates.tolist() if r - start >= len(history)
                    and items[r - len(history) : r].tolist() == history]
        if not matching:
            raise ValueError(f"no interaction of user {user} has target {target} after history {history}; "
                             "were the samples made from another data set?")
        rows.append(matching[-1])
    return np.array(rows, dtype=np.int64)


def assistant_data(data: InteractionData, split_config: SplitConfig | None = None,
                   positions: dict[str, np.ndarray] | None = None) -> AssistantData:
    """The training interactions and validation samples of ``data`` split by ``split_config`` (its
    :func:`~constrained_rec.data.split_positions`, computed here unless ``positions`` gives them).

    Example:

    ```python
    >>> import pandas as pd
    >>> from constrained_rec.data import InteractionData
    >>> frame = pd.DataFrame({"user_id": [1] * 4, "item_id": [7, 8, 9, 6], "timestamp": [1, 2, 3, 4]})
    >>> view = assistant_data(InteractionData.from_frame(frame, {6: "A", 7: "B", 8: "C", 9: "D"}))
    >>> view.item_ids.tolist(), [s.tolist() for s in view.train_sequences], view.validation_targets.tolist()
    ([6, 7, 8, 9], [[7, 8]], [9])

    ```
    """
    split_config = split_config or SplitConfig()
    positions = split_positions(data, split_config) if positions is None else positions
    frame = data.interactions
    held_out = np.zeros(len(frame), dtype=bool)
    held_out[positions["validation"]] = True
    held_out[positions["test"]] = True
    train = frame[~held_out]
    users = train["user_id"].to_numpy()
    items = train["item_id"].to_numpy().astype(np.int64)
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    sequences = [s for s in np.split(items, cuts) if len(s)]
    validation_rows = positions["validation"]
    return AssistantData(
        item_ids=np.array(sorted(data.titles), dtype=np.int64),
        train_sequences=sequences,
        validation_histories=histories_before(data, validation_rows),
        validation_targets=frame["item_id"].to_numpy()[validation_rows].astype(np.int64),
    )


def columns_of(item_ids: np.ndarray, ids, what: str = "history") -> np.ndarray:
    """Column numbers of item ids in the sorted catalog ``item_ids``; an unknown id is a ``ValueError``."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    columns = np.searchsorted(item_ids, ids)
    inside = columns < len(item_ids)
    known = np.zeros(len(ids), dtype=bool)
    known[inside] = item_ids[columns[inside]] == ids[inside]
    if not known.all():
        raise ValueError(
            f"item id {int(ids[~known][0])} in a {what} is not in the assistant's catalog of {len(item_ids)} "
            f"items (ids {int(item_ids[0])}..{int(item_ids[-1])})"
        )
    return columns


def log_softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, returned as float32 (so every row's logsumexp is 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(np.float32)


class DamagedAssistantError(ValueError):
    """A saved assistant's folder that cannot be read back (missing, unreadable or inconsistent files)."""


def write_config(folder: str | os.PathLike, kind: str, item_ids: np.ndarray, **fields) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "item_ids": [int(i) for i in item_ids], **fields}
    (folder / CONFIG_FILE).write_text(json.dumps(payload, indent=1))
    return folder


def read_config(folder: str | os.PathLike, kind: str | None = None) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise DamagedAssistantError(f"{folder} holds no saved assistant ({CONFIG_FILE} is missing)")
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedAssistantError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("item_ids"), list):
        raise DamagedAssistantError(f"{path} does not describe an assistant (no item_ids list)")
    if kind is not None and payload.get("kind") != kind:
        raise ValueError(f"{folder} holds a {payload.get('kind')!r} assistant, not a {kind!r} one")
    payload["item_ids"] = np.array(payload["item_ids"], dtype=np.int64)
    return payload


def load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A saved ``.npy`` array of the given shape; a :class:`DamagedAssistantError` naming the file otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DamagedAssistantError(f"{path} is missing or unreadable ({error})") from None
    if array.shape != shape:
        raise DamagedAssistantError(f"{path} holds an array of shape {array.shape}, expected {shape}")
    return array


class Assistant:
    """A text-free next-item model over a fixed catalog (column ``j`` is ``item_ids[j]``, sorted ascending).

    Subclasses implement ``_log_probs(columns_per_history) -> float32 (users, items)`` and save/load.
    """

    name = "assistant"
    item_ids: np.ndarray

    def item_log_probs(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Normalised next-item log-probabilities, float32 ``(len(histories), len(item_ids))``.

        Args:
            histories (`Sequence[Sequence[int]]`):
                One list of item ids per user, oldest first. An id outside the catalog is a ``ValueError``.

        Returns:
            Row ``u`` is a log-softmax over the catalog (``logsumexp == 0``); column ``j`` is ``item_ids[j]``.
        """
        if isinstance(histories, np.ndarray) and histories.ndim == 1:
            raise ValueError("histories must be one sequence of item ids per user, got a flat array")
        columns = [columns_of(self.item_ids, history) for history in histories]
        if not columns:
            return np.zeros((0, len(self.item_ids)), dtype=np.float32)
        return self._log_probs(columns)

    def _log_probs(self, columns: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def item_embeddings(self) -> np.ndarray:
        """float32 ``(len(item_ids), dim)``: row ``j`` is item ``item_ids[j]``'s learned embedding, for the LM's
        collaborative tokens (``training.collab_tokens``). Only assistants that learn item embeddings have them
        (SASRec); the others raise a ``ValueError`` naming their kind."""
        raise ValueError(f"the {self.name!r} assistant has no item embeddings, so it cannot give collaborative "
                         "tokens; use an assistant that learns them: 'sasrec'")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the assistant into ``folder`` atomically: into a temporary folder beside it, then renamed, so a
        kill at any moment leaves the old folder (or none) and never a partial one."""
        from constrained_rec.training.checkpoint import replace_folder

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            self._write(tmp)
            replace_folder(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def _write(self, folder: Path) -> None:
        raise NotImplementedError



def exclusion_mask(columns: list[np.ndarray], num_items: int) -> np.ndarray:
    """Boolean ``(users, items)``: True where the item is in the user's history."""
    mask = np.zeros((len(columns), num_items), dtype=bool)
    rows = np.repeat(np.arange(len(columns)), [len(c) for c in columns])
    mask[rows, np.concatenate(columns) if columns else np.zeros(0, np.int64)] = True
    return mask


def target_ranks(scores: np.ndarray, excluded: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target column among the row's non-excluded items, ``inf`` if it is excluded.

    Ties rank the lower column (smaller item id) first, as the recommenders do.
    """
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    columns = np.arange(scores.shape[1])[None, :]
    ahead = (scores > target_scores) | ((scores == target_scores) & (columns < targets[:, None]))
    ranks = 1.0 + (ahead & ~excluded).sum(axis=1)
    return np.where(excluded[rows, targets], np.inf, ranks)
