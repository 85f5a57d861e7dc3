"""Interaction data sets, their leave-one-out splits, and the BIGRec samples built from them.

``load_interactions`` reads one data set into an :class:`InteractionData`: the interactions (user, item,
timestamp, as ints, sorted by user then time) and the catalog (item id -> title). Supported sources:

* ``"ml-100k"`` (the default): MovieLens-100K as shipped in the ``recbole==1.2.1`` wheel, titles rendered
  "Title (Year)". Without that wheel, the GroupLens folder ``ml-100k/`` under ``data_dir`` or the cache.
* The other GroupLens names (``"ml-1m"``, ``"ml-10m"``, ``"ml-latest-small"``, ``"ml-20m"``, ``"ml-25m"``,
  ``"ml-32m"``, ``"ml-latest"``): the unchanged GroupLens folder under ``data_dir`` (default
  ``$CONSTRAINED_REC_DATA``) or the cache; ``download=True`` fetches the archive once into the cache.
* A folder in one of those layouts: ``u.data`` + ``u.item`` (ml-100k), ``ratings.dat`` + ``movies.dat``
  (ml-1m, ml-10m), ``ratings.csv`` + ``movies.csv`` (ml-latest-small, ml-20m/25m/32m), RecBole's
  ``NAME.inter`` + ``NAME.item``, or an Amazon reviews 2018 pair ``CATEGORY_5.json[.gz]`` +
  ``meta_CATEGORY.json[.gz]``.
* An Amazon reviews file (``.json``/``.jsonl``, optionally gzipped) with ``items=`` its metadata file (found
  beside it when its name is ``meta_CATEGORY.json[.gz]``).
* Any interactions CSV/TSV with ``items=`` an items CSV/TSV; column names in :class:`CsvFormat`.

What filtering removes is counted in ``InteractionData.dropped`` and logged, never silent: exact duplicate
rows, interactions with items that have no title (absent from the item file, or a placeholder such as
ml-100k's item 267 "unknown", or an empty Amazon title), users below ``min_user_interactions``, and catalog
items nobody interacted with. Malformed input (a missing column, an unparsable id or timestamp, an item row
with an empty title, text that is not UTF-8 in a UTF-8 format) raises an error naming the file and line.

``make_splits`` turns the interactions into ``datasets.Dataset`` splits of BIGRec samples: up to
``max_history`` previous titles -> the next title, with the prompt of :mod:`constrained_rec.prompts`.

Command line: ``python -m constrained_rec.data stats DATASET`` and ``python -m constrained_rec.data preview
DATASET``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import gzip
import hashlib
import html
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from constrained_rec.prompts import ITEM_NOUNS, TEMPLATES, build_prompt
from constrained_rec.tokenization import response_text

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "CONSTRAINED_REC_DATA"
CACHE_ENV_VAR = "CONSTRAINED_REC_CACHE"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
# Data set name -> the folder its GroupLens archive unpacks to.
GROUPLENS_FOLDERS = {
    "ml-100k": "ml-100k",
    "ml-1m": "ml-1m",
    "ml-10m": "ml-10M100K",
    "ml-20m": "ml-20m",
    "ml-25m": "ml-25m",
    "ml-32m": "ml-32m",
    "ml-latest-small": "ml-latest-small",
    "ml-latest": "ml-latest",
}
PROTOCOLS = ("leave_one_out", "global_time")
COLUMNS = ["user_id", "item_id", "timestamp"]
# ml-100k names its one untitled item (267) "unknown"; RecBole's copy spells it "unkonwn".
_PLACEHOLDER_TITLES = {"unknown", "unkonwn"}
# Amazon 2018 category file stem -> the item noun of the prompt; other categories get "products".
_AMAZON_NOUNS = {
    "Video_Games": "video games",
    "Movies_and_TV": "movies",
    "Books": "books",
    "Kindle_Store": "books",
    "Toys_and_Games": "toys",
    "CDs_and_Vinyl": "albums",
    "Digital_Music": "songs",
}
_ARTICLES = "The|A|An|Les|Le|La|L'|Il|Lo|I|Gli|Das|Der|Die|Det|Den|El|Los|Las|O|Os|As|Un|Une|Ein|Eine"
_TRAILING_ARTICLE = re.compile(rf"^(?P<main>.+?), (?P<article>{_ARTICLES})(?P<rest>(?: \([^()]*\))*)$")


@dataclass
class CsvFormat:
    """Column names and delimiter of a generic interactions file and its items file.

    Args:
        user (`str`, defaults to `"user_id"`): Interactions column holding the user id.
        item (`str`, defaults to `"item_id"`): Interactions column holding the item id.
        timestamp (`str`, defaults to `"timestamp"`): Interactions column holding the time: integer Unix
            seconds or ISO 8601 text.
        items_item (`str`, *optional*): Items-file column holding the item id; defaults to ``item``.
        title (`str`, defaults to `"title"`): Items-file column holding the title.
        delimiter (`str`, *optional*): Field separator; by default tab for ``.tsv`` files, comma otherwise.
    """

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    items_item: str | None = None
    title: str = "title"
    delimiter: str | None = None


@dataclass
class InteractionData:
    """One data set: interactions sorted by (user, time) and the catalog of item titles.

    Attributes:
        name: The data set's name ("ml-100k", a folder or file stem).
        interactions: ``pandas.DataFrame`` with int64 columns ``user_id``, ``item_id``, ``timestamp`` (Unix
            seconds), sorted by user then timestamp; ties keep the order of the source file.
        titles: The catalog, item id -> title; every interacted item has one.
        item_noun: Plural noun for the items in prompts ("movies", "video games", ...).
        dropped: What filtering removed, by reason (every reason present, zero when nothing).
        raw_counts: Users, items and interactions as read, before filtering.
        source: Where the data came from.
        original_user_ids / original_item_ids: For sources with string ids (Amazon, some CSVs), int id ->
            original id; ``None`` where the source's ids are already ints.
    """

    name: str
    interactions: pd.DataFrame
    titles: dict[int, str]
    item_noun: str = "items"
    dropped: dict[str, int] = field(default_factory=dict)
    raw_counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    original_user_ids: dict[int, str] | None = None
    original_item_ids: dict[int, str] | None = None

    def __post_init__(self):
        frame = self.interactions
        if list(frame.columns) != COLUMNS or not all(pd.api.types.is_integer_dtype(t) for t in frame.dtypes):
            raise ValueError(
                f"interactions must have the integer columns {COLUMNS}, got {dict(frame.dtypes.astype(str))}; "
                "build InteractionData with from_frame or load_interactions"
            )
        users, times = frame["user_id"].to_numpy(), frame["timestamp"].to_numpy()
        unsorted = (users[1:] < users[:-1]) | ((users[1:] == users[:-1]) & (times[1:] < times[:-1]))
        if unsorted.any():
            row = int(np.flatnonzero(unsorted)[0]) + 1
            raise ValueError(f"interactions must be sorted by (user_id, timestamp); row {row} is out of order")
        untitled = set(frame["item_id"].unique().tolist()) - set(self.titles)
        if untitled:
            raise ValueError(f"{len(untitled)} interacted items have no title, e.g. item {min(untitled)}")
        if self.item_noun not in ITEM_NOUNS:
            raise ValueError(f"unknown item noun {self.item_noun!r}; accepted: {sorted(ITEM_NOUNS)}")

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        titles: dict[int, str],
        *,
        name: str = "interactions",
        item_noun: str = "items",
        min_user_interactions: int = 3,
        keep_items_without_interactions: bool = False,
        source: str = "",
        extra: dict[str, int] | None = None,
        original_user_ids: dict[int, str] | None = None,
        original_item_ids: dict[int, str] | None = None,
    ) -> "InteractionData":
        """Filter (counting what goes), sort and wrap interactions already in memory; the loaders end here.

        Args:
            frame (`pandas.DataFrame`): Integer columns ``user_id``, ``item_id``, ``timestamp``, any order.
            titles (`dict[int, str]`): item id -> title; interactions with other items are dropped (counted).
            extra (`dict[str, int]`, *optional*): Counts a loader dropped before, merged into ``dropped``.
            Other arguments as in :func:`load_interactions`.

        Example:

        ```python
        >>> import pandas as pd
        >>> from constrained_rec.data import InteractionData
        >>> frame = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [7, 8, 9, 7], "timestamp": [3, 1, 2, 1]})
        >>> titles = {7: "Heat (1995)", 8: "Up (2009)"}
        >>> data = InteractionData.from_frame(frame, titles, item_noun="movies", min_user_interactions=2)
        >>> data.interactions["item_id"].tolist()
        [8, 7]
        >>> data.dropped["interactions_without_title"], data.dropped["users_below_min_interactions"]
        (1, 1)

        ```
        """
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"the interactions frame lacks the columns {missing}; it has {list(frame.columns)}")
        frame = frame[COLUMNS]
        for column in COLUMNS:
            if not pd.api.types.is_integer_dtype(frame[column].dtype):
                raise ValueError(f"column {column!r} must hold integers, got dtype {frame[column].dtype}")
        frame = frame.astype(np.int64)
        if not isinstance(min_user_interactions, int) or min_user_interactions < 1:
            raise ValueError(f"min_user_interactions must be an integer >= 1, got {min_user_interactions!r}")
        blank = [item for item, title in titles.items() if not isinstance(title, str) or not title.strip()]
        if blank:
            raise ValueError(f"titles must be non-empty strings; item {blank[0]} has {titles[blank[0]]!r}")
        catalog = titles
        raw_counts = {
            "users": int(frame["user_id"].nunique()),
            "items": int(frame["item_id"].nunique()),
            "interactions": len(frame),
            "catalog_titles": len(catalog),
        }
        duplicated = frame.duplicated(COLUMNS).to_numpy()
        frame = frame[~duplicated]
        titled = frame["item_id"].isin(list(catalog)).to_numpy()
        untitled_items = int(frame.loc[~titled, "item_id"].nunique())
        frame = frame[titled]
        sizes = frame.groupby("user_id")["item_id"].transform("size").to_numpy()
        too_short = sizes < min_user_interactions
        short_users = int(frame.loc[too_short, "user_id"].nunique())
        frame = frame[~too_short]
        interacted = set(frame["item_id"].unique().tolist())
        unused = [item for item in catalog if item not in interacted]
        if not keep_items_without_interactions:
            catalog = {item: title for item, title in catalog.items() if item in interacted}
        dropped = {
            "duplicate_interactions": int(duplicated.sum()),
            "items_without_title": untitled_items,
            "interactions_without_title": int((~titled).sum()),
            "users_below_min_interactions": short_users,
            "interactions_of_users_below_min": int(too_short.sum()),
            "catalog_items_without_interactions": 0 if keep_items_without_interactions else len(unused),
            **{k: int(v) for k, v in (extra or {}).items()},
        }
        # Stable sort: interactions with equal timestamps keep the order of the source file.
        order = np.lexsort((frame["timestamp"].to_numpy(), frame["user_id"].to_numpy()))
        frame = frame.iloc[order].reset_index(drop=True)
        if any(dropped.values()):
            logger.warning(
                "%s: dropped %s", name, ", ".join(f"{count} {reason}" for reason, count in dropped.items() if count)
            )
        if frame.empty:
            raise ValueError(f"{source or name}: no interactions left after filtering (dropped: {dropped})")
        return cls(
            name=name,
            interactions=frame,
            titles=catalog,
            item_noun=item_noun,
            dropped=dropped,
            raw_counts=raw_counts,
            source=source,
            original_user_ids=original_user_ids,
            original_item_ids=original_item_ids,
        )

    @property
    def num_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def num_items(self) -> int:
        return int(self.interactions["item_id"].nunique())

    def stats(self, tokenizer=None) -> dict:
        """Summary: counts, density, history-length and title-length distributions, what was dropped.

        Title lengths are in characters, and also in tokens of ``tokenizer`` (as the trie sees them:
        :func:`constrained_rec.tokenization.titles_token_ids`) when one is given.

        Example:

        ```python
        >>> from constrained_rec.data import load_interactions
        >>> stats = load_interactions("ml-100k").stats()
        >>> stats["users"], stats["raw"]["items"], stats["raw"]["interactions"]
        (943, 1682, 100000)

        ```
        """
        frame = self.interactions
        users, items = self.num_users, self.num_items
        history = frame.groupby("user_id").size().to_numpy()
        titles = list(self.titles.values())
        stats = {
            "name": self.name,
            "users": users,
            "items": items,
            "interactions": len(frame),
            "density": len(frame) / (users * items) if users and items else 0.0,
            "catalog_titles": len(titles),
            "duplicate_titles": sum(1 for n in Counter(titles).values() if n > 1),
            "history_length": _distribution(history),
            "title_characters": _distribution([len(t) for t in titles]),
            "first_time": _iso_date(frame["timestamp"].min()) if len(frame) else None,
            "last_time": _iso_date(frame["timestamp"].max()) if len(frame) else None,
            "dropped": dict(self.dropped),
            "raw": dict(self.raw_counts),
        }
        if tokenizer is not None:
            from constrained_rec.tokenization import titles_token_ids

            lengths = [len(ids) for ids in titles_token_ids(tokenizer, titles)]
            stats["title_tokens"] = _distribution(lengths)
        return stats


def _distribution(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"min": None, "median": None, "mean": None, "p90": None, "max": None}
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": round(float(values.mean()), 2),
        "p90": float(np.percentile(values, 90)),
        "max": int(values.max()),
    }


def _iso_date(timestamp) -> str:
    return pd.Timestamp(int(timestamp), unit="s").strftime("%Y-%m-%d")


def move_trailing_article(title: str) -> str:
    """MovieLens's "Shawshank Redemption, The (1994)" -> "The Shawshank Redemption (1994)".

    The article may be followed by parenthesised parts (alternative titles, the year), which stay at the
    end; titles without a trailing article are returned unchanged.

    Example:

    ```python
    >>> from constrained_rec.data import move_trailing_article
    >>> move_trailing_article("Shawshank Redemption, The (1994)")
    'The Shawshank Redemption (1994)'
    >>> move_trailing_article("Blue Angel, The (Blaue Engel, Der) (1930)")
    'The Blue Angel (Blaue Engel, Der) (1930)'
    >>> move_trailing_article("Star Maker, The (Uomo delle stelle, L') (1995)")
    "The Star Maker (Uomo delle stelle, L') (1995)"
    >>> move_trailing_article("Toy Story (1995)")
    'Toy Story (1995)'

    ```
    """
    match = _TRAILING_ARTICLE.match(title)
    if match is None:
        return title
    article = match["article"]
    separator = "" if article.endswith("'") else " "
    return f"{article}{separator}{match['main']}{match['rest']}"


# ---------------------------------------------------------------------------------------------------------
# Reading files. Every error names the file and the 1-based line.


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _raise_not_utf8(path: Path) -> None:
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte {error.start} of the line, "
                    f"{raw[error.start:error.start + 4]!r}); this format must be UTF-8 encoded"
                ) from None
    raise ValueError(f"{path}: not valid UTF-8; this format must be UTF-8 encoded")


def _read_table(
    path: Path,
    columns: list,
    *,
    sep: str = ",",
    header: bool = True,
    encoding: str = "utf-8-sig",  # UTF-8, tolerating the byte-order mark that spreadsheet programs write
    text: str | None = None,
    string_columns: tuple = (),
) -> pd.DataFrame:
    """Columns of a delimited file as a frame whose row ``i`` is line ``i + 1 + header`` of the file.

    ``columns`` are names (files with a header) or positions (files without). ``text`` is the file's
    content when it was already decoded (the ``::`` formats). Blank lines are kept as rows so that line
    numbers stay exact; their empty cells fail validation like any other empty cell.
    """
    source = io.StringIO(text) if text is not None else path
    try:
        if header:
            present = list(pd.read_csv(source, sep=sep, nrows=0, encoding=encoding).columns)
            missing = [c for c in columns if c not in present]
            if missing:
                raise ValueError(f"{path}, line 1: no column {missing[0]!r}; the header has {present}")
            if text is not None:
                source.seek(0)
        return pd.read_csv(
            source,
            sep=sep,
            header=0 if header else None,
            usecols=columns,
            dtype={c: str for c in string_columns},
            encoding=encoding,
            keep_default_na=False,
            skip_blank_lines=False,
            quoting=csv.QUOTE_MINIMAL if sep in (",", "\t") else csv.QUOTE_NONE,
        )
    except UnicodeDecodeError:
        _raise_not_utf8(path)
    except pd.errors.ParserError as error:
        raise ValueError(f"{path}: malformed table ({error})") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty") from None


def _integers(values: pd.Series, what: str, path: Path, first_line: int) -> np.ndarray:
    """``values`` as int64, or an error naming the first line whose value is not an integer."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(np.int64)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(numbers)
    bad[~bad] = numbers[~bad] != np.round(numbers[~bad])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}, line {first_line + row}: {what} {values.iloc[row]!r} is not an integer")
    return numbers.astype(np.int64)


