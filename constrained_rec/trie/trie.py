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

The arrays are one private field of the trie. The hot loops that walk them live in ``constrained_rec.kernels``
and receive them as one ``TrieArrays`` (:meth:`TitleTrie.arrays`, :meth:`TitleTrie.device_arrays`); searches in
Python move a :class:`TrieCursor` through the trie (:meth:`TitleTrie.root`, :meth:`TitleTrie.children`) and
everything else asks the trie's query methods. The title text -> item ids map for exact grounding is a
marisa-trie (``constrained_rec.trie.titles``). ``constrained_rec.trie.build`` compiles the arrays,
``constrained_rec.trie.io`` checks a saved folder before it is used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from constrained_rec.kernels import torch_mask, trie_walk
from constrained_rec.trie import build as trie_build
from constrained_rec.trie import io as trie_io
from constrained_rec.trie.cursor import TrieCursor
from constrained_rec.trie.titles import TitleIndex
from constrained_rec.trie.tokenization import eos_token_id, titles_token_ids

FORMAT_VERSION = 3  # 2: build_positions; items of one sequence sorted by id. 3: digests of the title index
READABLE_VERSIONS = (2, 3)  # the arrays are the same; a format-2 title index cannot be verified


class _Arrays(NamedTuple):
    """The trie's storage (module docstring): read here, by ``trie.build``, ``trie.io`` and the kernels only."""

    seq_tokens: np.ndarray
    seq_offsets: np.ndarray
    seq_item_offsets: np.ndarray
    item_ids_by_position: np.ndarray
    child_offsets: np.ndarray
    node_tokens: np.ndarray
    node_seq_lo: np.ndarray
    node_seq_hi: np.ndarray
    build_positions: np.ndarray


