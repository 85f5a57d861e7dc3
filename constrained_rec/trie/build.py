"""Compiling token sequences into the flat arrays of a `TitleTrie` (layout: see ``constrained_rec.trie.trie``).

Memory and time follow the number of tokens, never rows x longest title: the sequences are sorted by
refining ties one column at a time over the rows still tied, and each level of branching nodes is derived
from the sequences that share that many tokens with a neighbour.
"""

from __future__ import annotations

from itertools import chain, islice
from typing import Iterable, Sequence

import numpy as np

from constrained_rec.validation import check_int


def build_arrays(seqs: Sequence[Sequence[int]], eos_token_id: int, item_ids: Sequence[int] | None) -> dict:
    """The trie arrays of ``seqs`` (token ids without EOS, one per item); every input checked and named."""
    check_int(eos_token_id, "eos_token_id", least=0, numpy=True)
    eos = int(eos_token_id)
    num_items = len(seqs)
    if num_items == 0:
        raise ValueError("cannot build a TitleTrie from an empty list of sequences")
    item_ids = check_item_ids(item_ids, num_items)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=num_items)
    if (lengths == 0).any():
        bad = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"sequence {bad} (item {item_ids[bad]}) is empty; every title needs at least one token")
    return _compile(seqs, lengths, eos, item_ids)


def check_item_ids(item_ids: Sequence[int] | None, num_items: int) -> np.ndarray:
    """``item_ids`` as int64 (``range`` if None): one unique int per item, anything else named."""
    if item_ids is None:
        return np.arange(num_items, dtype=np.int64)
    if isinstance(item_ids, np.ndarray) and item_ids.dtype.kind in "iu" and item_ids.ndim == 1:
        if item_ids.dtype.kind == "u" and len(item_ids) and item_ids.max() >= 2**63:
            raise ValueError(f"item id {int(item_ids.max())} does not fit in int64")
        item_ids = item_ids.astype(np.int64, copy=False)
    elif isinstance(item_ids, (str, bytes)) or not isinstance(item_ids, Iterable):
        raise ValueError(f"item_ids must be a sequence of int item ids, got {item_ids!r:.80}")
    else:
        item_ids = list(item_ids)
        for i, item in enumerate(item_ids):
            # bool is an int subclass, and numpy would truncate 1.5 or parse "1" silently: refuse them all.
            is_int = isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))
            if not is_int or not -(2**63) <= item < 2**63:
                raise ValueError(
                    f"item_ids[{i}] is {item!r} ({type(item).__name__}); item ids must be ints in the int64 range"
                )
    if len(item_ids) != num_items:
        raise ValueError(f"got {len(item_ids)} item_ids for {num_items} sequences; give one id per sequence")
    ids = np.asarray(item_ids, dtype=np.int64)
    sorted_ids = np.sort(ids)
    dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if len(dup):
        raise ValueError(f"item id {int(dup[0])} is given for more than one sequence; item_ids must be unique")
    return ids


def query_ids(values, what: str) -> list[int]:
    """``values`` (ints, a 1-D integer numpy array or torch tensor) as a list of ints, for the trie's queries.

    ``np.asarray`` would truncate 5.9, and iterating "5" yields "5": floats, strings, bools and anything
    else but an int are a ValueError naming ``what`` and the value.
    """
    import torch  # already imported by the trie

    if isinstance(values, (np.ndarray, torch.Tensor)):
        if isinstance(values, np.ndarray):
            integer = values.dtype.kind in "iu"
        else:
            integer = not (values.is_floating_point() or values.is_complex() or values.dtype == torch.bool)
        if not integer or values.ndim != 1:
            raise ValueError(f"{what} must be one dimension of int token ids, got {type(values).__name__} of "
                             f"shape {tuple(values.shape)} and dtype {values.dtype}")
        return values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a sequence of int token ids, got {values!r:.80}")
    values = list(values)
    for i, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{what}[{i}] is {value!r} ({type(value).__name__}); token ids are ints")
    return [int(value) for value in values]


def query_item_ids(values: Iterable) -> list[int]:
    """Item ids to look up, as ints; floats (5.9 would be truncated), strings and bools are named."""
    values = list(values)
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"item id {value!r} ({type(value).__name__}) is not an int; item ids are ints")
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"item id {value} is outside int64, so it is in no catalog")
    return [int(value) for value in values]