def _timestamps(values: pd.Series, path: Path, first_line: int) -> np.ndarray:
    """Unix seconds from integer seconds or ISO 8601 text (naive times are UTC); errors name the line."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(np.int64)
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    parsed = pd.to_datetime(text.where(numbers.isna(), None), format="ISO8601", utc=True, errors="coerce")
    iso_seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    seconds = numbers.fillna(iso_seconds.astype("float64")).to_numpy(np.float64)
    bad = ~np.isfinite(seconds)
    bad[~bad] = seconds[~bad] != np.round(seconds[~bad])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}, line {first_line + row}: timestamp {values.iloc[row]!r} is neither integer Unix seconds "
            "nor an ISO 8601 date/time"
        )
    return seconds.astype(np.int64)


def _titles_column(values: pd.Series, path: Path, first_line: int) -> list[str]:
    titles = values.astype(str).str.strip()
    empty = (titles == "").to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise ValueError(f"{path}, line {first_line + row}: the item has an empty title")
    return titles.tolist()


def _catalog(item_ids: np.ndarray, titles: list[str], path: Path, first_line: int) -> dict[int, str]:
    """item id -> title; an item listed twice with different titles is an error naming both lines."""
    catalog: dict[int, str] = {}
    first_row: dict[int, int] = {}
    for row, (item, title) in enumerate(zip(item_ids.tolist(), titles)):
        if item in catalog and catalog[item] != title:
            raise ValueError(
                f"{path}, line {first_line + row}: item {item} has the title {title!r}, but line "
                f"{first_line + first_row[item]} gave it {catalog[item]!r}"
            )
        catalog.setdefault(item, title)
        first_row.setdefault(item, row)
    return catalog


def _frame(users, items, timestamps) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.asarray(users, np.int64),
            "item_id": np.asarray(items, np.int64),
            "timestamp": np.asarray(timestamps, np.int64),
        }
    )


def _decode_dat(path: Path) -> str:
    # GroupLens wrote ml-1m's movies.dat in Latin-1 and ml-10m's in UTF-8: accept both.
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_recbole(folder: Path, stem: str) -> tuple[pd.DataFrame, dict[int, str], int]:
    """RecBole atomic files ``stem.inter`` + ``stem.item`` (typed headers such as ``item_id:token``)."""

    def read(path: Path, required: list[str], optional: list[str] = ()) -> pd.DataFrame:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\n").split("\t")
        typed = {column.split(":")[0]: column for column in header}
        for name in required:
            if name not in typed:
                raise ValueError(f"{path}, line 1: no column {name!r}; the header has {header}")
        names = [n for n in [*required, *optional] if n in typed]
        columns = [typed[n] for n in names]
        frame = _read_table(path, columns, sep="\t", string_columns=tuple(c for c in columns if "token_seq" in c))
        return frame.rename(columns=dict(zip(columns, names)))

    inter_path, item_path = folder / f"{stem}.inter", folder / f"{stem}.item"
    inter = read(inter_path, ["user_id", "item_id", "timestamp"])
    frame = _frame(
        _integers(inter["user_id"], "user id", inter_path, 2),
        _integers(inter["item_id"], "item id", inter_path, 2),
        _timestamps(inter["timestamp"], inter_path, 2),
    )
    # RecBole's MovieLens files keep the year apart (movie_title, release_year); other sets use `title`.
    items = read(item_path, ["item_id"], ["movie_title", "title", "release_year"])
    title_column = "movie_title" if "movie_title" in items else "title"
    if title_column not in items:
        raise ValueError(f"{item_path}, line 1: no column 'movie_title' or 'title'")
    item_ids = _integers(items["item_id"], "item id", item_path, 2)
    titles, placeholders = [], 0
    years = items["release_year"].astype(str).str.strip() if "release_year" in items else None
    for row, title in enumerate(items[title_column].astype(str).str.strip()):
        if title.lower() in _PLACEHOLDER_TITLES:
            titles.append("")
            placeholders += 1
            continue
        if not title:
            raise ValueError(f"{item_path}, line {row + 2}: the item has an empty title")
        year = years.iloc[row] if years is not None else ""
        titles.append(f"{title} ({year})" if year.isdigit() else title)
    catalog = {i: t for i, t in zip(item_ids.tolist(), titles) if t}
    return frame, catalog, placeholders


def _read_ml100k_raw(folder: Path) -> tuple[pd.DataFrame, dict[int, str], int]:
    """GroupLens ml-100k: ``u.data`` (tab-separated, no header) and ``u.item`` (``|``-separated, Latin-1)."""
    data_path, item_path = folder / "u.data", folder / "u.item"
    data = _read_table(data_path, [0, 1, 3], sep="\t", header=False)
    frame = _frame(
        _integers(data[0], "user id", data_path, 1),
        _integers(data[1], "item id", data_path, 1),
        _integers(data[3], "timestamp", data_path, 1),
    )
    items = _read_table(item_path, [0, 1], sep="|", header=False, encoding="latin-1", string_columns=(1,))
    item_ids = _integers(items[0], "item id", item_path, 1)
    titles = items[1].astype(str).str.strip()
    placeholder = titles.str.lower().isin(_PLACEHOLDER_TITLES).to_numpy()
    catalog = _catalog(item_ids[~placeholder], _titles_column(titles[~placeholder], item_path, 1), item_path, 1)
    return frame, catalog, int(placeholder.sum())


def _read_movielens_dat(folder: Path) -> tuple[pd.DataFrame, dict[int, str], int]:
    """GroupLens ml-1m / ml-10m: ``ratings.dat`` and ``movies.dat``, fields separated by ``::``."""
    ratings_path, movies_path = folder / "ratings.dat", folder / "movies.dat"
    # pandas' fast parser takes one-character separators only; \x1f (unit separator) never occurs in text.
    ratings = _read_table(
        ratings_path, [0, 1, 3], sep="\x1f", header=False, text=_decode_dat(ratings_path).replace("::", "\x1f")
    )
    frame = _frame(
        _integers(ratings[0], "user id", ratings_path, 1),
        _integers(ratings[1], "item id", ratings_path, 1),
        _integers(ratings[3], "timestamp", ratings_path, 1),
    )
    movies = _read_table(
        movies_path, [0, 1], sep="\x1f", header=False, text=_decode_dat(movies_path).replace("::", "\x1f"),
        string_columns=(1,),
    )
    item_ids = _integers(movies[0], "item id", movies_path, 1)
    return frame, _catalog(item_ids, _titles_column(movies[1], movies_path, 1), movies_path, 1), 0


def _read_movielens_csv(folder: Path) -> tuple[pd.DataFrame, dict[int, str], int]:
    """GroupLens ml-latest-small / ml-20m / ml-25m / ml-32m: ``ratings.csv`` and ``movies.csv`` (UTF-8)."""
    ratings_path, movies_path = folder / "ratings.csv", folder / "movies.csv"
    ratings = _read_table(ratings_path, ["userId", "movieId", "timestamp"])
    frame = _frame(
        _integers(ratings["userId"], "user id", ratings_path, 2),
        _integers(ratings["movieId"], "item id", ratings_path, 2),
        _integers(ratings["timestamp"], "timestamp", ratings_path, 2),
    )
    movies = _read_table(movies_path, ["movieId", "title"], string_columns=("title",))
    item_ids = _integers(movies["movieId"], "item id", movies_path, 2)
    return frame, _catalog(item_ids, _titles_column(movies["title"], movies_path, 2), movies_path, 2), 0


def _encode_ids(*columns: np.ndarray) -> tuple[list[np.ndarray], dict[int, str] | None]:
    """Integer ids stay as they are; otherwise the sorted distinct strings get ids 0, 1, 2, ..."""
    texts = [np.asarray(c, dtype=str) for c in columns]
    try:
        numbers = [np.array([int(v) for v in t], dtype=np.int64) for t in texts]
        # "007" and "7" are different ids as text: only canonical integers are taken as numbers.
        if all(str(n) == v for t, ns in zip(texts, numbers) for n, v in zip(ns.tolist(), t.tolist())):
            return numbers, None
    except ValueError:
        pass
    keys = np.unique(np.concatenate(texts)) if texts else np.array([], dtype=str)
    codes = [np.searchsorted(keys, t).astype(np.int64) for t in texts]
    return codes, {i: str(k) for i, k in enumerate(keys.tolist())}


def _read_csv_pair(path: Path, items_path: Path, fmt: CsvFormat):
    def sep_for(p: Path) -> str:
        if fmt.delimiter is not None:
            return fmt.delimiter
        return "\t" if ".tsv" in p.suffixes else ","

    item_column = fmt.items_item or fmt.item
    inter = _read_table(
        path, [fmt.user, fmt.item, fmt.timestamp], sep=sep_for(path), string_columns=(fmt.user, fmt.item)
    )
    items = _read_table(
        items_path, [item_column, fmt.title], sep=sep_for(items_path), string_columns=(item_column, fmt.title)
    )
    for frame, p, columns in ((inter, path, (fmt.user, fmt.item)), (items, items_path, (item_column,))):
        for column in columns:
            empty = (frame[column].astype(str).str.strip() == "").to_numpy()
            if empty.any():
                raise ValueError(f"{p}, line {int(np.flatnonzero(empty)[0]) + 2}: empty {column!r}")
    timestamps = _timestamps(inter[fmt.timestamp], path, 2)
    titles = _titles_column(items[fmt.title], items_path, 2)
    (users,), user_keys = _encode_ids(inter[fmt.user].str.strip().to_numpy())
    (inter_items, item_items), item_keys = _encode_ids(
        inter[fmt.item].str.strip().to_numpy(), items[item_column].str.strip().to_numpy()
    )
    catalog = _catalog(item_items, titles, items_path, 2)
    return _frame(users, inter_items, timestamps), catalog, user_keys, item_keys


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; Amazon 2014 metadata lines are Python literals."""
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte {error.start} of the line); "
                    "JSON lines must be UTF-8 encoded"
                ) from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                try:
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise ValueError(f"{path}, line {number}: not a JSON object ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def _amazon_category(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".json", ".jsonl"):
        name = name.removesuffix(suffix)
    name = name.removeprefix("reviews_").removeprefix("meta_")
    return name.removesuffix("_5")


def _amazon_meta_beside(reviews: Path) -> Path:
    category = _amazon_category(reviews)
    candidates = [reviews.parent / f"meta_{category}{ext}" for ext in (".json.gz", ".json", ".jsonl.gz", ".jsonl")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no metadata for the Amazon reviews {reviews}: looked for {[c.name for c in candidates]} beside it; "
        "pass items='path/to/meta_CATEGORY.json.gz'"
    )


def _read_amazon(reviews_path: Path, meta_path: Path):
    users, items, times = [], [], []
    for number, record in _json_lines(reviews_path):
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if key not in record:
                raise ValueError(f"{reviews_path}, line {number}: the review has no {key!r} field")
        try:
            times.append(int(record["unixReviewTime"]))
        except (TypeError, ValueError):
            raise ValueError(
                f"{reviews_path}, line {number}: unixReviewTime {record['unixReviewTime']!r} is not an integer"
            ) from None
        users.append(str(record["reviewerID"]))
        items.append(str(record["asin"]))
    if not users:
        raise ValueError(f"{reviews_path}: no reviews in the file")
    meta: dict[str, str] = {}
    empty_titles = duplicate_rows = 0
    for number, record in _json_lines(meta_path):
        if "asin" not in record:
            raise ValueError(f"{meta_path}, line {number}: the metadata record has no 'asin' field")
        asin = str(record["asin"])
        if asin in meta:
            duplicate_rows += 1
            continue
        # Amazon titles carry HTML entities ("&amp;"), sometimes twice escaped.
        title = " ".join(html.unescape(html.unescape(str(record.get("title") or ""))).split())
        if not title:
            empty_titles += 1
        meta[asin] = title
    (user_codes,), user_keys = _encode_ids(np.asarray(users))
    item_keys_sorted = sorted(set(items))
    item_index = {asin: i for i, asin in enumerate(item_keys_sorted)}
    item_codes = np.fromiter((item_index[a] for a in items), dtype=np.int64, count=len(items))
    catalog = {i: meta[a] for a, i in item_index.items() if meta.get(a)}
    extra = {"amazon_meta_duplicate_rows": duplicate_rows, "amazon_meta_empty_titles": empty_titles}
    item_keys = dict(enumerate(item_keys_sorted))
    return _frame(user_codes, item_codes, times), catalog, user_keys, item_keys, extra


# ---------------------------------------------------------------------------------------------------------
# Finding a data set by name, filtering, and the public loader.


def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "constrained-rec") / "data"


