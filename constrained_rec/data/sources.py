"""Finding a data set: by name (the RecBole wheel, $CONSTRAINED_REC_DATA, the cache, an opt-in download) or by
path, and the public loader ``load_interactions`` that picks the reader for its layout."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from constrained_rec.data.interactions import InteractionData, move_trailing_article
from constrained_rec.data.readers import CsvFormat, RawData, read_file, read_folder
from constrained_rec.hf import cache_dir as library_cache_dir
from constrained_rec.prompts import ITEM_NOUNS
from constrained_rec.validation import check_int

logger = logging.getLogger("constrained_rec.data")

DATA_ENV_VAR = "CONSTRAINED_REC_DATA"
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


def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return library_cache_dir() / "data"


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



def load_interactions(
    source: str | os.PathLike = "ml-100k",
    *,
    items: str | os.PathLike | None = None,
    csv_format: CsvFormat | None = None,
    user_column: str | None = None,
    item_column: str | None = None,
    time_column: str | None = None,
    title_column: str | None = None,
    items_item_column: str | None = None,
    sep: str | None = None,
    item_noun: str | None = None,
    min_user_interactions: int | None = None,
    move_articles: bool = False,
    keep_items_without_interactions: bool | None = None,
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
        user_column, item_column, time_column, title_column, items_item_column, sep (`str`, *optional*):
            The same as plain strings (what a command line passes), instead of ``csv_format``: the
            interactions file's user, item and time columns, the items file's title and item columns
            (``items_item_column`` defaults to ``item_column``), and the field separator.
        item_noun (`str`, *optional*):
            Plural noun for prompts; by default "movies" for MovieLens, from the category for Amazon,
            "items" otherwise. One of :data:`constrained_rec.prompts.ITEM_NOUNS`.
        min_user_interactions (`int`, *optional*, defaults to 3):
            Users with fewer interactions (after the other filters) are dropped; 3 is the least that
            leave-one-out needs (one to train on, one to validate, one to test). Not for layouts with
            their own split (D3 / MiniOneRec), which are kept exactly.
        move_articles (`bool`, defaults to `False`):
            Rewrite "Shawshank Redemption, The (1994)" as "The Shawshank Redemption (1994)".
        keep_items_without_interactions (`bool`, *optional*, defaults to `False`):
            Keep catalog items that no remaining user interacted with (by default they are dropped, counted).
            Layouts with their own split keep their whole item file (it is the catalog they are evaluated on).
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
    fmt = _csv_format(csv_format, user_column, item_column, time_column, title_column, items_item_column, sep)
    if item_noun is not None and item_noun not in ITEM_NOUNS:
        raise ValueError(f"unknown item noun {item_noun!r}; accepted: {sorted(ITEM_NOUNS)}")
    path = _source_path(source, data_dir, download, cache_dir)
    raw = read_folder(path) if path.is_dir() else read_file(path, Path(items) if items is not None else None, fmt)
    min_user_interactions, keep_items_without_interactions = _filter_options(
        raw, path, min_user_interactions, keep_items_without_interactions)
    catalog = raw.catalog
    if move_articles:
        catalog = {item: move_trailing_article(title) for item, title in catalog.items()}
    default_name = str(source) if str(source) in GROUPLENS_FOLDERS else path.name.split(".")[0] if path.is_file() else path.name
    data = InteractionData.from_frame(
        raw.frame,
        catalog,
        name=raw.name or default_name,
        item_noun=item_noun or raw.noun,
        min_user_interactions=min_user_interactions,
        keep_items_without_interactions=keep_items_without_interactions,
        source=str(path),
        extra={"placeholder_titles": 0, **raw.extra},
        original_user_ids=raw.user_keys,
        original_item_ids=raw.item_keys,
        given=raw.given,
    )
    data.files = tuple(raw.files)
    return data


def file_fingerprints(files, root: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{name: {"bytes": size, "sha256": hash of the content}}`` of each file; ``name`` is the path relative to
    ``root`` where the file lies under it (a data set's folder, wherever it is installed), else the full path.

    Example:

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "u.data").write_text("1 2 5")
    >>> file_fingerprints([folder / "u.data"], root=folder)["u.data"]["bytes"]
    5

    ```
    """
    out = {}
    for path in map(Path, files):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        name = str(path)
        if root is not None and Path(root).is_dir() and path.resolve().is_relative_to(Path(root).resolve()):
            name = str(path.resolve().relative_to(Path(root).resolve()))
        out[name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return out


def _filter_options(raw: RawData, path: Path, min_user_interactions, keep_items) -> tuple[int, bool]:
    if raw.given is not None:
        # The layout's rows are its split: filtering users or items would change which samples exist.
        for option, value in (("min_user_interactions", min_user_interactions),
                              ("keep_items_without_interactions", keep_items)):
            if value is not None:
                raise ValueError(f"{path} comes with its own split (D3/MiniOneRec layout), kept exactly: "
                                 f"{option} does not apply to it; leave it unset")
        return 1, True
    if min_user_interactions is None:
        min_user_interactions = 3
    check_int(min_user_interactions, "min_user_interactions", least=1)
    return min_user_interactions, bool(keep_items)


def _source_path(source, data_dir, download: bool, cache_dir) -> Path:
    if str(source) in GROUPLENS_FOLDERS:
        return _find_named(str(source), data_dir, download, cache_dir)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"{source!r} is neither a known data set name ({sorted(GROUPLENS_FOLDERS)}) nor an existing path"
        )
    return path


def _csv_format(csv_format: CsvFormat | None, user, item, time, title, items_item, sep) -> CsvFormat:
    """The generic CSV's columns from ``csv_format`` or from the plain-string options (the command line's)."""
    options = {"user": user, "item": item, "timestamp": time, "title": title, "items_item": items_item,
               "delimiter": sep}
    given = {name: value for name, value in options.items() if value is not None}
    if csv_format is not None and given:
        raise ValueError(f"pass either csv_format= or the column options {sorted(given)}, not both")
    for name, value in given.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"the {name} column option must be a non-empty string, got {value!r}")
    return csv_format or CsvFormat(**given)
