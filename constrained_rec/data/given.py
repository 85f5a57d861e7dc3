"""The D3 / MiniOneRec CSV layout: a data set that comes with its own split.

A folder holds ``train/``, ``valid/`` and ``test/``, each with one CSV whose rows are samples
(``user_id,history_item_title,item_title,history_item_id,item_id`` and, in MiniOneRec's files,
``history_item_sid,item_sid``; other columns are ignored), and ``info/`` with one item file whose lines are
``semantic_id<TAB>title<TAB>item_id`` (MiniOneRec) or ``title<TAB>item_id`` (D3). Histories are Python list
literals of up to 10 items, oldest first. D3's ``process.py`` builds the rows as sliding windows over each
user's time-ordered reviews, orders all of them by target time and cuts 8:1:1; this reader keeps those rows
exactly: they are the training samples and the evaluated users, with their histories and item ids.

The CSVs hold no times. Each user's sequence is rebuilt from the rows (the history of the user's first row,
then every row's target, train before valid before test, in file order) and checked: every later history
must be the end of what came before. An interaction's ``timestamp`` is its position in that global order,
which keeps the time order that the layout's files encode.

Files as D3 and MiniOneRec write them are checked column-wise (:mod:`constrained_rec.data.given_columns`);
others, and every error, go through the row-wise reader here, whose errors name the file, line and column.
"""

from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from constrained_rec.data import given_columns
from constrained_rec.data.tables import check_field_counts, interaction_frame, raise_not_utf8

# split name (as make_splits names it) -> the layout's folder
SPLIT_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
REQUIRED_COLUMNS = given_columns.COLUMNS
# MiniOneRec / D3 item files are named CATEGORY_K_YYYY-MM-YYYY-MM.txt
_CATEGORY = re.compile(r"^(?P<category>.+?)_\d+_\d{4}-\d{1,2}-\d{4}-\d{1,2}$")


@dataclass(frozen=True)
class GivenSplits:
    """The samples of a data set that comes with its own split (the D3 / MiniOneRec CSV layout).

    Attributes:
        folder: The data set's folder.
        samples: Split name (``"train"``, ``"validation"``, ``"test"``) -> ``pandas.DataFrame`` with
            ``user_id`` (the data set's int user id), ``history_length``, ``target_item_id``, ``row`` (the
            target's row in ``InteractionData.interactions``; its history is the ``history_length`` rows just
            before it, as checked on load) and ``line`` (1-based line in the CSV); only the splits whose CSV
            is present.
        files: Split name -> the CSV it was read from.
        item_file: The ``info/`` file that is the catalog.
        semantic_ids: Item id -> semantic id (MiniOneRec's ``<a_1><b_2><c_3>``), ``None`` for D3's files.
    """

    folder: Path
    samples: dict[str, pd.DataFrame]
    files: dict[str, Path]
    item_file: Path
    semantic_ids: dict[int, str] | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        """The splits whose CSV is absent (MiniOneRec's public Industrial copy lacks ``train``)."""
        return tuple(split for split in SPLIT_FOLDERS if split not in self.samples)

    def require(self, split: str, purpose: str = "") -> None:
        """Raise ``FileNotFoundError`` saying what to add when ``split`` has no CSV (call before a long job).

        Example:

        ```python
        >>> from pathlib import Path
        >>> given = GivenSplits(Path("industrial"), {}, {}, Path("industrial/info/x.txt"))
        >>> given.require("train", "training")
        Traceback (most recent call last):
        ...
        FileNotFoundError: industrial has no train/*.csv: training needs the train CSV of this D3/MiniOneRec layout; add it as industrial/train/NAME.csv (present splits: none)

        ```
        """
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"unknown split {split!r}; accepted: {list(SPLIT_FOLDERS)}")
        if split in self.samples:
            return
        folder = SPLIT_FOLDERS[split]
        present = ", ".join(self.samples) or "none"
        raise FileNotFoundError(
            f"{self.folder} has no {folder}/*.csv: {purpose or 'this'} needs the {folder} CSV of this "
            f"D3/MiniOneRec layout; add it as {self.folder / folder / 'NAME.csv'} (present splits: {present})"
        )


def is_given_layout(folder: Path) -> bool:
    """Whether ``folder`` looks like a D3 / MiniOneRec data set (``info/*.txt`` and a split folder)."""
    info = folder / "info"
    return info.is_dir() and any(info.glob("*.txt")) and any((folder / f).is_dir() for f in SPLIT_FOLDERS.values())