def _recbole_ml100k() -> Path | None:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"
    return folder if (folder / "ml-100k.inter").is_file() else None


def download_grouplens(name: str, cache_dir=None) -> Path:
    """Download and unpack the GroupLens archive of ``name`` into the cache; the unpacked folder.

    Only :func:`load_interactions` with ``download=True`` calls this: nothing downloads by default.
    """
    if name not in GROUPLENS_FOLDERS:
        raise ValueError(f"unknown GroupLens data set {name!r}; accepted: {sorted(GROUPLENS_FOLDERS)}")
    target_root = _cache_dir(cache_dir)
    target = target_root / GROUPLENS_FOLDERS[name]
    if target.is_dir():
        return target
    target_root.mkdir(parents=True, exist_ok=True)
    url = f"{GROUPLENS_URL}/{name}.zip"
    logger.warning("downloading %s into %s", url, target_root)
    with tempfile.TemporaryDirectory(dir=target_root) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as error:
            raise RuntimeError(
                f"could not download {url} ({error}); download it by hand and unpack it into {target_root}, "
                f"or pass data_dir= the folder that holds {GROUPLENS_FOLDERS[name]}/"
            ) from None
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)
        unpacked = Path(tmp) / GROUPLENS_FOLDERS[name]
        if not unpacked.is_dir():
            raise RuntimeError(f"{url} did not contain the folder {GROUPLENS_FOLDERS[name]}/")
        unpacked.rename(target)
    return target


