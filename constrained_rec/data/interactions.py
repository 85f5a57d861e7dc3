"""InteractionData: one data set's interactions sorted by (user, time) and its catalog of titles."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from constrained_rec.prompts import ITEM_NOUNS
from constrained_rec.validation import check_int

if TYPE_CHECKING:
    from constrained_rec.data.given import GivenSplits

logger = logging.getLogger("constrained_rec.data")

COLUMNS = ["user_id", "item_id", "timestamp"]
_ARTICLES = "The|A|An|Les|Le|La|L'|Il|Lo|I|Gli|Das|Der|Die|Det|Den|El|Los|Las|O|Os|As|Un|Une|Ein|Eine"
_TRAILING_ARTICLE = re.compile(rf"^(?P<main>.+?), (?P<article>{_ARTICLES})(?P<rest>(?: \([^()]*\))*)$")


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
        given: The data set's own split (:class:`constrained_rec.data.given.GivenSplits`) for layouts that
            come with one (D3 / MiniOneRec CSV folders); ``None`` otherwise.
        files: Every file :func:`~constrained_rec.data.load_interactions` read (empty for a frame built in
            memory); a run folder records their fingerprint (:func:`constrained_rec.data.file_fingerprints`).
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
    given: GivenSplits | None = None
    files: tuple[Path, ...] = ()

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
        given: GivenSplits | None = None,
    ) -> "InteractionData":
        """Filter (counting what goes), sort and wrap interactions already in memory; the loaders end here.

        Args:
            frame (`pandas.DataFrame`): Integer columns ``user_id``, ``item_id``, ``timestamp``, any order.
            titles (`dict[int, str]`): item id -> title; interactions with other items are dropped (counted).
            extra (`dict[str, int]`, *optional*): Counts a loader dropped before, merged into ``dropped``.
            given ([`GivenSplits`], *optional*): The layout's own split; its ``row`` columns must index the
                sorted frame, so loaders that pass it drop nothing (``min_user_interactions=1``, all items kept).
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
        check_int(min_user_interactions, "min_user_interactions", least=1)
        blank = [item for item, title in titles.items() if not isinstance(title, str) or not title.strip()]
        if blank:
            raise ValueError(f"titles must be non-empty strings; item {blank[0]} has {titles[blank[0]]!r}")
        raw_counts = {
            "users": int(frame["user_id"].nunique()),
            "items": int(frame["item_id"].nunique()),
            "interactions": len(frame),
            "catalog_titles": len(titles),
        }
        frame, catalog, dropped = _filtered(frame, titles, min_user_interactions, keep_items_without_interactions)
        dropped.update({k: int(v) for k, v in (extra or {}).items()})
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
            given=given,
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
        :func:`constrained_rec.trie.tokenization.titles_token_ids`) when one is given.

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
            # A layout with its own split holds no times: its timestamps are positions in its time order.
            "first_time": _iso_date(frame["timestamp"].min()) if len(frame) and self.given is None else None,
            "last_time": _iso_date(frame["timestamp"].max()) if len(frame) and self.given is None else None,
            "dropped": dict(self.dropped),
            "raw": dict(self.raw_counts),
        }
        if self.given is not None:
            stats["given_split"] = {
                **{split: len(table) for split, table in self.given.samples.items()},
                "missing": ", ".join(self.given.missing) or "none",
            }
        if tokenizer is not None:
            from constrained_rec.trie.tokenization import titles_token_ids

            lengths = [len(ids) for ids in titles_token_ids(tokenizer, titles)]
            stats["title_tokens"] = _distribution(lengths)
        return stats


def _filtered(frame: pd.DataFrame, catalog: dict[int, str], min_user_interactions: int, keep_unused_items: bool):
    """Drop exact duplicates, untitled interactions, too-short users and (unless kept) unused catalog items;
    ``(frame, catalog, counts by reason)``."""
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
    if not keep_unused_items:
        catalog = {item: title for item, title in catalog.items() if item in interacted}
    dropped = {
        "duplicate_interactions": int(duplicated.sum()),
        "items_without_title": untitled_items,
        "interactions_without_title": int((~titled).sum()),
        "users_below_min_interactions": short_users,
        "interactions_of_users_below_min": int(too_short.sum()),
        "catalog_items_without_interactions": 0 if keep_unused_items else len(unused),
    }
    return frame, catalog, dropped


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
    try:
        return pd.Timestamp(int(timestamp), unit="s").strftime("%Y-%m-%d")
    except (OverflowError, ValueError):  # beyond the years 1-9999 that a date can show
        return f"{int(timestamp)} s"


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



def title_hit_rank(recommended_titles: Sequence[str], target_title: str) -> int | None:
    """0-based rank of the first recommended title equal to the target's title, ``None`` when none is.

    This is how D3 and MiniOneRec count a hit (their ``calc.py``): by title, so with duplicate titles any
    item that shares the target's title is a hit, where an item-id hit needs the target item itself. Test
    samples carry both (``target_title`` and ``target_item_id``), so a report can give both, labelled.

    Example:

    ```python
    >>> from constrained_rec.data import title_hit_rank
    >>> title_hit_rank(["Glue", "Tape (2-pack)", "Tape"], "Tape")
    2
    >>> title_hit_rank(["Glue"], "Tape") is None
    True

    ```
    """
    if isinstance(recommended_titles, str):
        raise TypeError(f"recommended_titles must be a sequence of titles, got the string {recommended_titles!r}")
    for rank, title in enumerate(recommended_titles):
        if title == target_title:
            return rank
    return None