def _single_file(folder: Path, pattern: str, what: str) -> Path | None:
    files = sorted(folder.glob(pattern))
    if len(files) > 1:
        raise ValueError(f"{folder} holds several {what} files {[f.name for f in files]}; keep exactly one")
    return files[0] if files else None


def category_of(item_file: Path) -> str | None:
    """The Amazon category in a MiniOneRec / D3 file name (``Industrial_and_Scientific_5_2016-10-2018-11``)."""
    match = _CATEGORY.match(item_file.stem)
    return match["category"] if match else None


def read_item_file(path: Path) -> tuple[dict[int, str], dict[int, str] | None]:
    """``(item id -> title, item id -> semantic id or None)`` from ``semantic_id<TAB>title<TAB>item_id`` or
    ``title<TAB>item_id`` lines; every error names the file and line."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path}: the item file is empty")
    check_field_counts(path, raw, "\t", quoted=False)
    try:
        lines = raw.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError:
        raise_not_utf8(path)
    titles: dict[int, str] = {}
    semantic_ids: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() and number == len(lines):
            break
        fields = line.rstrip("\r").split("\t")
        if len(fields) not in (2, 3):
            raise ValueError(
                f"{path}, line {number}: {len(fields)} fields; an item line is semantic_id<TAB>title<TAB>item_id "
                "(MiniOneRec) or title<TAB>item_id (D3)"
            )
        *sid, title, item = fields
        try:
            item_id = int(item)
        except ValueError:
            raise ValueError(f"{path}, line {number}, column {len(fields)}: item id {item!r} is not an integer") from None
        if not -(2**63) <= item_id < 2**63:
            raise ValueError(f"{path}, line {number}, column {len(fields)}: item id {item_id} is outside the 64-bit "
                             "integer range (-2**63 to 2**63 - 1)")
        if item_id in titles:
            raise ValueError(f"{path}, line {number}: item {item_id} is listed again (first on line {first_line[item_id]})")
        if not title.strip():
            raise ValueError(f"{path}, line {number}, column {len(fields) - 1}: item {item_id} has an empty title")
        titles[item_id] = title.strip()
        first_line[item_id] = number
        if sid:
            semantic_ids[item_id] = sid[0]
    return titles, semantic_ids or None


def _literal_list(text: str, element: type, where: str) -> list:
    """A Python list literal of ``element`` values (``"[3, 7]"``, ``"['a', \\"b's\\"]"``)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{where}: {text[:60]!r} is not a Python list literal") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list, got {text[:60]!r}")
    for entry in value:
        # bool is an int subclass; True is not an item id.
        if not isinstance(entry, element) or isinstance(entry, bool):
            raise ValueError(f"{where}: {entry!r} is not {'an integer' if element is int else 'a string'}")
    return value


def _read_split_csv(path: Path, titles: dict[int, str]) -> list[tuple[str, list[int], int, int]]:
    """``(user, history item ids, target item id, line)`` per row, checked against the catalog ``titles``."""
    rows, line = [], 1
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: the file is empty")
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ValueError(f"{path}, line 1: no column {missing[0]!r}; the header has {header}; this layout "
                                 f"needs {list(REQUIRED_COLUMNS)}")
            index = tuple(header.index(name) for name in REQUIRED_COLUMNS)
            line = 2
            for fields in reader:
                if len(fields) != len(header):
                    raise ValueError(f"{path}, line {line}: the row has {len(fields)} fields, but the header has "
                                     f"{len(header)}")
                rows.append(_checked_row(path, line, [fields[k] for k in index], titles))
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise_not_utf8(path)
    except csv.Error as error:
        raise ValueError(f"{path}, line {line}: malformed CSV ({error})") from None
    return rows


_INT_LIST = re.compile(r"\[(?:-?\d+, )*-?\d+\]")


def _checked_row(path: Path, line: int, fields: list[str], titles: dict[int, str]):
    """One row's ``(user, history, target, line)``; ``fields`` in the order of :data:`REQUIRED_COLUMNS`."""
    user, history_titles, target_title, history_ids, target_id = fields

    def where(column: str) -> str:
        return f"{path}, line {line}, column {column!r}"

    if not user.strip():
        raise ValueError(f"{where('user_id')}: empty user id")
    # Fast path for the files as D3 / MiniOneRec write them (str() of the lists); anything else is parsed.
    if _INT_LIST.fullmatch(history_ids):
        history = [int(item) for item in history_ids[1:-1].split(", ")]
    else:
        history = _literal_list(history_ids, int, where("history_item_id"))
    try:
        target = int(target_id)
    except ValueError:
        raise ValueError(f"{where('item_id')}: {target_id!r} is not an integer item id") from None
    if target not in titles:
        raise ValueError(f"{where('item_id')}: the target item {target} is not in the item file (the catalog)")
    unknown = [item for item in history if item not in titles]
    if unknown:
        raise ValueError(f"{where('history_item_id')}: history item {unknown[0]} is not in the item file (the catalog)")
    if history_titles != str([titles[item] for item in history]):
        _check_titles(_literal_list(history_titles, str, where("history_item_title")), history, titles,
                      where("history_item_title"))
    if target_title.strip() != titles[target]:
        raise ValueError(f"{where('item_title')}: title {target_title!r} of item {target} differs from the item "
                         f"file's {titles[target]!r}")
    return user.strip(), history, target, line


def _check_titles(history_titles: list[str], history: list[int], titles: dict[int, str], where: str) -> None:
    if len(history_titles) != len(history):
        raise ValueError(f"{where}: {len(history_titles)} titles for {len(history)} history items")
    for item, title in zip(history, history_titles):
        if title.strip() != titles[item]:
            raise ValueError(f"{where}: title {title!r} of item {item} differs from the item file's {titles[item]!r}")


def _rebuild_sequences(samples: dict[str, list], files: dict[str, Path]) -> None:
    """Check, row by row, that every history is the end of its user's earlier items; the error names the row."""
    sequences: dict[str, list[int]] = {}  # user -> items so far
    for split, rows in samples.items():
        for user, history, target, line in rows:
            sequence = sequences.setdefault(user, list(history))
            if sequence[-len(history):] != history or len(history) > len(sequence):
                raise ValueError(
                    f"{files[split]}, line {line}, column 'history_item_id': the history {history} of user {user} "
                    f"does not continue the user's earlier rows, which end {sequence[-len(history):]}; the rows of "
                    "this layout are sliding windows over each user's time-ordered items"
                )
            sequence.append(target)


def read_given(folder: Path):
    """Interactions, catalog, user keys and :class:`GivenSplits` of a D3 / MiniOneRec folder."""
    item_file = _single_file(folder / "info", "*.txt", "item (info/*.txt)")
    titles, semantic_ids = read_item_file(item_file)
    files = {}
    for split, name in SPLIT_FOLDERS.items():
        csv_file = _single_file(folder / name, "*.csv", f"{name} CSV") if (folder / name).is_dir() else None
        if csv_file is not None:
            files[split] = csv_file
    if not files:
        raise ValueError(f"{folder} has info/ but none of {[f + '/*.csv' for f in SPLIT_FOLDERS.values()]}")
    columns, catalog = {}, given_columns.Catalog.build(titles)
    for split, path in files.items():
        fast = given_columns.read_canonical(path, catalog)
        columns[split] = fast if fast is not None else given_columns.from_rows(_read_split_csv(path, titles))
    rebuilt = given_columns.rebuild(list(columns.values()))
    if rebuilt is None:
        _explain_discontinuity(columns, files)
    frame = interaction_frame(rebuilt.users, rebuilt.items, rebuilt.times)
    tables, start = {}, 0
    for split, split_columns in columns.items():
        end = start + len(split_columns.targets)
        tables[split] = pd.DataFrame({
            "user_id": rebuilt.codes[start:end],
            "history_length": split_columns.lengths,
            "target_item_id": split_columns.targets,
            "row": rebuilt.target_rows[start:end],
            "line": split_columns.lines,
        })
        start = end
    given = GivenSplits(folder, tables, files, item_file, semantic_ids)
    return frame, titles, rebuilt.user_keys, given


def _explain_discontinuity(columns: dict[str, given_columns.SplitColumns], files: dict[str, Path]) -> None:
    """Raise the row-wise error for the first history that does not continue its user's earlier rows."""
    samples = {}
    for split, c in columns.items():
        histories = np.split(c.history, np.cumsum(c.lengths)[:-1]) if len(c.lengths) else []
        samples[split] = [(str(user), history.tolist(), int(target), int(line))
                          for user, history, target, line in zip(c.users, histories, c.targets, c.lines)]
    _rebuild_sequences(samples, files)
    raise AssertionError("the column-wise and the row-wise sequence checks disagree")  # never: both check the same