def _find_named(name: str, data_dir, download: bool, cache_dir) -> Path:
    """The folder of a GroupLens data set: ``data_dir``, then (ml-100k) the RecBole wheel, then
    ``$CONSTRAINED_REC_DATA``, then the cache; downloaded into the cache only when ``download``."""
    folder_names = dict.fromkeys([GROUPLENS_FOLDERS[name], name])
    candidates = [Path(data_dir) / f for f in folder_names] if data_dir is not None else []
    if name == "ml-100k" and _recbole_ml100k() is not None:
        candidates.append(_recbole_ml100k())
    if os.environ.get(DATA_ENV_VAR):
        candidates += [Path(os.environ[DATA_ENV_VAR]) / f for f in folder_names]
    candidates += [_cache_dir(cache_dir) / f for f in folder_names]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if download:
        return download_grouplens(name, cache_dir)
    hint = "pip install --no-deps recbole==1.2.1 (it ships ml-100k), or " if name == "ml-100k" else ""
    raise FileNotFoundError(
        f"data set {name!r} not found (looked in {[str(c) for c in candidates]}). To get it: {hint}download "
        f"{GROUPLENS_URL}/{name}.zip and unpack it into data_dir (or ${DATA_ENV_VAR}), "
        f"or pass download=True to fetch it once into {_cache_dir(cache_dir)}"
    )


