"""`TitleIndex`: title text -> item ids (exact match) and item id -> title, in a marisa-trie.

A `TitleTrie` built from titles carries one (``trie.titles``); grounding builds its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import marisa_trie
import numpy as np

from constrained_rec.trie import build as trie_build
from constrained_rec.trie import io as trie_io


class TitleIndex:
    """Title text -> item ids (exact match), and item id -> title, in a marisa-trie.

    The marisa trie stores each distinct title once; ``key_item_offsets`` and ``key_item_ids`` map its
    key ids to item ids, and ``item_key`` maps (sorted) item ids back to key ids.
    """

    _ARRAYS = ("key_item_offsets", "key_item_ids", "sorted_item_ids", "item_key")
    FILES = ("titles.marisa",) + tuple(f"titles_{name}.npy" for name in _ARRAYS)

    def __init__(self, keys: marisa_trie.Trie, key_item_offsets: np.ndarray, key_item_ids: np.ndarray,
                 sorted_item_ids: np.ndarray, item_key: np.ndarray):
        self.keys = keys
        self.key_item_offsets = key_item_offsets
        self.key_item_ids = key_item_ids
        self.sorted_item_ids = sorted_item_ids
        self.item_key = item_key

    @classmethod
    def build(cls, titles: Sequence[str], item_ids: Sequence[int]) -> "TitleIndex":
        stored = [_escape_title(t, i) for i, t in enumerate(titles)]
        keys = marisa_trie.Trie(stored)
        key_of_item = np.fromiter((keys[t] for t in stored), dtype=np.int64, count=len(stored))
        ids = np.asarray(item_ids, dtype=np.int64)
        by_key = np.argsort(key_of_item, kind="stable")
        key_item_offsets = np.searchsorted(key_of_item[by_key], np.arange(len(keys) + 1))
        id_order = np.argsort(ids, kind="stable")
        return cls(keys, key_item_offsets, ids[by_key], ids[id_order], key_of_item[id_order])

    def items_for_title(self, title: str) -> list[int]:
        """Item ids whose title is exactly ``title``; ``[]`` if none."""
        if not isinstance(title, str):
            raise ValueError(f"a title is a str, got {title!r}")
        key = self.keys.get(_escape_title(title)) if _valid_utf8(title) else None
        if key is None:
            return []
        return self.key_item_ids[self.key_item_offsets[key] : self.key_item_offsets[key + 1]].tolist()

    def title(self, item_id: int) -> str:
        """The title of ``item_id``; a KeyError naming it if it is not in the catalog."""
        (item_id,) = trie_build.query_item_ids([item_id])
        where = int(np.searchsorted(self.sorted_item_ids, item_id))
        if where == len(self.sorted_item_ids) or self.sorted_item_ids[where] != item_id:
            raise KeyError(f"item {item_id} is not in the catalog")
        return _unescape_title(self.keys.restore_key(int(self.item_key[where])))

    def save(self, folder: Path) -> None:
        self.keys.save(str(folder / "titles.marisa"))
        for name in self._ARRAYS:
            np.save(folder / f"titles_{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path, item_ids: np.ndarray | None = None) -> "TitleIndex":
        """Opens the index :meth:`save` wrote; with ``item_ids`` (the trie's), checks it indexes exactly them."""
        keys = trie_io.open_marisa(folder / "titles.marisa")
        arrays = {name: trie_io.read_array(folder / f"titles_{name}.npy") for name in cls._ARRAYS}
        if item_ids is not None:
            trie_io.check_title_index(folder, keys, arrays, item_ids)
        return cls(keys, *(arrays[name] for name in cls._ARRAYS))


# marisa-trie keys end at NUL, so titles are stored escaped: \x01 -> \x01\x01, NUL -> \x01\x02 (a
# no-op for every title without these two control characters).
_ESCAPES = {"\x01": "\x01\x01", "\x00": "\x01\x02"}
_UNESCAPE = re.compile("\x01(.)", re.DOTALL)


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escape_title(title: str, index: int | None = None) -> str:
    if index is not None and not _valid_utf8(title):
        raise ValueError(f"title {index} {title!r} holds a lone surrogate and is not valid Unicode text")
    if "\x00" not in title and "\x01" not in title:
        return title
    return "".join(_ESCAPES.get(c, c) for c in title)


def _unescape_title(key: str) -> str:
    if "\x01" not in key:
        return key
    return _UNESCAPE.sub(lambda m: "\x01" if m.group(1) == "\x01" else "\x00", key)
