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
map for exact grounding is a marisa-trie (compact, memory-mapped on load).
"""

from __future__ import annotations

import hashlib
import json
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

import marisa_trie
import numpy as np
import torch

from constrained_rec.kernels import torch_mask, trie_walk
from constrained_rec.tokenization import eos_token_id, titles_token_ids

FORMAT_VERSION = 2  # 2: build_positions; items of one sequence sorted by id
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
        if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, (int, np.integer)) or eos_token_id < 0:
            raise ValueError(f"eos_token_id must be a non-negative int, got {eos_token_id!r}")
        eos = int(eos_token_id)
        num_items = len(seqs)
        if num_items == 0:
            raise ValueError("cannot build a TitleTrie from an empty list of sequences")
        item_ids = _check_item_ids(item_ids, num_items)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=num_items)
        if (lengths == 0).any():
            bad = int(np.flatnonzero(lengths == 0)[0])
            raise ValueError(f"sequence {bad} (item {item_ids[bad]}) is empty; every title needs at least one token")
        # No reference to the padded codes stays here, so _compile can free them early (peak memory).
        arrays = _compile(_padded_codes(seqs, lengths, eos, item_ids), lengths, item_ids)
        return cls(arrays, eos)

    @classmethod
    def from_titles(cls, titles: Sequence[str], tokenizer, item_ids: Sequence[int] | None = None) -> "TitleTrie":
        """Builds the trie from title strings, tokenized as the model writes them.

        Each title becomes ``tokenization.title_token_ids(tokenizer, title)``: the ids of its response
        text (the quoted title) followed by the tokenizer's EOS, exactly the training targets.

        Args:
            titles: one title per catalog item.
            tokenizer: a Hugging Face tokenizer with an EOS token.
            item_ids: the catalog item id of each title, unique; defaults to ``range(len(titles))``.
        """
        titles = list(titles)
        seqs = titles_token_ids(tokenizer, titles)
        trie = cls.from_token_sequences(seqs, eos_token_id=eos_token_id(tokenizer), item_ids=item_ids)
        ids = list(range(len(titles))) if item_ids is None else [int(i) for i in item_ids]
        trie.titles = TitleIndex.build(titles, ids)
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
        return trie_walk.walk_prefix(np.asarray(prefix, dtype=np.int64).reshape(-1), self.arrays)

    @property
    def arrays(self) -> trie_walk.TrieArrays:
        """The arrays every walk reads, as the kernels take them (one ``TrieArrays``)."""
        return trie_walk.TrieArrays(self.seq_tokens, self.seq_offsets, self.seq_item_offsets, self.child_offsets,
                                    self.node_tokens, self.node_seq_lo, self.node_seq_hi, self.eos_token_id)

    def walk_arrays(self) -> trie_walk.TrieArrays:
        """Deprecated alias of :attr:`arrays`."""
        return self.arrays

    def device_arrays(self, device) -> torch_mask.DeviceTrie:
        """:attr:`arrays` copied to a torch ``device`` for the torch kernel, once per device."""
        cache = self.__dict__.setdefault("_device_arrays", {})
        device = torch.device(device)
        if device not in cache:
            cache[device] = torch_mask.DeviceTrie.from_arrays(self.arrays, device)
        return cache[device]

    # Searches that walk the trie in Python (constrained_rec.decode) ask these instead of reading the arrays.
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
        state = self.walk(prefix)
        if state.status != trie_walk.IN_TRIE:
            return []
        return self.children(state.node, state.seq_lo, state.seq_hi, state.depth)[0].tolist()

    def item_ids(self, generated: Sequence[int]) -> list[int]:
        """Catalog item ids whose sequence equals ``generated`` (EOS optional at the end); ``[]`` if none."""
        ids = [int(t) for t in generated]
        if not ids or ids[-1] != self.eos_token_id:
            ids.append(self.eos_token_id)
        state = self.walk(ids)
        if state.status != trie_walk.FINISHED or state.depth != len(ids):
            return []
        lo, hi = self.seq_item_offsets[state.seq_lo], self.seq_item_offsets[state.seq_lo + 1]
        return self.item_ids_by_position[lo:hi].tolist()

    def output_item_ids(self, generated: Sequence[int]) -> list[int]:
        """:meth:`item_ids` of a ``generate()`` output row: the ids up to its first EOS (the rest is padding)."""
        ids = [int(t) for t in generated]
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id) + 1]
        return self.item_ids(ids)

    def sequences(self) -> Iterable[list[int]]:
        """Every distinct sequence, EOS included, in lexicographic order."""
        for s in range(len(self)):
            yield self.seq_tokens[self.seq_offsets[s] : self.seq_offsets[s + 1]].tolist()

    def positions_of(self, item_ids: Iterable[int]) -> np.ndarray:
        """Sorted positions (in ``item_ids_by_position``) of the given item ids; unknown ids are an error."""
        if self._id_order is None:
            self._id_order = np.argsort(self.item_ids_by_position, kind="stable")
            self._sorted_ids = self.item_ids_by_position[self._id_order]
        ids = np.fromiter((int(i) for i in item_ids), dtype=np.int64)
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
        meta["has_titles"] = self.titles is not None
        (folder / "trie.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "TitleTrie":
        """Opens a trie written by :meth:`save`; arrays are memory-mapped, so this is fast at any size."""
        folder = Path(path)
        meta_path = folder / "trie.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} is not a saved TitleTrie (no trie.json); write one with TitleTrie.save")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: trie format {meta.get('format_version')!r}, this version reads {FORMAT_VERSION}")
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        titles = TitleIndex.load(folder) if meta.get("has_titles") else None
        trie = cls(arrays, meta["eos_token_id"], titles)
        trie._fingerprint = meta.get("fingerprint")
        return trie


class TitleIndex:
    """Title text -> item ids (exact match), and item id -> title, in a marisa-trie.

    The marisa trie stores each distinct title once; ``key_item_offsets`` and ``key_item_ids`` map its
    key ids to item ids, and ``item_key`` maps (sorted) item ids back to key ids.
    """

    def __init__(self, keys: marisa_trie.Trie, key_item_offsets: np.ndarray, key_item_ids: np.ndarray,
                 sorted_item_ids: np.ndarray, item_key: np.ndarray):
        self.keys = keys
        self.key_item_offsets = key_item_offsets
        self.key_item_ids = key_item_ids
        self.sorted_item_ids = sorted_item_ids
        self.item_key = item_key

    @classmethod
    def build(cls, titles: Sequence[str], item_ids: Sequence[int]) -> "TitleIndex":
        keys = marisa_trie.Trie(titles)
        key_of_item = np.fromiter((keys[t] for t in titles), dtype=np.int64, count=len(titles))
        ids = np.asarray(item_ids, dtype=np.int64)
        by_key = np.argsort(key_of_item, kind="stable")
        key_item_offsets = np.searchsorted(key_of_item[by_key], np.arange(len(keys) + 1))
        id_order = np.argsort(ids, kind="stable")
        return cls(keys, key_item_offsets, ids[by_key], ids[id_order], key_of_item[id_order])

    def items_for_title(self, title: str) -> list[int]:
        """Item ids whose title is exactly ``title``; ``[]`` if none."""
        key = self.keys.get(title)
        if key is None:
            return []
        return self.key_item_ids[self.key_item_offsets[key] : self.key_item_offsets[key + 1]].tolist()

    def title(self, item_id: int) -> str:
        """The title of ``item_id``; a KeyError naming it if it is not in the catalog."""
        where = int(np.searchsorted(self.sorted_item_ids, item_id))
        if where == len(self.sorted_item_ids) or self.sorted_item_ids[where] != item_id:
            raise KeyError(f"item {item_id} is not in the catalog")
        return self.keys.restore_key(int(self.item_key[where]))

    def save(self, folder: Path) -> None:
        self.keys.save(str(folder / "titles.marisa"))
        for name in ("key_item_offsets", "key_item_ids", "sorted_item_ids", "item_key"):
            np.save(folder / f"titles_{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path) -> "TitleIndex":
        keys = marisa_trie.Trie()
        keys.mmap(str(folder / "titles.marisa"))
        arrays = [np.load(folder / f"titles_{name}.npy", mmap_mode="r")
                  for name in ("key_item_offsets", "key_item_ids", "sorted_item_ids", "item_key")]
        return cls(keys, *arrays)


# ---------------------------------------------------------------------- compilation
def _check_item_ids(item_ids: Sequence[int] | None, num_items: int) -> np.ndarray:
    if item_ids is None:
        return np.arange(num_items, dtype=np.int64)
    ids = np.asarray(list(item_ids))
    if len(ids) != num_items:
        raise ValueError(f"got {len(ids)} item_ids for {num_items} sequences; give one id per sequence")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"item_ids must be integers, got dtype {ids.dtype} (e.g. {ids[0]!r})")
    ids = ids.astype(np.int64)
    sorted_ids = np.sort(ids)
    dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if len(dup):
        raise ValueError(f"item id {int(dup[0])} is given for more than one sequence; item_ids must be unique")
    return ids


def _flatten_token_ids(seqs: Sequence[Sequence[int]], total: int) -> np.ndarray:
    """All token ids in one array: int32 (half the memory at a million titles) unless an id needs more."""
    for dtype in (np.int32, np.int64):
        try:
            return np.fromiter(chain.from_iterable(seqs), dtype=dtype, count=total)
        except OverflowError:
            continue
        except (TypeError, ValueError) as err:
            raise ValueError(f"token sequences must hold integer token ids: {err}") from None
    raise ValueError("token ids must fit in 64 bits")


def _check_tokens(flat: np.ndarray, starts: np.ndarray, eos: int, item_ids: np.ndarray) -> None:
    for bad_mask, what in ((flat < 0, "a negative token id"), (flat == eos, f"the EOS id {eos}")):
        if bad_mask.any():
            pos = int(np.flatnonzero(bad_mask)[0])
            seq = int(np.searchsorted(starts, pos, side="right") - 1)
            raise ValueError(
                f"sequence {seq} (item {item_ids[seq]}) holds {what} at position {pos - starts[seq]} "
                f"(token {int(flat[pos])}); sequences are given without EOS and with ids >= 0"
            )


def _padded_codes(seqs: Sequence[Sequence[int]], lengths: np.ndarray, eos: int, item_ids: np.ndarray) -> np.ndarray:
    """One row per sequence: code = token + 1, then EOS, then 0 (which sorts before every token)."""
    num_rows = len(lengths)
    flat = _flatten_token_ids(seqs, int(lengths.sum()))
    starts = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    _check_tokens(flat, starts, eos, item_ids)
    width = int(lengths.max()) + 1  # + EOS
    max_code = max(int(flat.max()), eos) + 1
    code_dtype = np.uint16 if max_code <= np.iinfo(np.uint16).max else np.uint32 if max_code < 2**32 else np.uint64
    codes = np.zeros((num_rows, width), dtype=code_dtype)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        for chunk in np.array_split(rows, len(rows) * int(length) // 1_000_000 + 1):
            codes[chunk, :length] = flat[starts[chunk, None] + np.arange(length)] + 1
    codes[np.arange(num_rows), lengths] = eos + 1
    return codes


def _index_dtype(max_value: int):
    return np.int32 if max_value < 2**31 else np.int64


def _compile(codes: np.ndarray, lengths: np.ndarray, item_ids: np.ndarray) -> dict:
    """Sorts the sequences and derives the flat arrays described in the module docstring."""
    num_rows, width = codes.shape
    # Items sharing a sequence are ordered by id, so the arrays (and the fingerprint) do not depend on
    # the order the catalog was given in.
    order = np.lexsort((item_ids, *codes.T[::-1]))
    codes = codes[order]
    row_lengths = (lengths[order] + 1).astype(np.int32)
    # first_diff[i]: first column where row i differs from row i - 1 (width: identical rows).
    first_diff = np.full(num_rows, width, dtype=np.int32)
    first_diff[0] = 0
    for col in range(width - 1, -1, -1):
        differs = codes[1:, col] != codes[:-1, col]
        first_diff[1:][differs] = col

    distinct = first_diff < width
    index_dtype = _index_dtype(max(num_rows, int(codes.size)))
    seq_item_offsets = np.append(np.flatnonzero(distinct), num_rows).astype(index_dtype)
    item_ids_by_position = item_ids[order]
    build_positions = np.empty(num_rows, dtype=_index_dtype(num_rows))
    build_positions[order] = np.arange(num_rows, dtype=build_positions.dtype)
    del order
    # Row-major over the distinct rows: each sequence's codes in order, padding dropped.
    seq_tokens = codes[(codes != 0) & distinct[:, None]]
    seq_tokens -= 1
    del codes  # the largest temporary; node tokens are read from seq_tokens below
    first_diff = first_diff[distinct]
    row_lengths = row_lengths[distinct]
    num_seqs = len(row_lengths)
    seq_offsets = np.zeros(num_seqs + 1, dtype=index_dtype)
    np.cumsum(row_lengths, out=seq_offsets[1:])

    # shared[i]: length of the longest prefix sequence i shares with another sequence.
    shared = first_diff.copy()
    shared[:-1] = np.maximum(shared[:-1], first_diff[1:])
    if num_seqs == 1:
        shared[:] = -1  # the root covers one sequence: it is a tail, and no node needs children

    # Level d holds the nodes for prefixes of length d + 1: started by sequences that differ from
    # their predecessor within the first d + 1 tokens, under a parent prefix (length d) that at least
    # two sequences share (otherwise the parent is a tail and needs no children).
    level_starts = []
    node_index_dtype = _index_dtype(num_seqs)
    for depth in range(width):
        starts_here = np.flatnonzero((first_diff <= depth) & (row_lengths > depth) & (shared >= depth))
        starts_here = starts_here.astype(node_index_dtype)
        if len(starts_here) == 0:
            break
        level_starts.append(starts_here)
    level_bases = np.cumsum([1] + [len(s) for s in level_starts])
    num_nodes = int(level_bases[-1])

    node_tokens = np.empty(num_nodes, dtype=seq_tokens.dtype)
    node_seq_lo = np.empty(num_nodes, dtype=_index_dtype(num_seqs))
    node_seq_hi = np.empty(num_nodes, dtype=node_seq_lo.dtype)
    child_offsets = np.empty(num_nodes + 1, dtype=_index_dtype(num_nodes + 1))
    node_tokens[0] = 0  # the root has no entry token; never read
    node_seq_lo[0], node_seq_hi[0] = 0, num_seqs
    child_offsets[0] = 1
    child_offsets[-1] = num_nodes
    parent_starts = np.zeros(1, dtype=np.int64)  # the root starts at sequence 0
    parent_base = 0
    for depth, starts_here in enumerate(level_starts):
        base = int(level_bases[depth])
        # A node's sequences run until the next sequence that differs within its prefix.
        boundaries = np.flatnonzero(first_diff <= depth)
        nxt = np.searchsorted(boundaries, starts_here, side="right")
        his = np.where(nxt < len(boundaries), boundaries[np.minimum(nxt, len(boundaries) - 1)], num_seqs)
        node_tokens[base : base + len(starts_here)] = seq_tokens[seq_offsets[starts_here] + depth]
        node_seq_lo[base : base + len(starts_here)] = starts_here
        node_seq_hi[base : base + len(starts_here)] = his
        # Children of the previous level's nodes are contiguous runs of this level's nodes.
        first_child = np.searchsorted(starts_here, parent_starts, side="left")
        child_offsets[parent_base : parent_base + len(parent_starts)] = base + first_child
        parent_starts, parent_base = starts_here, base
    # Nodes of the deepest level have no children. Tails need no fix-up: no node of the next level
    # starts inside a tail's range, so its first child equals its successor's (an empty range).
    child_offsets[parent_base : parent_base + len(parent_starts)] = num_nodes
    return {
        "seq_tokens": seq_tokens,
        "seq_offsets": seq_offsets,
        "seq_item_offsets": seq_item_offsets,
        "item_ids_by_position": item_ids_by_position,
        "child_offsets": child_offsets,
        "node_tokens": node_tokens,
        "node_seq_lo": node_seq_lo,
        "node_seq_hi": node_seq_hi,
        "build_positions": build_positions,
    }