def _amazon_pair_in(folder: Path) -> tuple[Path, Path] | None:
    metas = [p for p in folder.iterdir() if p.name.startswith("meta_") and ".json" in p.name]
    reviews = [p for p in folder.iterdir() if not p.name.startswith("meta_") and ".json" in p.name]
    if not metas or not reviews:
        return None
    if len(reviews) != 1:
        raise ValueError(
            f"{folder} holds several Amazon review files {sorted(p.name for p in reviews)}; pass the one to load "
            "as the source and its metadata as items="
        )
    return reviews[0], _amazon_meta_beside(reviews[0])


def load_interactions(
    source: str | os.PathLike = "ml-100k",
    *,
    items: str | os.PathLike | None = None,
    csv_format: CsvFormat | None = None,
    item_noun: str | None = None,
    min_user_interactions: int = 3,
    move_articles: bool = False,
    keep_items_without_interactions: bool = False,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> InteractionData:
    """Read a data set's interactions and catalog, drop what cannot be used (counted), sort by user and time.

    Args:
        source (`str` or `os.PathLike`, defaults to `"ml-100k"`):
            A GroupLens name (``"ml-100k"``, ``"ml-1m"``, ``"ml-10m"``, ``"ml-latest-small"``, ``"ml-20m"``,
            ``"ml-25m"``, ``"ml-32m"``, ``"ml-latest"``), a folder in a supported layout, an Amazon reviews
            file, or an interactions CSV/TSV (see the module docstring).
        items (`str` or `os.PathLike`, *optional*):
            The items file of a CSV/TSV source, or the metadata file of an Amazon reviews file.
        csv_format ([`CsvFormat`], *optional*): Column names and delimiter of a CSV/TSV source.
        item_noun (`str`, *optional*):
            Plural noun for prompts; by default "movies" for MovieLens, from the category for Amazon,
            "items" otherwise. One of :data:`constrained_rec.prompts.ITEM_NOUNS`.
        min_user_interactions (`int`, defaults to 3):
            Users with fewer interactions (after the other filters) are dropped; 3 is the least that
            leave-one-out needs (one to train on, one to validate, one to test).
        move_articles (`bool`, defaults to `False`):
            Rewrite "Shawshank Redemption, The (1994)" as "The Shawshank Redemption (1994)".
        keep_items_without_interactions (`bool`, defaults to `False`):
            Keep catalog items that no remaining user interacted with (by default they are dropped, counted).
        data_dir (`str` or `os.PathLike`, *optional*):
            Folder holding GroupLens folders; defaults to ``$CONSTRAINED_REC_DATA``.
        download (`bool`, defaults to `False`):
            Fetch a GroupLens archive that is found nowhere into ``cache_dir``, once.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Download cache; defaults to ``$CONSTRAINED_REC_CACHE/data`` or ``~/.cache/constrained-rec/data``.

    Example:

    ```python
    >>> from constrained_rec.data import load_interactions
    >>> data = load_interactions("ml-100k")
    >>> data.titles[1], data.item_noun, data.dropped["items_without_title"]
    ('Toy Story (1995)', 'movies', 1)
    >>> list(data.interactions.columns)
    ['user_id', 'item_id', 'timestamp']

    ```
    """
    if not isinstance(min_user_interactions, int) or min_user_interactions < 1:
        raise ValueError(f"min_user_interactions must be an integer >= 1, got {min_user_interactions!r}")
    if item_noun is not None and item_noun not in ITEM_NOUNS:
        raise ValueError(f"unknown item noun {item_noun!r}; accepted: {sorted(ITEM_NOUNS)}")
    name = str(source)
    extra: dict[str, int] = {}
    user_keys = item_keys = None
    noun = "items"
    if name in GROUPLENS_FOLDERS:
        path = _find_named(name, data_dir, download, cache_dir)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"{source!r} is neither a known data set name ({sorted(GROUPLENS_FOLDERS)}) nor an existing path"
            )
        name = path.name.split(".")[0] if path.is_file() else path.name
    untitled_placeholders = 0
    if path.is_dir():
        inter_files = sorted(path.glob("*.inter"))
        amazon = _amazon_pair_in(path)
        if inter_files and (path / f"{inter_files[0].stem}.item").is_file():
            frame, catalog, untitled_placeholders = _read_recbole(path, inter_files[0].stem)
            noun = "movies"
        elif (path / "u.data").is_file() and (path / "u.item").is_file():
            frame, catalog, untitled_placeholders = _read_ml100k_raw(path)
            noun = "movies"
        elif (path / "ratings.dat").is_file() and (path / "movies.dat").is_file():
            frame, catalog, untitled_placeholders = _read_movielens_dat(path)
            noun = "movies"
        elif (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
            frame, catalog, untitled_placeholders = _read_movielens_csv(path)
            noun = "movies"
        elif amazon is not None:
            frame, catalog, user_keys, item_keys, extra = _read_amazon(*amazon)
            noun = _AMAZON_NOUNS.get(_amazon_category(amazon[0]), "products")
            name = _amazon_category(amazon[0])
        else:
            raise ValueError(
                f"{path} holds none of the supported layouts: u.data + u.item, ratings.dat + movies.dat, "
                "ratings.csv + movies.csv, NAME.inter + NAME.item, CATEGORY_5.json[.gz] + meta_CATEGORY.json[.gz]; "
                f"it has {sorted(p.name for p in path.iterdir())[:20]}"
            )
    elif ".json" in path.suffixes or ".jsonl" in path.suffixes:
        meta = Path(items) if items is not None else _amazon_meta_beside(path)
        if not meta.is_file():
            raise FileNotFoundError(f"Amazon metadata file {meta} does not exist")
        frame, catalog, user_keys, item_keys, extra = _read_amazon(path, meta)
        noun = _AMAZON_NOUNS.get(_amazon_category(path), "products")
        name = _amazon_category(path)
    else:
        if items is None:
            raise ValueError(
                f"{path} is read as an interactions CSV/TSV, which needs items= the items file (item, title)"
            )
        if not Path(items).is_file():
            raise FileNotFoundError(f"items file {items} does not exist")
        frame, catalog, user_keys, item_keys = _read_csv_pair(path, Path(items), csv_format or CsvFormat())
    if move_articles:
        catalog = {item: move_trailing_article(title) for item, title in catalog.items()}
    return InteractionData.from_frame(
        frame,
        catalog,
        name=name,
        item_noun=item_noun or noun,
        min_user_interactions=min_user_interactions,
        keep_items_without_interactions=keep_items_without_interactions,
        source=str(path),
        extra={"placeholder_titles": untitled_placeholders, **extra},
        original_user_ids=user_keys,
        original_item_ids=item_keys,
    )


# ---------------------------------------------------------------------------------------------------------
# Splits and samples.


@dataclass
class SplitConfig:
    """How interactions become training, validation and test samples.

    Args:
        max_history (`int`, defaults to 10): At most this many previous titles in a sample's history.
        train_samples (`int`, *optional*): Draw this many training samples (BIGRec trains on 1,024);
            ``None`` keeps all sliding windows.
        eval_samples (`int`, *optional*): Draw this many validation and this many test samples; ``None``
            keeps all (one per user under leave-one-out).
        seed (`int`, defaults to 0): Seed of those draws.
        protocol (`str`, defaults to `"leave_one_out"`): ``"leave_one_out"`` (per user: last interaction
            test, second-last validation, the rest training; SASRec, RecBole) or ``"global_time"``
            (BIGRec: all samples ordered by target time, split by ``time_fractions``).
        time_fractions (`tuple`, defaults to `(0.8, 0.1, 0.1)`): Train/validation/test shares for
            ``"global_time"``.
        template (`str`, defaults to `"alpaca"`): Prompt template, see :func:`constrained_rec.prompts.build_prompt`.
    """

    max_history: int = 10
    train_samples: int | None = None
    eval_samples: int | None = None
    seed: int = 0
    protocol: str = "leave_one_out"
    time_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    template: str = "alpaca"

    def __post_init__(self):
        if not isinstance(self.max_history, int) or self.max_history < 1:
            raise ValueError(f"max_history must be an integer >= 1, got {self.max_history!r}")
        for name in ("train_samples", "eval_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None (keep all) or an integer >= 1, got {value!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown split protocol {self.protocol!r}; accepted: {list(PROTOCOLS)}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown prompt template {self.template!r}; accepted: {list(TEMPLATES)}")
        fractions = tuple(self.time_fractions)
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"time_fractions must be three positive shares summing to 1, got {self.time_fractions!r}")


