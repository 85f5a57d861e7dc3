"""Amazon reviews (2014 / 2018): a reviews file of JSON lines and its metadata file."""

from __future__ import annotations

import ast
import html
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from constrained_rec.data.tables import encode_ids, interaction_frame, open_binary

# Amazon 2018 category file stem -> the item noun of the prompt; other categories get "products".
AMAZON_NOUNS = {
    "Video_Games": "video games",
    "Movies_and_TV": "movies",
    "Books": "books",
    "Kindle_Store": "books",
    "Toys_and_Games": "toys",
    "CDs_and_Vinyl": "albums",
    "Digital_Music": "songs",
}


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; Amazon 2014 metadata lines are Python literals."""
    with open_binary(path) as handle:
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


def amazon_category(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".json", ".jsonl"):
        name = name.removesuffix(suffix)
    name = name.removeprefix("reviews_").removeprefix("meta_")
    return name.removesuffix("_5")


def amazon_meta_beside(reviews: Path) -> Path:
    category = amazon_category(reviews)
    candidates = [reviews.parent / f"meta_{category}{ext}" for ext in (".json.gz", ".json", ".jsonl.gz", ".jsonl")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no metadata for the Amazon reviews {reviews}: looked for {[c.name for c in candidates]} beside it; "
        "pass items='path/to/meta_CATEGORY.json.gz'"
    )


def read_amazon(reviews_path: Path, meta_path: Path):
    users, items, times = [], [], []
    for number, record in _json_lines(reviews_path):
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if key not in record:
                raise ValueError(f"{reviews_path}, line {number}: the review has no {key!r} field")
        time = record["unixReviewTime"]
        try:  # int() alone would truncate 1.5 and take True for 1
            if isinstance(time, bool) or (isinstance(time, float) and not time.is_integer()):
                raise ValueError
            time = int(time)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{reviews_path}, line {number}: unixReviewTime {time!r} is not an integer") from None
        if not -(2**63) <= time < 2**63:  # it would wrap around in the int64 column
            raise ValueError(f"{reviews_path}, line {number}: unixReviewTime {record['unixReviewTime']!r} is outside "
                             "the 64-bit integer range (-2**63 to 2**63 - 1)")
        times.append(time)
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
    (user_codes,), user_keys = encode_ids(np.asarray(users))
    item_keys_sorted = sorted(set(items))
    item_index = {asin: i for i, asin in enumerate(item_keys_sorted)}
    item_codes = np.fromiter((item_index[a] for a in items), dtype=np.int64, count=len(items))
    catalog = {i: meta[a] for a, i in item_index.items() if meta.get(a)}
    extra = {"amazon_meta_duplicate_rows": duplicate_rows, "amazon_meta_empty_titles": empty_titles}
    item_keys = dict(enumerate(item_keys_sorted))
    return interaction_frame(user_codes, item_codes, times), catalog, user_keys, item_keys, extra


def amazon_pair_in(folder: Path) -> tuple[Path, Path] | None:
    metas = [p for p in folder.iterdir() if p.name.startswith("meta_") and ".json" in p.name]
    reviews = [p for p in folder.iterdir() if not p.name.startswith("meta_") and ".json" in p.name]
    if not metas or not reviews:
        return None
    if len(reviews) != 1:
        raise ValueError(
            f"{folder} holds several Amazon review files {sorted(p.name for p in reviews)}; pass the one to load "
            "as the source and its metadata as items="
        )
    return reviews[0], amazon_meta_beside(reviews[0])

