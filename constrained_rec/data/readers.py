"""File readers, one per layout: each returns ``(interactions frame, catalog, ...)`` for ``load_interactions``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from constrained_rec.data.amazon import (
    AMAZON_NOUNS,
    amazon_category,
    amazon_meta_beside,
    amazon_pair_in,
    read_amazon,
)
from constrained_rec.data.given import GivenSplits, category_of, is_given_layout, read_given
from constrained_rec.data.tables import (
    encode_ids,
    integer_column,
    interaction_frame,
    read_table,
    timestamp_column,
    title_catalog,
    titles_column,
)

# ml-100k names its one untitled item (267) "unknown"; RecBole's copy spells it "unkonwn".
_PLACEHOLDER_TITLES = {"unknown", "unkonwn"}


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



def _decode_dat(path: Path) -> str:
    # GroupLens wrote ml-1m's movies.dat in Latin-1 and ml-10m's in UTF-8: accept both.
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_recbole(folder: Path, stem: str) -> RawData:
    """RecBole atomic files ``stem.inter`` + ``stem.item`` (typed headers such as ``item_id:token``).

    The noun follows the data set: "movies" where the item file has MovieLens's ``movie_title`` column,
    Amazon's for ``Amazon_CATEGORY`` stems, "items" for any other data set.
    """

    def read(path: Path, required: list[str], optional: list[str] = ()) -> pd.DataFrame:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\n").split("\t")
        typed = {column.split(":")[0]: column for column in header}
        for name in required:
            if name not in typed:
                raise ValueError(f"{path}, line 1: no column {name!r}; the header has {header}")
        names = [n for n in [*required, *optional] if n in typed]
        columns = [typed[n] for n in names]
        frame = read_table(path, columns, sep="\t", string_columns=tuple(c for c in columns if "token_seq" in c))
        return frame.rename(columns=dict(zip(columns, names)))

    inter_path, item_path = folder / f"{stem}.inter", folder / f"{stem}.item"
    inter = read(inter_path, ["user_id", "item_id", "timestamp"])
    frame = interaction_frame(
        integer_column(inter["user_id"], "user id", inter_path, 2),
        integer_column(inter["item_id"], "item id", inter_path, 2),
        timestamp_column(inter["timestamp"], inter_path, 2),
    )
    # RecBole's MovieLens files keep the year apart (movie_title, release_year); other sets use `title`.
    items = read(item_path, ["item_id"], ["movie_title", "title", "release_year"])
    title_column = "movie_title" if "movie_title" in items else "title"
    if title_column not in items:
        raise ValueError(f"{item_path}, line 1: no column 'movie_title' or 'title'")
    item_ids = integer_column(items["item_id"], "item id", item_path, 2)
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
    if title_column == "movie_title":
        noun = "movies"
    elif stem.startswith("Amazon_"):
        noun = AMAZON_NOUNS.get(stem.removeprefix("Amazon_"), "products")
    else:
        noun = "items"
    return RawData(frame, catalog, noun, extra={"placeholder_titles": placeholders})


def _read_ml100k_raw(folder: Path) -> tuple[pd.DataFrame, dict[int, str], int]:
    """GroupLens ml-100k: ``u.data`` (tab-separated, no header) and ``u.item`` (``|``-separated, Latin-1)."""
    data_path, item_path = folder / "u.data", folder / "u.item"
    data = read_table(data_path, [0, 1, 3], sep="\t", header=False, fields=4)
    frame = interaction_frame(
        integer_column(data[0], "user id", data_path, 1),
        integer_column(data[1], "item id", data_path, 1),
        integer_column(data[3], "timestamp", data_path, 1),
    )
    items = read_table(item_path, [0, 1], sep="|", header=False, encoding="latin-1", string_columns=(1,))
    item_ids = integer_column(items[0], "item id", item_path, 1)
    titles = items[1].astype(str).str.strip()
    placeholder = titles.str.lower().isin(_PLACEHOLDER_TITLES).to_numpy()
    catalog = title_catalog(item_ids[~placeholder], titles_column(titles[~placeholder], item_path, 1), item_path, 1)
    return frame, catalog, int(placeholder.sum())


def _read_movielens_dat(folder: Path) -> tuple[pd.DataFrame, dict[int, str], int]:
    """GroupLens ml-1m / ml-10m: ``ratings.dat`` and ``movies.dat``, fields separated by ``::``."""
    ratings_path, movies_path = folder / "ratings.dat", folder / "movies.dat"
    # pandas' fast parser takes one-character separators only; \x1f (unit separator) never occurs in text.
    ratings = read_table(
        ratings_path, [0, 1, 3], sep="\x1f", header=False, text=_decode_dat(ratings_path).replace("::", "\x1f"),
        fields=4,
    )
    frame = interaction_frame(
        integer_column(ratings[0], "user id", ratings_path, 1),
        integer_column(ratings[1], "item id", ratings_path, 1),
        integer_column(ratings[3], "timestamp", ratings_path, 1),
    )
    movies = read_table(
        movies_path, [0, 1], sep="\x1f", header=False, text=_decode_dat(movies_path).replace("::", "\x1f"),
        string_columns=(1,), fields=3,
    )
    item_ids = integer_column(movies[0], "item id", movies_path, 1)
    return frame, title_catalog(item_ids, titles_column(movies[1], movies_path, 1), movies_path, 1), 0


def _read_movielens_csv(folder: Path) -> tuple[pd.DataFrame, dict[int, str], int]:
    """GroupLens ml-latest-small / ml-20m / ml-25m / ml-32m: ``ratings.csv`` and ``movies.csv`` (UTF-8)."""
    ratings_path, movies_path = folder / "ratings.csv", folder / "movies.csv"
    ratings = read_table(ratings_path, ["userId", "movieId", "timestamp"])
    frame = interaction_frame(
        integer_column(ratings["userId"], "user id", ratings_path, 2),
        integer_column(ratings["movieId"], "item id", ratings_path, 2),
        integer_column(ratings["timestamp"], "timestamp", ratings_path, 2),
    )
    movies = read_table(movies_path, ["movieId", "title"], string_columns=("title",))
    item_ids = integer_column(movies["movieId"], "item id", movies_path, 2)
    return frame, title_catalog(item_ids, titles_column(movies["title"], movies_path, 2), movies_path, 2), 0


def _read_csv_pair(path: Path, items_path: Path, fmt: CsvFormat):
    def sep_for(p: Path) -> str:
        if fmt.delimiter is not None:
            return fmt.delimiter
        return "\t" if ".tsv" in p.suffixes else ","

    item_column = fmt.items_item or fmt.item
    inter = read_table(
        path, [fmt.user, fmt.item, fmt.timestamp], sep=sep_for(path), string_columns=(fmt.user, fmt.item)
    )
    items = read_table(
        items_path, [item_column, fmt.title], sep=sep_for(items_path), string_columns=(item_column, fmt.title)
    )
    for frame, p, columns in ((inter, path, (fmt.user, fmt.item)), (items, items_path, (item_column,))):
        for column in columns:
            empty = (frame[column].astype(str).str.strip() == "").to_numpy()
            if empty.any():
                raise ValueError(f"{p}, line {int(np.flatnonzero(empty)[0]) + 2}: empty {column!r}")
    timestamps = timestamp_column(inter[fmt.timestamp], path, 2)
    titles = titles_column(items[fmt.title], items_path, 2)
    (users,), user_keys = encode_ids(inter[fmt.user].str.strip().to_numpy())
    (inter_items, item_items), item_keys = encode_ids(
        inter[fmt.item].str.strip().to_numpy(), items[item_column].str.strip().to_numpy()
    )
    catalog = title_catalog(item_items, titles, items_path, 2)
    return interaction_frame(users, inter_items, timestamps), catalog, user_keys, item_keys



@dataclass
class RawData:
    """What a reader found, before filtering: :meth:`InteractionData.from_frame` takes it from here."""

    frame: pd.DataFrame
    catalog: dict[int, str]
    noun: str = "items"
    name: str | None = None
    user_keys: dict[int, str] | None = None
    item_keys: dict[int, str] | None = None
    extra: dict[str, int] = field(default_factory=dict)
    given: GivenSplits | None = None
    files: tuple[Path, ...] = ()  # every file read: what a run folder fingerprints


LAYOUTS = (
    "info/*.txt + train|valid|test/*.csv (D3 / MiniOneRec), NAME.inter + NAME.item (RecBole), u.data + u.item, "
    "ratings.dat + movies.dat, ratings.csv + movies.csv (GroupLens), CATEGORY_5.json[.gz] + meta_CATEGORY.json[.gz] "
    "(Amazon)"
)


def read_folder(path: Path) -> RawData:
    """The reader for the layout of the folder ``path``; an error listing the layouts when none fits."""
    inter_files = sorted(path.glob("*.inter"))
    if is_given_layout(path):
        frame, catalog, user_keys, given = read_given(path)
        category = category_of(given.item_file)
        return RawData(frame, catalog, AMAZON_NOUNS.get(category, "products"), user_keys=user_keys, given=given,
                       files=(given.item_file, *given.files.values()))
    if inter_files and (path / f"{inter_files[0].stem}.item").is_file():
        stem = inter_files[0].stem
        return replace(_read_recbole(path, stem), files=(path / f"{stem}.inter", path / f"{stem}.item"))
    for data_file, item_file, read in (("u.data", "u.item", _read_ml100k_raw),
                                       ("ratings.dat", "movies.dat", _read_movielens_dat),
                                       ("ratings.csv", "movies.csv", _read_movielens_csv)):
        if (path / data_file).is_file() and (path / item_file).is_file():
            return replace(_movies(*read(path)), files=(path / data_file, path / item_file))
    amazon = amazon_pair_in(path)
    if amazon is not None:
        return _amazon(*amazon)
    raise ValueError(
        f"{path} holds none of the supported layouts: {LAYOUTS}; it has {sorted(p.name for p in path.iterdir())[:20]}"
    )


def read_file(path: Path, items: Path | None, fmt: CsvFormat) -> RawData:
    """An Amazon reviews file (metadata ``items`` or beside it) or an interactions CSV/TSV with its items file."""
    if ".json" in path.suffixes or ".jsonl" in path.suffixes:
        meta = items if items is not None else amazon_meta_beside(path)
        if not meta.is_file():
            raise FileNotFoundError(f"Amazon metadata file {meta} does not exist")
        return _amazon(path, meta)
    if items is None:
        raise ValueError(
            f"{path} is read as an interactions CSV/TSV, which needs items= the items file (item, title); "
            f"on the command line: --items FILE. A folder is read when it holds one of: {LAYOUTS}"
        )
    if not items.is_file():
        raise FileNotFoundError(f"items file {items} does not exist")
    frame, catalog, user_keys, item_keys = _read_csv_pair(path, items, fmt)
    return RawData(frame, catalog, user_keys=user_keys, item_keys=item_keys, files=(path, items))


def _movies(frame: pd.DataFrame, catalog: dict[int, str], placeholders: int) -> RawData:
    return RawData(frame, catalog, "movies", extra={"placeholder_titles": placeholders})


def _amazon(reviews: Path, meta: Path) -> RawData:
    frame, catalog, user_keys, item_keys, extra = read_amazon(reviews, meta)
    category = amazon_category(reviews)
    return RawData(frame, catalog, AMAZON_NOUNS.get(category, "products"), category, user_keys, item_keys, extra,
                   files=(reviews, meta))