def _user_bounds(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) row of each user's block in interactions sorted by user."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return starts, ends


def split_positions(data: InteractionData, config: SplitConfig) -> dict[str, np.ndarray]:
    """Row numbers (into ``data.interactions``) of each split's targets, before any sampling.

    A sample's history is the up to ``max_history`` rows of the same user just before its target.
    """
    users = data.interactions["user_id"].to_numpy()
    starts, ends = _user_bounds(users)
    if config.protocol == "leave_one_out":
        lengths = ends - starts
        if (lengths < 3).any():
            short = int((lengths < 3).sum())
            raise ValueError(
                f"leave-one-out needs 3 interactions per user; {short} users of {data.name} have fewer "
                f"(e.g. user {int(users[starts[np.argmax(lengths < 3)]])}); load with min_user_interactions=3"
            )
        # Training targets: every row of a user but the first (no history) and the last two.
        owner_start = np.repeat(starts, lengths)
        owner_end = np.repeat(ends, lengths)
        rows = np.arange(len(users))
        train = rows[(rows > owner_start) & (rows < owner_end - 2)]
        return {"train": train, "validation": ends - 2, "test": ends - 1}
    # global_time: every row with at least one earlier row of its user, ordered by target time.
    has_history = np.ones(len(users), dtype=bool)
    has_history[starts] = False
    rows = np.flatnonzero(has_history)
    times = data.interactions["timestamp"].to_numpy()[rows]
    rows = rows[np.lexsort((rows, times))]
    train_share, validation_share, _ = config.time_fractions
    cut_train = int(len(rows) * train_share)
    cut_validation = int(len(rows) * (train_share + validation_share))
    return {"train": rows[:cut_train], "validation": rows[cut_train:cut_validation], "test": rows[cut_validation:]}