def _read_tokens(rows: Iterable[Sequence[int]], starts: np.ndarray, item_ids: np.ndarray, first_row: int):
    """The tokens of ``rows`` (which start at ``starts``) as int64. numpy would truncate 1.5, parse "7" and
    take True for 1, so anything but an int is an error naming it."""
    tokens = list(chain.from_iterable(rows))
    bad_types = {kind for kind in set(map(type, tokens)) if kind is not int and not issubclass(kind, np.integer)}
    if bad_types:
        pos = next(i for i, token in enumerate(tokens) if type(token) in bad_types)
        _token_error(pos, starts, item_ids, first_row, f"{tokens[pos]!r} ({type(tokens[pos]).__name__})")
    try:
        return np.fromiter(tokens, dtype=np.int64, count=len(tokens))
    except OverflowError:
        raise ValueError("token ids must fit in 64 bits") from None


def _token_error(pos: int, starts: np.ndarray, item_ids: np.ndarray, first_row: int, what: str):
    row = int(np.searchsorted(starts, pos, side="right") - 1)
    seq = first_row + row
    raise ValueError(
        f"sequence {seq} (item {item_ids[seq]}) holds {what} at position {pos - starts[row]}; sequences are "
        "given as int token ids >= 0, without EOS"
    )


def _check_tokens(tokens: np.ndarray, starts: np.ndarray, eos: int, item_ids: np.ndarray, first_row: int) -> None:
    """Rejects negative ids and EOS inside rows ``first_row, ...`` (``tokens``, rows starting at ``starts``)."""
    for bad_mask, what in ((tokens < 0, "the negative token id {}"), (tokens == eos, "the EOS id {}")):
        if bad_mask.any():
            pos = int(np.flatnonzero(bad_mask)[0])
            _token_error(pos, starts, item_ids, first_row, what.format(int(tokens[pos])))


_IDENTICAL = np.iinfo(np.int32).max  # first_diff of a row equal to its predecessor


