"""Interaction data sets, their splits, and the BIGRec samples built from them.

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
* Any interactions CSV/TSV with ``items=`` an items CSV/TSV; column names in :class:`CsvFormat` or as plain
  strings (``user_column=``, ``item_column=``, ``time_column=``, ``title_column=``, ``sep=``).
* A D3 / MiniOneRec folder (``info/*.txt`` + ``train/``, ``valid/``, ``test/`` CSVs of samples) that comes
  with its own split, kept exactly (:mod:`constrained_rec.data.given`); a folder with only some of the
  splits loads what it has, and ``data.given.missing`` / ``data.given.require("train")`` say what is absent.

What filtering removes is counted in ``InteractionData.dropped`` and logged, never silent: exact duplicate
rows, interactions with items that have no title (absent from the item file, or a placeholder such as
ml-100k's item 267 "unknown", or an empty Amazon title), users below ``min_user_interactions``, and catalog
items nobody interacted with. Malformed input (a missing column, a line with the wrong number of fields, an
unparsable id or timestamp, a number beyond int64, an item row with an empty title, text that is not UTF-8 in a UTF-8 format, a
malformed list literal or an id missing from the item file) raises an error naming the file and line (and
the column where there is one).

``make_splits`` turns the interactions into ``datasets.Dataset`` splits of BIGRec samples: up to
``max_history`` previous titles -> the next title, with the prompt of :mod:`constrained_rec.prompts` in the
data set's own words (``InteractionData.item_noun``: "movies" for MovieLens, "products" or the category's
noun for Amazon, "items" otherwise). Protocols: ``leave_one_out``, ``global_time`` (D3's temporal 8:1:1),
``given`` (the layout's own rows); see :class:`SplitConfig`.

Modules: ``tables`` (delimited files, checked), ``readers`` (one reader per layout), ``amazon``, ``given``
(D3 / MiniOneRec), ``sources`` (names, cache, download, ``load_interactions``), ``interactions``
(``InteractionData``), ``splits`` (``SplitConfig``, ``make_splits``), ``__main__`` (the command line).

Command line: ``python -m constrained_rec.data stats DATASET`` and ``python -m constrained_rec.data preview
DATASET [--split leave-one-out|temporal|given]``, on every layout.
"""

from __future__ import annotations

from constrained_rec.data.given import SPLIT_FOLDERS, GivenSplits
from constrained_rec.data.interactions import COLUMNS, InteractionData, move_trailing_article, title_hit_rank
from constrained_rec.data.readers import LAYOUTS, CsvFormat
from constrained_rec.data.sources import (
    DATA_ENV_VAR,
    GROUPLENS_FOLDERS,
    GROUPLENS_URL,
    download_grouplens,
    file_fingerprints,
    load_interactions,
)
from constrained_rec.data.splits import (
    PROTOCOL_ALIASES,
    PROTOCOLS,
    SPLITS,
    SplitConfig,
    draw_samples,
    make_splits,
    split_positions,
)
from constrained_rec.hf import CACHE_ENV_VAR

__all__ = [
    "CACHE_ENV_VAR", "COLUMNS", "CsvFormat", "DATA_ENV_VAR", "GROUPLENS_FOLDERS", "GROUPLENS_URL", "GivenSplits",
    "InteractionData", "LAYOUTS", "PROTOCOLS", "PROTOCOL_ALIASES", "SPLITS", "SPLIT_FOLDERS", "SplitConfig",
    "download_grouplens", "draw_samples", "file_fingerprints", "load_interactions", "make_splits",
    "move_trailing_article", "split_positions", "title_hit_rank",
]
