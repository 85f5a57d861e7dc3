"""Numba kernels: walk generated ids through a ``TitleTrie``'s flat arrays and mask scores in place.

The arrays are those of ``constrained_rec.trie`` (see its module docstring). Every kernel is compiled
with ``cache=True``, so a new process loads machine code from ``__pycache__`` instead of paying the JIT.
Scores reach the mask kernel as an integer view of their bits, so one kernel serves float32, float16,
bfloat16 and float64 (numba has no bfloat16): "masked" is the bit pattern of -inf in that dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

# Walk outcomes (also the per-row status the mask kernel reports).
IN_TRIE = 0  # the ids are a proper prefix of some sequence: the row continues
FINISHED = 1  # the ids reached EOS: a complete title; what follows is padding
OFF_TRIE = 2  # the ids left the trie at position `depth`
NOTHING_ALLOWED = 3  # exclusion removed every title below the row's prefix


class WalkState(NamedTuple):
    status: int
    node: int  # deepest branching node reached (a tail node once the prefix has one completion)
    seq_lo: int  # the sequences the prefix can still become: seq_lo:seq_hi
    seq_hi: int
    depth: int  # ids consumed (IN_TRIE, FINISHED) or position of the first id off the trie (OFF_TRIE)


@njit(cache=True, nogil=True)
def walk_row(ids, num_ids, seq_tokens, seq_offsets, child_offsets, node_tokens, node_seq_lo, node_seq_hi, eos):
    node = 0
    lo = node_seq_lo[0]
    hi = node_seq_hi[0]
    for t in range(num_ids):
        tok = ids[t]
        if hi - lo == 1:
            # A tail: one completion left, read it from the sequence itself.
            if seq_tokens[seq_offsets[lo] + t] != tok:
                return OFF_TRIE, node, lo, hi, t
        else:
            a = child_offsets[node]
            b = child_offsets[node + 1]
            c = a + np.searchsorted(node_tokens[a:b], tok)
            if c == b or node_tokens[c] != tok:
                return OFF_TRIE, node, lo, hi, t
            node = c
            lo = node_seq_lo[c]
            hi = node_seq_hi[c]
        if tok == eos:
            return FINISHED, node, lo, hi, t + 1
    return IN_TRIE, node, lo, hi, num_ids


def walk_prefix(ids, seq_tokens, seq_offsets, child_offsets, node_tokens, node_seq_lo, node_seq_hi, eos) -> WalkState:
    """Walks one id sequence from the root; see :class:`WalkState`."""
    state = walk_row(ids, len(ids), seq_tokens, seq_offsets, child_offsets, node_tokens, node_seq_lo, node_seq_hi, eos)
    return WalkState(*(int(x) for x in state))


@njit(cache=True, nogil=True)
def _all_excluded(item_lo, item_hi, excluded):
    """True if every position in item_lo:item_hi is in the sorted array `excluded`."""
    if len(excluded) == 0:
        return False
    inside = np.searchsorted(excluded, item_hi) - np.searchsorted(excluded, item_lo)
    return inside >= item_hi - item_lo


@njit(cache=True, nogil=True)
def mask_scores(
    score_bits,  # (rows, vocab) integer view of the scores, modified in place
    generated,  # (rows, steps) int64 generated ids
    seq_tokens,
    seq_offsets,
    child_offsets,
    node_tokens,
    node_seq_lo,
    node_seq_hi,
    seq_item_offsets,
    excluded,  # concatenated sorted excluded item positions of every prompt
    excluded_offsets,  # (prompts + 1,) prompt p's positions are excluded[excluded_offsets[p]:excluded_offsets[p+1]]
    rows_per_prompt,
    eos,
    pad,  # -1 if none
    neg_inf_bits,
    status_out,  # (rows,) int64: a walk outcome per row
    depth_out,  # (rows,) int64: WalkState.depth per row
):
    """Sets every score but the allowed next tokens to -inf, row by row, in one pass over each row."""
    num_rows, num_steps = generated.shape
    for r in range(num_rows):
        status, node, lo, hi, depth = walk_row(
            generated[r], num_steps, seq_tokens, seq_offsets, child_offsets, node_tokens, node_seq_lo, node_seq_hi, eos
        )
        depth_out[r] = depth
        status_out[r] = status
        if status == OFF_TRIE:
            continue  # the caller raises; leave the row as it was
        prompt = r // rows_per_prompt
        prompt_excluded = excluded[excluded_offsets[prompt] : excluded_offsets[prompt + 1]]
        row = score_bits[r]
        if status == FINISHED:
            keep = np.empty(2, dtype=np.int64)
            keep[0] = eos
            kept = 1
            if pad >= 0 and pad != eos:
                keep[1] = pad
                kept = 2
        elif hi - lo == 1:
            keep = np.empty(1, dtype=np.int64)
            kept = 0
            if not _all_excluded(seq_item_offsets[lo], seq_item_offsets[lo + 1], prompt_excluded):
                keep[0] = seq_tokens[seq_offsets[lo] + depth]
                kept = 1
        else:
            a = child_offsets[node]
            b = child_offsets[node + 1]
            keep = np.empty(b - a, dtype=np.int64)
            kept = 0
            for c in range(a, b):
                if not _all_excluded(seq_item_offsets[node_seq_lo[c]], seq_item_offsets[node_seq_hi[c]], prompt_excluded):
                    keep[kept] = node_tokens[c]
                    kept += 1
        if kept == 0:
            status_out[r] = NOTHING_ALLOWED
            continue
        saved = np.empty(kept, dtype=score_bits.dtype)
        for i in range(kept):
            saved[i] = row[keep[i]]
        row[:] = neg_inf_bits
        for i in range(kept):
            row[keep[i]] = saved[i]