def _draw(rows: np.ndarray, count: int | None, seed: int, split: str) -> np.ndarray:
    if count is None:
        return rows
    if count > len(rows):
        raise ValueError(
            f"asked for {count} {split} samples but the {split} split has only {len(rows)}; ask for at most "
            f"{len(rows)} or None to keep all"
        )
    # One stream per split, so changing eval_samples never changes which training samples are drawn.
    rng = np.random.default_rng([seed, ("train", "validation", "test").index(split)])
    return np.sort(rng.choice(rows, size=count, replace=False))


def _features():
    import datasets

    sequence = getattr(datasets, "List", datasets.Sequence)
    return datasets.Features(
        {
            "user_id": datasets.Value("int64"),
            "history_item_ids": sequence(datasets.Value("int64")),
            "history_titles": sequence(datasets.Value("string")),
            "target_item_id": datasets.Value("int64"),
            "target_title": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "response": datasets.Value("string"),
        }
    )


def _fingerprint(data: InteractionData, config: SplitConfig, tokenizer, split: str, rows: np.ndarray) -> str:
    """A content hash of a split (what ``datasets`` keys its caches on), from its inputs, not its rows."""
    digest = hashlib.sha256()
    for array in (data.interactions[c].to_numpy() for c in COLUMNS):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(sorted(data.titles.items()), ensure_ascii=False).encode())
    digest.update(repr((data.item_noun, dataclasses.asdict(config), split)).encode())
    digest.update(np.ascontiguousarray(rows).tobytes())
    if tokenizer is not None and config.template == "chat":
        digest.update(repr((tokenizer.name_or_path, tokenizer.chat_template)).encode())
    return digest.hexdigest()[:16]


