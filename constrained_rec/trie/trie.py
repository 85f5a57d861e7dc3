"""`TitleTrie`: the compiled, immutable index of every catalog title's token ids.

Layout (flat numpy arrays, built once, saved and memory-mapped as ``.npy`` files):

* **Sequences.** The distinct token sequences, each ending with EOS, sorted lexicographically:
  ``seq_tokens[seq_offsets[s]:seq_offsets[s + 1]]`` is sequence ``s``. Sorting makes every trie node
  cover a contiguous range of sequences, and through them a contiguous range of items.
* **Items.** ``item_ids_by_position`` lists the catalog item ids grouped by sequence:
  sequence ``s`` belongs to positions ``seq_item_offsets[s]:seq_item_offsets[s + 1]`` (two items with the
  same title share one sequence, in increasing id order). Excluding items is then a question about
  position ranges. ``build_positions[j]`` is the position of the ``j``-th item id given to the builder,
  so per-item arrays in the caller's order map onto positions with one gather.
* **Branching nodes** (CSR). Node ``n`` stands for a prefix and covers sequences
  ``node_seq_lo[n]:node_seq_hi[n]``. Only prefixes shared by two or more sequences get children:
  ``child_offsets[n]:child_offsets[n + 1]`` are the ids of its children, whose entry tokens
  ``node_tokens[...]`` are sorted. A node covering a single sequence is a *tail*: past it, the only
  allowed continuation is the rest of that sequence, read straight from ``seq_tokens``. Catalog titles
  stop sharing prefixes after a few tokens, so most tokens live only once, in ``seq_tokens``, and the
  node arrays stay a small fraction of a plain token-per-node trie. Node 0 is the root.

The hot loops that walk these arrays live in ``constrained_rec.kernels``; the title text -> item ids
map for exact grounding is a marisa-trie (compact, memory-mapped on load). ``constrained_rec.trie.build``
compiles the arrays, ``constrained_rec.trie.io`` checks a saved folder before it is used.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import marisa_trie
import numpy as np
import torch

from constrained_rec.kernels import torch_mask, trie_walk
from constrained_rec.trie import build as trie_build
from constrained_rec.trie import io as trie_io
from constrained_rec.trie.tokenization import eos_token_id, titles_token_ids

FORMAT_VERSION = 3  # 2: build_positions; items of one sequence sorted by id. 3: digests of the title index
READABLE_VERSIONS = (2, 3)  # the arrays are the same; a format-2 title index cannot be verified
_ARRAYS = (
    "seq_tokens",
    "seq_offsets",
    "seq_item_offsets",
    "item_ids_by_position",
    "child_offsets",
    "node_tokens",
    "node_seq_lo",
    "node_seq_hi",
    "build_positions",
)


class TitleTrie:
    """A prefix trie over the token ids of catalog titles, each sequence ending with EOS.

    Build it with :meth:`from_titles` (the usual way) or :meth:`from_token_sequences`; it is immutable
    afterwards. A title that is a strict prefix of another ("Heat" and "Heat (1995)") stays generable,
    because the shorter one ends with EOS.

    Example:

    ```python
    >>> from constrained_rec import TitleTrie
    >>> trie = TitleTrie.from_token_sequences([[5, 6], [5, 7, 8], [5, 6]], eos_token_id=2, item_ids=[10, 11, 12])
    >>> len(trie), trie.max_length
    (2, 4)
    >>> trie.next_tokens([5])
    [6, 7]
    >>> trie.next_tokens([5, 6])
    [2]
    >>> trie.item_ids([5, 6, 2])
    [10, 12]
    >>> trie.next_tokens([9])
    []

    ```
    """

    def __init__(self, arrays: dict[str, np.ndarray], eos_token_id: int, titles: "TitleIndex | None" = None):
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"TitleTrie needs the arrays {list(_ARRAYS)}; missing {missing}")
        for name in _ARRAYS:
            setattr(self, name, arrays[name])
        self.eos_token_id = int(eos_token_id)
        self.titles = titles
        self._fingerprint: str | None = None
        self._id_order: np.ndarray | None = None  # item id -> position, built on first use (load stays fast)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_token_sequences(
        cls,
        seqs: Sequence[Sequence[int]],
        eos_token_id: int,
        item_ids: Sequence[int] | None = None,
    ) -> "TitleTrie":
        """Builds the trie from token-id sequences (EOS not included; it is appended to each).

        Args:
            seqs: one non-empty list of token ids per catalog item, without EOS.
            eos_token_id: the id that ends every sequence; it may not occur inside one.
            item_ids: the catalog item id of each sequence, unique; defaults to ``range(len(seqs))``.
        """
        return cls(trie_build.build_arrays(seqs, eos_token_id, item_ids), int(eos_token_id))

    @classmethod
    def from_titles(cls, titles: Sequence[str], tokenizer, item_ids: Sequence[int] | None = None) -> "TitleTrie":
        """Builds the trie from title strings, tokenized as the model writes them.

        Each title becomes ``tokenization.title_token_ids(tokenizer, title)``: the ids of its response
        text (the quoted title) followed by the tokenizer's EOS, exactly the training targets.

        Args:
            titles: one title (a ``str``) per catalog item; any text, NUL characters included.
            tokenizer: a Hugging Face tokenizer with an EOS token.
            item_ids: the catalog item id of each title, unique; defaults to ``range(len(titles))``.
        """
        if isinstance(titles, (str, bytes)) or not isinstance(titles, Iterable):
            raise ValueError(f"titles must be a sequence of title strings, one per item, got {titles!r:.80}")
        titles = list(titles)
        for i, title in enumerate(titles):
            if not isinstance(title, str):
                raise ValueError(f"title {i} is {title!r} ({type(title).__name__}); every title must be a str")
        ids = trie_build.check_item_ids(item_ids, len(titles))
        index = TitleIndex.build(titles, ids)  # checks the text before it is tokenized
        seqs = titles_token_ids(tokenizer, titles)
        trie = cls.from_token_sequences(seqs, eos_token_id=eos_token_id(tokenizer), item_ids=ids)
        trie.titles = index
        return trie

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids_by_position)

    @property
    def num_nodes(self) -> int:
        return len(self.node_tokens)

    @property
    def max_length(self) -> int:
        """Longest sequence, EOS included: the ``max_new_tokens`` a ``generate()`` call needs."""
        return int(np.diff(self.seq_offsets).max())

    @property
    def max_token_id(self) -> int:
        return int(self.seq_tokens.max())

    def walk(self, prefix: Sequence[int]) -> trie_walk.WalkState:
        """Where ``prefix`` leads: the kernel's :class:`~constrained_rec.kernels.trie_walk.WalkState`."""
        return self._walk(trie_build.query_ids(prefix, "prefix"))

    def _walk(self, ids: list[int]) -> trie_walk.WalkState:
        return trie_walk.walk_prefix(np.asarray(ids, dtype=np.int64), self.arrays)

    @property
    def arrays(self) -> trie_walk.TrieArrays:
        """The arrays every walk reads, as the kernels take them (one ``TrieArrays``)."""
        return trie_walk.TrieArrays(self.seq_tokens, self.seq_offsets, self.seq_item_offsets, self.child_offsets,
                                    self.node_tokens, self.node_seq_lo, self.node_seq_hi, self.eos_token_id)

    def device_arrays(self, device) -> torch_mask.DeviceTrie:
        """:attr:`arrays` copied to a torch ``device`` for the torch kernel, once per device."""
        cache = self.__dict__.setdefault("_device_arrays", {})
        device = torch.device(device)
        if device not in cache:
            cache[device] = torch_mask.DeviceTrie.from_arrays(self.arrays, device)
        return cache[device]

    # Searches that walk the trie in Python (constrained_rec.decoding.recommend) ask these instead of reading the arrays.
    def root(self) -> tuple[int, int, int]:
        """(node, seq_lo, seq_hi) of the empty prefix: node 0, every sequence."""
        return 0, 0, len(self)

    def children(self, node: int, seq_lo: int, seq_hi: int, depth: int):
        """The continuations of a prefix of length ``depth`` at state (node, seq_lo, seq_hi).

        Returns the arrays (tokens, nodes, seq_los, seq_his), one entry per allowed next token, each child's
        state. A prefix with a single completion (a tail) has one child, read from its sequence.
        """
        if seq_hi - seq_lo == 1:
            token = self.seq_tokens[self.seq_offsets[seq_lo] + depth]
            return (np.array([token], dtype=np.int64), np.array([node], dtype=np.int64),
                    np.array([seq_lo], dtype=np.int64), np.array([seq_hi], dtype=np.int64))
        a, b = int(self.child_offsets[node]), int(self.child_offsets[node + 1])
        return (self.node_tokens[a:b].astype(np.int64), np.arange(a, b, dtype=np.int64),
                self.node_seq_lo[a:b].astype(np.int64), self.node_seq_hi[a:b].astype(np.int64))

    def suffix(self, seq: int, depth: int) -> list[int]:
        """The tokens of sequence ``seq`` from position ``depth`` on (EOS included)."""
        return self.seq_tokens[self.seq_offsets[seq] + depth : self.seq_offsets[seq + 1]].tolist()

    def sequence_length(self, seq) -> np.ndarray | int:
        """The length of sequence(s) ``seq``, EOS included."""
        seq = np.asarray(seq)
        lengths = self.seq_offsets[seq + 1] - self.seq_offsets[seq]
        return int(lengths) if lengths.ndim == 0 else lengths.astype(np.int64)

    def item_range(self, seq_lo, seq_hi) -> tuple[np.ndarray, np.ndarray]:
        """The item positions of sequences seq_lo:seq_hi (scalars or arrays): (position_lo, position_hi)."""
        return (np.asarray(self.seq_item_offsets[seq_lo], dtype=np.int64),
                np.asarray(self.seq_item_offsets[seq_hi], dtype=np.int64))

    def sequence_at(self, positions) -> np.ndarray:
        """The sequence each item position belongs to."""
        return np.searchsorted(self.seq_item_offsets, np.asarray(positions), side="right") - 1

    def items_at(self, positions) -> list[int]:
        """The catalog item ids at the given item positions."""
        return self.item_ids_by_position[np.asarray(positions, dtype=np.int64)].tolist()

    def positions_in_build_order(self) -> np.ndarray:
        """``[j]``: the item position of the ``j``-th item id given to the builder (per-item arrays in that order)."""
        return self.build_positions

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Sorted token ids allowed after ``prefix``; empty if ``prefix`` is not a trie path or is complete."""
        state = self._walk(trie_build.query_ids(prefix, "prefix"))
        if state.status != trie_walk.IN_TRIE:
            return []
        return self.children(state.node, state.seq_lo, state.seq_hi, state.depth)[0].tolist()

    def item_ids(self, generated: Sequence[int]) -> list[int]:
        """Catalog item ids whose sequence equals ``generated`` (EOS optional at the end); ``[]`` if none."""
        return self._item_ids(trie_build.query_ids(generated, "generated"))

    def _item_ids(self, ids: list[int]) -> list[int]:
        if not ids or ids[-1] != self.eos_token_id:
            ids = ids + [self.eos_token_id]  # a copy: callers keep their row as it was
        state = self._walk(ids)
        if state.status != trie_walk.FINISHED or state.depth != len(ids):
            return []
        lo, hi = self.seq_item_offsets[state.seq_lo], self.seq_item_offsets[state.seq_lo + 1]
        return self.item_ids_by_position[lo:hi].tolist()

    def output_item_ids(self, generated: Sequence[int], strict: bool = False) -> list[int]:
        """:meth:`item_ids` of a ``generate()`` output row: the ids up to its first EOS (the rest is padding).

        Beam search returns *filler* rows (scored about -1e9) when ``num_return_sequences`` exceeds the
        titles the trie lets it reach: repeats of a title already returned for that prompt (see
        :meth:`distinct_output_item_ids`) or rows that are no title, which give ``[]`` here, or with
        ``strict=True`` a ``ValueError``. Strict mode also requires the EOS, so a row cut short by
        ``max_new_tokens`` is not taken for a shorter title.
        """
        return self._output_item_ids(trie_build.query_ids(generated, "generated"), strict)

    def _output_item_ids(self, ids: list[int], strict: bool = False) -> list[int]:
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id) + 1]
        items = self._item_ids(ids)
        if strict and (not items or ids[-1] != self.eos_token_id):
            raise ValueError(
                f"generated ids {ids[:30]} are not a complete catalog title ending with EOS {self.eos_token_id}: "
                "a filler row (num_return_sequences above the titles beam search could reach) or a row cut "
                "short (max_new_tokens below trie.max_length)"
            )
        return items

    def is_complete(self, generated: Sequence[int]) -> bool:
        """Whether a ``generate()`` output row is a whole catalog title with its EOS."""
        ids = trie_build.query_ids(generated, "generated")
        return self.eos_token_id in ids and bool(self._output_item_ids(ids))

    def distinct_output_item_ids(self, rows, num_return_sequences: int) -> list[list[list[int]]]:
        """Per prompt, the items of each distinct complete title among its beam-search output rows, best first.

        ``rows`` are the generated parts of a ``generate(num_beams=..., num_return_sequences=...)`` output,
        ``num_return_sequences`` consecutive rows per prompt. Filler rows (no complete title, or a title an
        earlier row of the prompt already returned) are dropped, so a prompt may get fewer than asked for.
        Not for sampling, where independent samples may legitimately repeat a title.
        """
        rows = [trie_build.query_ids(row, f"rows[{r}]") for r, row in enumerate(rows)]
        if num_return_sequences < 1 or len(rows) % num_return_sequences:
            raise ValueError(f"{len(rows)} rows are not a multiple of num_return_sequences={num_return_sequences}")
        prompts = []
        for first in range(0, len(rows), num_return_sequences):
            seen, titles = set(), []
            for row in rows[first : first + num_return_sequences]:
                items = self._output_item_ids(row) if self.eos_token_id in row else []
                if items and tuple(items) not in seen:
                    seen.add(tuple(items))
                    titles.append(items)
            prompts.append(titles)
        return prompts

    def sequences(self) -> Iterable[list[int]]:
        """Every distinct sequence, EOS included, in lexicographic order."""
        for s in range(len(self)):
            yield self.seq_tokens[self.seq_offsets[s] : self.seq_offsets[s + 1]].tolist()

    def positions_of(self, item_ids: Iterable[int]) -> np.ndarray:
        """Sorted positions (in ``item_ids_by_position``) of the given item ids; unknown ids are an error."""
        if self._id_order is None:
            self._id_order = np.argsort(self.item_ids_by_position, kind="stable")
            self._sorted_ids = self.item_ids_by_position[self._id_order]
        ids = np.asarray(trie_build.query_item_ids(item_ids), dtype=np.int64)
        where = np.searchsorted(self._sorted_ids, ids)
        where_clipped = np.minimum(where, len(self._sorted_ids) - 1)
        unknown = ids[self._sorted_ids[where_clipped] != ids]
        if len(unknown):
            raise ValueError(
                f"item ids {sorted(set(unknown.tolist()))[:10]} are not in the trie's catalog of "
                f"{self.num_items} items; exclude only catalog items"
            )
        return np.unique(self._id_order[where_clipped])

    def fingerprint(self) -> str:
        """A hash of the sequences, their items and EOS: equal fingerprints mean identical catalogs."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"eos={self.eos_token_id}".encode())
            for name in ("seq_tokens", "seq_offsets", "seq_item_offsets", "item_ids_by_position"):
                digest.update(np.ascontiguousarray(getattr(self, name), dtype=np.int64).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"TitleTrie(sequences={len(self)}, items={self.num_items}, nodes={self.num_nodes}, "
            f"max_length={self.max_length}, eos_token_id={self.eos_token_id})"
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Writes the trie to the folder ``path`` (created if needed): one ``.npy`` per array."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
        meta = {"format_version": FORMAT_VERSION, "eos_token_id": self.eos_token_id, "fingerprint": self.fingerprint()}
        if self.titles is not None:
            self.titles.save(folder)
            meta["title_files"] = trie_io.file_digests(folder, TitleIndex.FILES, self.fingerprint())
        meta["has_titles"] = self.titles is not None
        (folder / "trie.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | Path, check: bool = True) -> "TitleTrie":
        """Opens a trie written by :meth:`save`; arrays are memory-mapped.

        Args:
            path: the folder :meth:`save` wrote.
            check: recompute the fingerprint, check every array (``constrained_rec.trie.io``: linear
                in the arrays' size) and the title index against the digests ``save`` recorded (another
                catalog's ``titles.marisa`` or an edited one would return wrong titles), so that a damaged
                folder is an error naming the file, never a wrong mask, a wrong title or a kernel reading out
                of bounds. ``False`` skips that for a folder you trust and opens at any size in milliseconds.
                A title index saved by format 2 (before the digests) can only be opened with ``False``.
        """
        folder = Path(path)
        meta = trie_io.read_meta(folder)
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"{folder / 'trie.json'}: trie format {meta.get('format_version')!r}, this version reads "
                f"{FORMAT_VERSION}; rebuild the trie and save it again"
            )
        arrays = {name: trie_io.read_array(folder / f"{name}.npy") for name in _ARRAYS}
        trie = cls(arrays, meta["eos_token_id"])
        if check:
            if trie.fingerprint() != meta.get("fingerprint"):
                raise ValueError(
                    f"{folder / 'trie.json'}: records the catalog fingerprint {meta.get('fingerprint')!r} but "
                    f"eos_token_id there and seq_tokens, seq_offsets, seq_item_offsets, item_ids_by_position.npy "
                    f"give {trie.fingerprint()}: one of these files was changed; rebuild and save the trie again"
                )
            trie_io.check_sequences(folder, arrays, trie.eos_token_id)
            trie_io.check_nodes(folder, arrays)
        trie._fingerprint = meta.get("fingerprint")
        if meta.get("has_titles"):
            trie.titles = TitleIndex.load(folder, trie.item_ids_by_position if check else None)
            if check:
                trie_io.check_digests(folder, meta, "title_files", TitleIndex.FILES, trie.fingerprint())
        return trie


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