def _flat_tokens(seqs: Iterable[Sequence[int]], lengths: np.ndarray, eos: int, item_ids: np.ndarray):
    """Every sequence followed by EOS, in one array of the narrowest token dtype, and each one's start.

    Read in chunks of about a million tokens, so the int64 staging never holds the whole catalog.
    """
    num_rows = len(lengths)
    starts = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=starts[1:])
    flat = np.full(int(starts[-1]), eos, dtype=_token_dtype(eos))
    rows = iter(seqs)
    chunk_rows = max(1, 2**20 * num_rows // int(starts[-1]))
    for lo in range(0, num_rows, chunk_rows):
        hi = min(lo + chunk_rows, num_rows)
        row_starts = starts[lo:hi] - starts[lo] - np.arange(hi - lo)  # without the EOS slots
        tokens = _read_tokens(islice(rows, hi - lo), row_starts, item_ids, lo)
        _check_tokens(tokens, row_starts, eos, item_ids, lo)
        if tokens.max() > np.iinfo(flat.dtype).max:
            flat = flat.astype(_token_dtype(int(tokens.max())))
        region = flat[starts[lo] : starts[hi]]
        is_token = np.ones(len(region), dtype=bool)
        is_token[starts[lo + 1 : hi + 1] - starts[lo] - 1] = False
        region[is_token] = tokens
    return flat, starts[:-1]


def _token_dtype(max_token: int):
    """The narrowest dtype for stored tokens: uint16 covers most vocabularies (half of int32 at 1M titles)."""
    return np.uint16 if max_token < 2**16 else np.uint32 if max_token < 2**32 else np.int64


def _sorted_rows(flat: np.ndarray, starts: np.ndarray, eos: int, item_ids: np.ndarray):
    """The sequences (EOS appended) in lexicographic order, equal ones by item id, and per sorted row the
    first column where it differs from the row before (``_IDENTICAL``: nowhere, the same sequence).

    Most-significant-column-first refinement: column ``d`` is read only for rows still tied with another
    over columns ``< d``, so the work follows the shared prefixes, not rows x longest sequence.
    """
    num_rows = len(starts)
    position_dtype = _index_dtype(num_rows)
    # Every sort below is stable: equal sequences stay in id order.
    order = np.argsort(item_ids, kind="stable").astype(position_dtype)
    first_diff = np.full(num_rows, _IDENTICAL, dtype=np.int32)
    first_diff[0] = 0
    tied = np.arange(num_rows, dtype=position_dtype)  # positions (in `order`) still tied with a neighbour
    group = np.zeros(num_rows, dtype=position_dtype)  # per tied position: the first position of its tie group
    # Sorting by (group, column) as one int64 key is a fast stable sort over runs (groups are already in
    # order); lexsort is the fallback for token ids too large for that.
    width = int(flat.max()) + 1
    one_key = num_rows * width < 2**62
    depth = 0
    while len(tied):
        rows = order[tied]
        where = starts[rows]
        where += depth
        column = flat[where]  # a row still tied has not passed its EOS
        del where
        # Groups keep their positions; inside each, rows are sorted by column.
        if one_key:
            key = group.astype(np.int64)
            key *= width
            key += column
            perm = np.argsort(key, kind="stable")
            del key
        else:
            perm = np.lexsort((column, group))
        order[tied] = rows[perm]
        column = column[perm]
        same_group = group[1:] == group[:-1]
        splits = same_group & (column[1:] != column[:-1])
        first_diff[tied[1:][splits]] = depth
        group_starts = np.ones(len(tied), dtype=bool)
        group_starts[1:] = ~same_group | splits
        first = np.flatnonzero(group_starts)
        sizes = np.diff(np.append(first, len(tied)))
        # Groups of one are placed; a group that just read EOS holds equal sequences, also placed.
        keep = (np.repeat(sizes, sizes) > 1) & (column != eos)
        group = np.repeat(tied[first], sizes)[keep]
        tied = tied[keep]
        depth += 1
    return order, first_diff


def _gather_sequences(flat: np.ndarray, starts: np.ndarray, rows: np.ndarray, seq_offsets: np.ndarray) -> np.ndarray:
    """``seq_tokens``: sequence ``s`` is row ``rows[s]`` of ``flat`` (EOS included), at ``seq_offsets[s]``."""
    seq_tokens = np.empty(int(seq_offsets[-1]), dtype=flat.dtype)
    # In chunks of about 256k tokens: the index arrays cost 8 bytes a token.
    step = max(1, len(rows) * 2**18 // len(seq_tokens))
    for lo in range(0, len(rows), step):
        hi = min(lo + step, len(rows))
        a, b = int(seq_offsets[lo]), int(seq_offsets[hi])
        source = np.repeat(starts[rows[lo:hi]] - seq_offsets[lo:hi], np.diff(seq_offsets[lo : hi + 1]))
        source += np.arange(a, b)
        seq_tokens[a:b] = flat[source]
    return seq_tokens


def _index_dtype(max_value: int):
    return np.int32 if max_value < 2**31 else np.int64


def _compile(seqs: Iterable[Sequence[int]], lengths: np.ndarray, eos: int, item_ids: np.ndarray) -> dict:
    """Sorts the sequences and derives the flat arrays described in ``constrained_rec.trie.trie``."""
    num_rows = len(lengths)
    flat, starts = _flat_tokens(seqs, lengths, eos, item_ids)
    order, first_diff = _sorted_rows(flat, starts, eos, item_ids)
    distinct = first_diff != _IDENTICAL
    index_dtype = _index_dtype(len(flat))
    seq_item_offsets = np.append(np.flatnonzero(distinct), num_rows).astype(index_dtype)
    item_ids_by_position = item_ids[order]
    build_positions = np.empty(num_rows, dtype=_index_dtype(num_rows))
    build_positions[order] = np.arange(num_rows, dtype=build_positions.dtype)
    seq_rows = order[distinct]
    del order
    first_diff = first_diff[distinct]
    row_lengths = (lengths[seq_rows] + 1).astype(np.int32)  # + EOS
    seq_offsets = np.zeros(len(seq_rows) + 1, dtype=index_dtype)
    np.cumsum(row_lengths, out=seq_offsets[1:])
    seq_tokens = _gather_sequences(flat, starts, seq_rows, seq_offsets)
    del flat, starts  # free them before the node arrays are built (peak memory)
    return {
        "seq_tokens": seq_tokens,
        "seq_offsets": seq_offsets,
        "seq_item_offsets": seq_item_offsets,
        "item_ids_by_position": item_ids_by_position,
        **_branching_nodes(seq_tokens, seq_offsets, first_diff, row_lengths),
        "build_positions": build_positions,
    }


def _node_levels(first_diff: np.ndarray, row_lengths: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per depth, the (first, end) sequence of each branching-node child at that depth, sorted.

    Level d holds the nodes for prefixes of length d + 1: started by sequences that differ from their
    predecessor within the first d + 1 tokens, under a parent prefix (length d) that at least two
    sequences share (otherwise the parent is a tail and needs no children). Only sequences sharing d
    tokens with a neighbour are looked at for level d, so the work is bounded by the shared prefixes.
    """
    num_seqs = len(row_lengths)
    # shared[i]: length of the longest prefix sequence i shares with another sequence.
    shared = first_diff.copy()
    shared[:-1] = np.maximum(shared[:-1], first_diff[1:])
    if num_seqs == 1:
        shared[:] = -1  # the root covers one sequence: it is a tail, and no node needs children
    node_index_dtype = _index_dtype(num_seqs)
    candidates = np.arange(num_seqs, dtype=node_index_dtype)
    parent_los, parent_his = np.zeros(1, dtype=node_index_dtype), np.array([num_seqs], dtype=node_index_dtype)
    levels = []
    depth = 0
    while True:
        candidates = candidates[shared[candidates] >= depth]
        los = candidates[(first_diff[candidates] <= depth) & (row_lengths[candidates] > depth)]
        if len(los) == 0:
            return levels
        # The children of a branching node partition its sequences: a child ends where its next
        # sibling starts, the last one where its parent ends.
        parent = np.searchsorted(parent_los, los, side="right") - 1
        his = np.minimum(np.append(los[1:], num_seqs), parent_his[parent]).astype(node_index_dtype)
        levels.append((los, his))
        parent_los, parent_his = los, his
        depth += 1


def _branching_nodes(seq_tokens: np.ndarray, seq_offsets: np.ndarray, first_diff: np.ndarray,
                     row_lengths: np.ndarray) -> dict:
    """The CSR node arrays (``child_offsets``, ``node_tokens``, ``node_seq_lo``, ``node_seq_hi``)."""
    num_seqs = len(row_lengths)
    levels = _node_levels(first_diff, row_lengths)
    level_bases = np.cumsum([1] + [len(los) for los, _ in levels])
    num_nodes = int(level_bases[-1])
    node_tokens = np.empty(num_nodes, dtype=seq_tokens.dtype)
    node_seq_lo = np.empty(num_nodes, dtype=_index_dtype(num_seqs))
    node_seq_hi = np.empty(num_nodes, dtype=node_seq_lo.dtype)
    child_offsets = np.empty(num_nodes + 1, dtype=_index_dtype(num_nodes + 1))
    node_tokens[0] = 0  # the root has no entry token; never read
    node_seq_lo[0], node_seq_hi[0] = 0, num_seqs
    child_offsets[0] = 1
    child_offsets[-1] = num_nodes
    parent_los = np.zeros(1, dtype=np.int64)  # the root starts at sequence 0
    parent_base = 0
    for depth, (los, his) in enumerate(levels):
        base = int(level_bases[depth])
        node_tokens[base : base + len(los)] = seq_tokens[seq_offsets[los] + depth]
        node_seq_lo[base : base + len(los)] = los
        node_seq_hi[base : base + len(los)] = his
        # Children of the previous level's nodes are contiguous runs of this level's nodes.
        first_child = np.searchsorted(los, parent_los, side="left")
        child_offsets[parent_base : parent_base + len(parent_los)] = base + first_child
        parent_los, parent_base = los, base
    # Nodes of the deepest level have no children. Tails need no fix-up: no node of the next level
    # starts inside a tail's range, so its first child equals its successor's (an empty range).
    child_offsets[parent_base : parent_base + len(parent_los)] = num_nodes
    return {"child_offsets": child_offsets, "node_tokens": node_tokens, "node_seq_lo": node_seq_lo,
            "node_seq_hi": node_seq_hi}
