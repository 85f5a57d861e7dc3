"""Column-wise reading of D3 / MiniOneRec split CSVs as those projects write them, for large files.

:mod:`constrained_rec.data.given` reads a CSV row by row and explains every error (file, line, column). A
million rows take it about 20 s, so files as D3 and MiniOneRec write them (``str()`` of Python lists, one
line per row, every id in the catalog, histories that continue each other) are checked here column-wise with
Arrow instead. Anything this fast path does not accept, it hands back (``None``) to the row-wise reader,
which then raises the precise error or accepts a file that is merely written differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from constrained_rec.data.tables import encode_ids

COLUMNS = ("user_id", "history_item_title", "item_title", "history_item_id", "item_id")
_INT_LIST = r"^\[(?:-?\d+, )*-?\d+\]$"


class SplitColumns(NamedTuple):
    """One split's rows: user (str), history lengths and flat history item ids, target, 1-based line."""

    users: np.ndarray
    lengths: np.ndarray
    history: np.ndarray
    targets: np.ndarray
    lines: np.ndarray


def from_rows(rows: list[tuple[str, list[int], int, int]]) -> SplitColumns:
    """The row-wise reader's ``(user, history, target, line)`` tuples as columns."""
    return SplitColumns(
        np.asarray([user for user, *_ in rows], dtype=str),
        np.asarray([len(history) for _, history, _, _ in rows], dtype=np.int64),
        np.asarray([item for _, history, _, _ in rows for item in history], dtype=np.int64),
        np.asarray([target for _, _, target, _ in rows], dtype=np.int64),
        np.asarray([line for *_, line in rows], dtype=np.int64),
    )


class Catalog(NamedTuple):
    """The item file as sorted ids with their titles, plain and as ``repr`` (how ``str(list)`` quotes them)."""

    ids: np.ndarray
    titles: object  # pyarrow.StringArray
    reprs: object  # pyarrow.StringArray

    @classmethod
    def build(cls, titles: dict[int, str]) -> "Catalog":
        import pyarrow as pa

        ids = np.sort(np.fromiter(titles, dtype=np.int64, count=len(titles)))
        ordered = [titles[item] for item in ids.tolist()]
        return cls(ids, pa.array(ordered, pa.string()), pa.array([repr(t) for t in ordered], pa.string()))

    def positions(self, items: np.ndarray) -> np.ndarray | None:
        """Index of each item in ``ids``; ``None`` when some item is not in the catalog."""
        found = np.minimum(np.searchsorted(self.ids, items), len(self.ids) - 1)
        return found if len(self.ids) and (self.ids[found] == items).all() else None


def read_canonical(path: Path, catalog: Catalog) -> SplitColumns | None:
    """The split's columns when the file is canonical and valid; ``None`` to let the row-wise reader decide."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as arrow_csv

    try:
        table = arrow_csv.read_csv(path, convert_options=arrow_csv.ConvertOptions(
            include_columns=list(COLUMNS), column_types={c: pa.string() for c in COLUMNS},
            strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowKeyError, KeyError, OSError):
        return None
    columns = {name: table.column(name).combine_chunks() for name in COLUMNS}
    users = pc.utf8_trim_whitespace(columns["user_id"])
    if len(table) == 0 or not pc.all(pc.not_equal(users, "")).as_py():
        return None
    if not pc.all(pc.match_substring_regex(columns["history_item_id"], _INT_LIST)).as_py():
        return None
    split = pc.split_pattern(pc.utf8_slice_codeunits(columns["history_item_id"], 1, -1), ", ")
    try:
        history = pc.cast(pc.list_flatten(split), pa.int64()).to_numpy()
        targets = pc.cast(pc.utf8_trim_whitespace(columns["item_id"]), pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        return None
    lengths = pc.list_value_length(split).to_numpy().astype(np.int64)
    history_positions, target_positions = catalog.positions(history), catalog.positions(targets)
    if history_positions is None or target_positions is None:
        return None
    if not _titles_match(columns, catalog, history_positions, lengths, target_positions):
        return None
    lines = np.arange(2, len(table) + 2, dtype=np.int64)  # one line per row: the parser rejects newlines in values
    return SplitColumns(np.asarray(users.to_pylist(), dtype=str), lengths, history, targets, lines)


def _titles_match(columns, catalog: Catalog, history_positions, lengths, target_positions) -> bool:
    """Whether the title columns are exactly ``str()`` of the catalog titles of the id columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offsets = pa.array(np.r_[0, np.cumsum(lengths)], pa.int32())
    listed = pa.ListArray.from_arrays(offsets, catalog.reprs.take(pa.array(history_positions)))
    expected = pc.binary_join_element_wise("[", pc.binary_join(listed, ", "), "]", "")
    if not pc.all(pc.equal(expected, columns["history_item_title"])).as_py():
        return False
    target_titles = catalog.titles.take(pa.array(target_positions))
    return bool(pc.all(pc.equal(pc.utf8_trim_whitespace(columns["item_title"]), target_titles)).as_py())


class Rebuilt(NamedTuple):
    """Interactions sorted by (user code, time) and, per sample in global order, its user code and target row."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    user_keys: dict[int, str] | None
    codes: np.ndarray
    target_rows: np.ndarray


def rebuild(splits: list[SplitColumns]) -> Rebuilt | None:
    """Each user's sequence (the history of the user's first row, then every target, in global order), or
    ``None`` when some history does not continue the user's earlier rows (the row-wise check explains it)."""
    users = np.concatenate([s.users for s in splits])
    lengths = np.concatenate([s.lengths for s in splits])
    history = np.concatenate([s.history for s in splits])
    targets = np.concatenate([s.targets for s in splits])
    longest = int(lengths.max()) if len(lengths) else 0
    (codes,), user_keys = encode_ids(users)
    _, first = np.unique(codes, return_index=True)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    first_lengths = lengths[first]
    within = _ranges(first_lengths)
    first_items = history[np.repeat(starts[first], first_lengths) + within]
    first_times = np.repeat(first + longest - first_lengths, first_lengths) + within
    all_users = np.r_[np.repeat(codes[first], first_lengths), codes]
    all_items = np.r_[first_items, targets]
    all_times = np.r_[first_times, np.arange(len(targets)) + longest]
    order = np.lexsort((all_times, all_users))
    row_of = np.empty(len(order), dtype=np.int64)
    row_of[order] = np.arange(len(order))
    target_rows = row_of[len(first_items) + np.arange(len(targets))]
    sorted_users, sorted_items = all_users[order], all_items[order]
    # Every history must be the items just before its target, all of the same user.
    expected = np.repeat(target_rows - lengths, lengths) + _ranges(lengths)
    if (expected < 0).any() or not (sorted_items[expected] == history).all():
        return None
    if not (sorted_users[expected] == np.repeat(codes, lengths)).all():
        return None
    return Rebuilt(sorted_users, sorted_items, all_times[order], user_keys, codes, target_rows)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """``0 .. n-1`` for each ``n`` in ``lengths``, concatenated."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