_ARRAYS = _Arrays._fields


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

    def __init__(self, arrays: Mapping[str, np.ndarray], eos_token_id: int, titles: TitleIndex | None = None):
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"TitleTrie needs the arrays {list(_ARRAYS)}; missing {missing}")
        self._arrays = _Arrays(*(arrays[name] for name in _ARRAYS))
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
        return len(self._arrays.seq_offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self._arrays.item_ids_by_position)

    @property
    def num_nodes(self) -> int:
        return len(self._arrays.node_tokens)

    @property
    def max_length(self) -> int:
        """Longest sequence, EOS included: the ``max_new_tokens`` a ``generate()`` call needs."""
        return int(np.diff(self._arrays.seq_offsets).max())

    @property
    def max_token_id(self) -> int:
        return int(self._arrays.seq_tokens.max())

    def walk(self, prefix: Sequence[int]) -> trie_walk.WalkState:
        """Where ``prefix`` leads: the kernel's :class:`~constrained_rec.kernels.trie_walk.WalkState`."""
        return self._walk(trie_build.query_ids(prefix, "prefix"))

    def _walk(self, ids: list[int]) -> trie_walk.WalkState:
        return trie_walk.walk_prefix(np.asarray(ids, dtype=np.int64), self.arrays())

    def arrays(self) -> trie_walk.TrieArrays:
        """The arrays every walk reads, as the kernels take them (one ``TrieArrays``); for the kernels only."""
        a = self._arrays
        return trie_walk.TrieArrays(a.seq_tokens, a.seq_offsets, a.seq_item_offsets, a.child_offsets, a.node_tokens,
                                    a.node_seq_lo, a.node_seq_hi, self.eos_token_id)

    def device_arrays(self, device) -> torch_mask.DeviceTrie:
        """:meth:`arrays` copied to a torch ``device`` for the torch kernel, once per device."""
        cache = self.__dict__.setdefault("_device_arrays", {})
        device = torch.device(device)
        if device not in cache:
            cache[device] = torch_mask.DeviceTrie.from_arrays(self.arrays(), device)
        return cache[device]

    # Searches that walk the trie in Python (constrained_rec.decoding) move a TrieCursor instead of reading the arrays.
    def root(self) -> TrieCursor:
        """The cursor of the empty prefix: node 0, every sequence, depth 0."""
        return TrieCursor(0, 0, len(self), 0)

    def children(self, cursor: TrieCursor) -> tuple[np.ndarray, TrieCursor]:
        """The continuations of the prefix at ``cursor`` (a cursor of ints): ``(tokens, children)``.

        ``tokens`` (int64, sorted) has one entry per allowed next token, ``children`` their cursors as one cursor
        of arrays, one token deeper. A tail has one child, read from its sequence; past its EOS it has none,
        which is an error.
        """
        a = self._arrays
        node, lo, hi, depth = cursor
        if hi - lo == 1:
            at = a.seq_offsets[lo] + depth
            if at >= a.seq_offsets[lo + 1]:
                raise ValueError(f"{cursor} is past the EOS of sequence {lo}: a complete title has no children")
            return (np.array([a.seq_tokens[at]], dtype=np.int64),
                    TrieCursor(np.array([node], dtype=np.int64), np.array([lo], dtype=np.int64),
                               np.array([hi], dtype=np.int64), depth + 1))
        first, stop = int(a.child_offsets[node]), int(a.child_offsets[node + 1])
        return (a.node_tokens[first:stop].astype(np.int64),
                TrieCursor(np.arange(first, stop, dtype=np.int64), a.node_seq_lo[first:stop].astype(np.int64),
                           a.node_seq_hi[first:stop].astype(np.int64), depth + 1))

    def completion(self, cursor: TrieCursor) -> list[int]:
        """The one completion of a tail's prefix (the rest of its sequence, EOS included); an error elsewhere."""
        if not cursor.is_tail:
            raise ValueError(f"{cursor} has {cursor.seq_hi - cursor.seq_lo} completions, not one (not a tail)")
        return self.suffix(cursor.seq_lo, cursor.depth)

    def suffix(self, seq: int, depth: int) -> list[int]:
        """The tokens of sequence ``seq`` from position ``depth`` on (EOS included)."""
        a = self._arrays
        return a.seq_tokens[a.seq_offsets[seq] + depth : a.seq_offsets[seq + 1]].tolist()

    def sequence_length(self, seq) -> np.ndarray | int:
        """The length of sequence(s) ``seq``, EOS included."""
        seq = np.asarray(seq)
        lengths = self._arrays.seq_offsets[seq + 1] - self._arrays.seq_offsets[seq]
        return int(lengths) if lengths.ndim == 0 else lengths.astype(np.int64)

    def item_range(self, cursor: TrieCursor) -> tuple[np.ndarray, np.ndarray]:
        """The item positions under ``cursor`` (of ints or of arrays), ``(position_lo, position_hi)``, int64."""
        offsets = self._arrays.seq_item_offsets
        return (np.asarray(offsets[cursor.seq_lo], dtype=np.int64),
                np.asarray(offsets[cursor.seq_hi], dtype=np.int64))

    def sequence_item_range(self, seq) -> tuple[np.ndarray, np.ndarray]:
        """The item positions of sequence(s) ``seq`` (an int or an array), ``(position_lo, position_hi)``, int64."""
        seq = np.asarray(seq, dtype=np.int64)
        offsets = self._arrays.seq_item_offsets
        return np.asarray(offsets[seq], dtype=np.int64), np.asarray(offsets[seq + 1], dtype=np.int64)

    def sequence_at(self, positions) -> np.ndarray:
        """The sequence each item position belongs to."""
        return np.searchsorted(self._arrays.seq_item_offsets, np.asarray(positions), side="right") - 1

    def items_at(self, positions) -> list[int]:
        """The catalog item ids at the given item positions."""
        return self._arrays.item_ids_by_position[np.asarray(positions, dtype=np.int64)].tolist()

    def positions_in_build_order(self) -> np.ndarray:
        """``[j]``: the item position of the ``j``-th item id given to the builder (per-item arrays in that order)."""
        return self._arrays.build_positions

    def item_ids_in_build_order(self) -> np.ndarray:
        """The catalog's item ids (int64) in the order given to the builder: column ``j`` of an item prior.

        >>> TitleTrie.from_token_sequences([[7], [5]], eos_token_id=2, item_ids=[30, 10]).item_ids_in_build_order()
        array([30, 10])
        """
        return self._arrays.item_ids_by_position[self._arrays.build_positions].astype(np.int64)

    def title_token_ids(self, item_ids: Iterable[int]) -> list[list[int]]:
        """The token ids (EOS included) of each item's title as the trie holds them; an unknown item is an error.

        >>> trie = TitleTrie.from_token_sequences([[5, 6], [7], [5, 6]], eos_token_id=2, item_ids=[10, 11, 12])
        >>> trie.title_token_ids([12, 11, 12])
        [[5, 6, 2], [7, 2], [5, 6, 2]]
        """
        return [self.suffix(int(seq), 0) for seq in self.sequence_at(self._position_of_each(item_ids))]

    def items_with_same_title(self, item_id: int) -> list[int]:
        """The item ids (sorted) whose title is token for token that of ``item_id``, itself included.

        >>> TitleTrie.from_token_sequences([[5, 6], [7], [5, 6]], eos_token_id=2, item_ids=[10, 11, 12]).items_with_same_title(12)
        [10, 12]
        """
        (position,) = self._position_of_each([item_id])
        lo, hi = self.sequence_item_range(self.sequence_at(position))
        return self._arrays.item_ids_by_position[lo:hi].tolist()

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Sorted token ids allowed after ``prefix``; empty if ``prefix`` is not a trie path or is complete."""
        state = self._walk(trie_build.query_ids(prefix, "prefix"))
        if state.status != trie_walk.IN_TRIE:
            return []
        return self.children(TrieCursor(state.node, state.seq_lo, state.seq_hi, state.depth))[0].tolist()

    def item_ids(self, generated: Sequence[int]) -> list[int]:
        """Catalog item ids whose sequence equals ``generated`` (EOS optional at the end); ``[]`` if none."""
        return self._item_ids(trie_build.query_ids(generated, "generated"))

    def _item_ids(self, ids: list[int]) -> list[int]:
        if not ids or ids[-1] != self.eos_token_id:
            ids = ids + [self.eos_token_id]  # a copy: callers keep their row as it was
        state = self._walk(ids)
        if state.status != trie_walk.FINISHED or state.depth != len(ids):
            return []
        lo, hi = self.sequence_item_range(state.seq_lo)
        return self._arrays.item_ids_by_position[lo:hi].tolist()

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
            yield self.suffix(s, 0)

    def positions_of(self, item_ids: Iterable[int]) -> np.ndarray:
        """Sorted positions (in ``item_ids_by_position``) of the given item ids; unknown ids are an error."""
        return np.unique(self._position_of_each(item_ids, "; exclude only catalog items"))

    def _position_of_each(self, item_ids: Iterable[int], hint: str = "") -> np.ndarray:
        """The position of each given item id, in their order; unknown ids are an error."""
        if self._id_order is None:
            self._id_order = np.argsort(self._arrays.item_ids_by_position, kind="stable")
            self._sorted_ids = self._arrays.item_ids_by_position[self._id_order]
        ids = np.asarray(trie_build.query_item_ids(item_ids), dtype=np.int64)
        where = np.searchsorted(self._sorted_ids, ids)
        where_clipped = np.minimum(where, len(self._sorted_ids) - 1)
        unknown = ids[self._sorted_ids[where_clipped] != ids]
        if len(unknown):
            raise ValueError(
                f"item ids {sorted(set(unknown.tolist()))[:10]} are not in the trie's catalog of "
                f"{self.num_items} items{hint}"
            )
        return self._id_order[where_clipped]

    def fingerprint(self) -> str:
        """A hash of the sequences, their items and EOS: equal fingerprints mean identical catalogs."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"eos={self.eos_token_id}".encode())
            for name in ("seq_tokens", "seq_offsets", "seq_item_offsets", "item_ids_by_position"):
                digest.update(np.ascontiguousarray(getattr(self._arrays, name), dtype=np.int64).tobytes())
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
        for name, array in self._arrays._asdict().items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array))
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
            trie.titles = TitleIndex.load(folder, trie._arrays.item_ids_by_position if check else None)
            if check:
                trie_io.check_digests(folder, meta, "title_files", TitleIndex.FILES, trie.fingerprint())
        return trie