def make_splits(data: InteractionData, config: SplitConfig | None = None, tokenizer=None):
    """Training, validation and test samples as a ``datasets.DatasetDict``.

    Each row is one sample: ``user_id``, ``history_item_ids`` / ``history_titles`` (up to
    ``config.max_history`` items just before the target, oldest first), ``target_item_id``,
    ``target_title``, ``prompt`` (:func:`constrained_rec.prompts.build_prompt`) and ``response``
    (:func:`constrained_rec.tokenization.response_text` of the target title). Training samples are sliding
    windows over each user's training interactions; no history ever contains its target's interaction or
    anything later.

    Args:
        data ([`InteractionData`]): From :func:`load_interactions`.
        config ([`SplitConfig`], *optional*): Protocol, history length, sampling, template.
        tokenizer (*optional*): Needed for ``template="chat"`` only.

    Example:

    ```python
    >>> from constrained_rec.data import SplitConfig, load_interactions, make_splits
    >>> splits = make_splits(load_interactions("ml-100k"), SplitConfig(train_samples=1024, seed=0))
    >>> {name: len(split) for name, split in splits.items()}
    {'train': 1024, 'validation': 943, 'test': 943}
    >>> splits["test"][0]["response"] == '"' + splits["test"][0]["target_title"] + '"'
    True

    ```
    """
    import datasets
    import pyarrow as pa

    config = config or SplitConfig()
    if config.template == "chat" and tokenizer is None:
        raise ValueError("template 'chat' renders prompts with the tokenizer's chat template; pass tokenizer=")
    frame = data.interactions
    users = frame["user_id"].tolist()
    items = frame["item_id"].tolist()
    titles = [data.titles[item] for item in items]
    starts, ends = _user_bounds(frame["user_id"].to_numpy())
    user_start = np.repeat(starts, ends - starts).tolist()
    positions = split_positions(data, config)
    features = _features()
    splits = {}
    for split, rows in positions.items():
        count = config.train_samples if split == "train" else config.eval_samples
        rows = _draw(rows, count, config.seed, split)
        columns = {name: [] for name in features}
        for row in rows.tolist():
            first = max(user_start[row], row - config.max_history)
            columns["user_id"].append(users[row])
            columns["history_item_ids"].append(items[first:row])
            columns["history_titles"].append(titles[first:row])
            columns["target_item_id"].append(items[row])
            columns["target_title"].append(titles[row])
            columns["prompt"].append(build_prompt(titles[first:row], data.item_noun, config.template, tokenizer))
            columns["response"].append(response_text(titles[row]))
        # Straight to Arrow: Dataset.from_dict would re-encode and re-hash every row, 3x slower.
        table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
        splits[split] = datasets.Dataset(table, fingerprint=_fingerprint(data, config, tokenizer, split, rows))
    return datasets.DatasetDict(splits)


# ---------------------------------------------------------------------------------------------------------
# Command line.


def _print_stats(stats: dict, indent: str = "") -> None:
    for key, value in stats.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_stats(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key}: {value:.6g}")
        else:
            print(f"{indent}{key}: {value}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m constrained_rec.data", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["stats", "preview"])
    parser.add_argument("dataset", help="a data set name (ml-100k, ml-latest-small, ...) or path")
    parser.add_argument("--items", help="items / metadata file of a CSV or Amazon source")
    parser.add_argument("--data-dir", help=f"folder of GroupLens data sets (default ${DATA_ENV_VAR})")
    parser.add_argument("--move-articles", action="store_true", help='"Matrix, The" -> "The Matrix"')
    parser.add_argument("--no-tokenizer", action="store_true", help="stats: skip title lengths in tokens")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="leave_one_out")
    parser.add_argument("--template", choices=TEMPLATES, default="alpaca")
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_interactions(args.dataset, items=args.items, data_dir=args.data_dir, move_articles=args.move_articles)
    tokenizer = None
    if (args.command == "stats" and not args.no_tokenizer) or args.template == "chat":
        from constrained_rec.model import load_tokenizer

        tokenizer = load_tokenizer()
    if args.command == "stats":
        _print_stats(data.stats(tokenizer))
        return
    config = SplitConfig(
        max_history=args.max_history, eval_samples=1, train_samples=1, seed=args.seed,
        protocol=args.protocol, template=args.template,
    )
    for split, dataset in make_splits(data, config, tokenizer).items():
        sample = dataset[0]
        print(f"===== {split} sample (user {sample['user_id']}, target item {sample['target_item_id']}) =====")
        print(sample["prompt"] + sample["response"])
        print()


if __name__ == "__main__":
    main()
