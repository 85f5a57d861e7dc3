"""Numba kernels: walk generated ids through a ``TitleTrie``'s flat arrays and mask scores in place.

The arrays are those of ``constrained_rec.trie`` (see its module docstring). Every kernel is compiled
with a disk cache (``kernels/jit.py``), so a new process loads machine code instead of paying the JIT.
Scores reach the mask kernel as an integer view of their bits, so one kernel serves float32, float16,
bfloat16 and float64 (numba has no bfloat16): "masked" is the bit pattern of -inf in that dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from constrained_rec.kernels.jit import cached_njit

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


@cached_njit(nogil=True)
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


# A node with more children than this is masked through a dense allowed-token array, built once per
# (node, prompt) and shared by every row there (all rows sit at the root on the first step).
WIDE_NODE = 64


@cached_njit(nogil=True)
def _all_excluded(item_lo, item_hi, excluded):
    """True if every position in item_lo:item_hi is in the sorted array `excluded`."""
    if len(excluded) == 0:
        return False
    inside = np.searchsorted(excluded, item_hi) - np.searchsorted(excluded, item_lo)
    return inside >= item_hi - item_lo


@cached_njit(nogil=True)
def _dense_allowed(allowed, node, child_offsets, node_tokens, node_seq_lo, node_seq_hi, seq_item_offsets, excluded):
    """Marks the allowed children of `node` in `allowed`; returns how many there are.

    Exclusion costs one step per child that holds an excluded item, not one per child: `excluded` is
    scanned within the node's item range, jumping from child to child.
    """
    a = child_offsets[node]
    b = child_offsets[node + 1]
    allowed[:] = False
    for c in range(a, b):
        allowed[node_tokens[c]] = True
    kept = b - a
    k = np.searchsorted(excluded, seq_item_offsets[node_seq_lo[node]])
    end = np.searchsorted(excluded, seq_item_offsets[node_seq_hi[node]])
    while k < end:
        seq = np.searchsorted(seq_item_offsets, excluded[k], side="right") - 1
        c = a + np.searchsorted(node_seq_lo[a:b], seq, side="right") - 1
        child_hi = seq_item_offsets[node_seq_hi[c]]
        next_k = np.searchsorted(excluded, child_hi)
        if next_k - k >= child_hi - seq_item_offsets[node_seq_lo[c]]:
            allowed[node_tokens[c]] = False
            kept -= 1
        k = next_k
    return kept


@cached_njit(nogil=True)
def _keep_list(status, node, lo, depth, seq_tokens, seq_offsets, child_offsets, node_tokens, node_seq_lo,
               node_seq_hi, seq_item_offsets, excluded, eos, pad):
    """The allowed next tokens of a row that is finished, in a tail, or at a narrow node."""
    if status == FINISHED:
        if pad >= 0 and pad != eos:
            keep = np.empty(2, dtype=np.int64)
            keep[0] = eos
            keep[1] = pad
            return keep
        keep = np.empty(1, dtype=np.int64)
        keep[0] = eos
        return keep
    if node_seq_hi[node] - node_seq_lo[node] == 1:  # a tail: the rest of one sequence
        keep = np.empty(1, dtype=np.int64)
        if _all_excluded(seq_item_offsets[lo], seq_item_offsets[lo + 1], excluded):
            return keep[:0]
        keep[0] = seq_tokens[seq_offsets[lo] + depth]
        return keep
    a = child_offsets[node]
    b = child_offsets[node + 1]
    keep = np.empty(b - a, dtype=np.int64)
    kept = 0
    for c in range(a, b):
        if not _all_excluded(seq_item_offsets[node_seq_lo[c]], seq_item_offsets[node_seq_hi[c]], excluded):
            keep[kept] = node_tokens[c]
            kept += 1
    return keep[:kept]


@cached_njit(nogil=True)
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
    """Sets every score but the allowed next tokens to -inf, with one write pass over each row.

    Rows whose status ends up OFF_TRIE or NOTHING_ALLOWED are left untouched; the caller raises.
    """
    num_rows, num_steps = generated.shape
    num_prompts = len(excluded_offsets) - 1
    nodes = np.empty(num_rows, dtype=np.int64)
    seq_los = np.empty(num_rows, dtype=np.int64)
    group_key = np.full(num_rows, -1, dtype=np.int64)
    for r in range(num_rows):
        status, node, lo, hi, depth = walk_row(
            generated[r], num_steps, seq_tokens, seq_offsets, child_offsets, node_tokens, node_seq_lo, node_seq_hi, eos
        )
        status_out[r] = status
        depth_out[r] = depth
        nodes[r] = node
        seq_los[r] = lo
        if status == IN_TRIE and hi - lo > 1 and child_offsets[node + 1] - child_offsets[node] > WIDE_NODE:
            group_key[r] = node * num_prompts + min(r // rows_per_prompt, num_prompts - 1)

    # Rows at wide nodes, a group of rows per (node, prompt): one dense allowed array per group.
    order = np.argsort(group_key)
    allowed = np.empty(score_bits.shape[1], dtype=np.bool_)
    i = 0
    while i < num_rows:
        key = group_key[order[i]]
        j = i + 1
        while j < num_rows and group_key[order[j]] == key:
            j += 1
        if key >= 0:
            first = order[i]
            prompt = min(first // rows_per_prompt, num_prompts - 1)
            prompt_excluded = excluded[excluded_offsets[prompt] : excluded_offsets[prompt + 1]]
            kept = _dense_allowed(allowed, nodes[first], child_offsets, node_tokens, node_seq_lo, node_seq_hi,
                                  seq_item_offsets, prompt_excluded)
            for g in range(i, j):
                r = order[g]
                if kept == 0:
                    status_out[r] = NOTHING_ALLOWED
                    continue
                row = score_bits[r]
                for v in range(len(row)):  # branch-free, so that it vectorises
                    row[v] = row[v] if allowed[v] else neg_inf_bits
        i = j

    # Every other row: save its few allowed scores, fill the row, put them back.
    for r in range(num_rows):
        if group_key[r] >= 0 or status_out[r] == OFF_TRIE:
            continue
        prompt = min(r // rows_per_prompt, num_prompts - 1)
        keep = _keep_list(status_out[r], nodes[r], seq_los[r], depth_out[r], seq_tokens, seq_offsets, child_offsets,
                          node_tokens, node_seq_lo, node_seq_hi, seq_item_offsets,
                          excluded[excluded_offsets[prompt] : excluded_offsets[prompt + 1]], eos, pad)
        if len(keep) == 0:
            status_out[r] = NOTHING_ALLOWED
            continue
        row = score_bits[r]
        saved = np.empty(len(keep), dtype=score_bits.dtype)
        for k in range(len(keep)):
            saved[k] = row[keep[k]]
        row[:] = neg_inf_bits
        for k in range(len(keep)):
            row[keep[k]] = saved[k]
