"""Numba kernels: walk generated ids through a ``TitleTrie``'s flat arrays and mask scores in place.

The arrays are those of ``constrained_rec.trie.trie`` (see its module docstring), handed over as one
:class:`TrieArrays`; what a request allows (excluded items, an item prior) arrives as one
:class:`MaskConstraints`. Every kernel is compiled with a disk cache (``kernels/jit.py``), so a new
process loads machine code instead of paying the JIT. Without a prior, scores reach the mask kernel as an
integer view of their bits, so one kernel serves float32, float16, bfloat16 and float64 (numba has no
bfloat16): "masked" is the bit pattern of -inf in that dtype. With a prior the kernel adds values, so it
gets float32 or float64 scores (the caller upcasts half precision).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from constrained_rec.kernels.jit import cached_njit

# Walk outcomes (also the per-row status the mask kernel reports).
IN_TRIE = 0  # the ids are a proper prefix of some sequence: the row continues
FINISHED = 1  # the ids reached EOS: a complete title; what follows is padding
OFF_TRIE = 2  # the ids left the trie at position `depth`
NOTHING_ALLOWED = 3  # exclusion (zero prior mass) removed every title below the row's prefix
ALL_BANNED = 4  # the trie allows tokens, but every one of them already scored -inf (another processor)
PRIOR_OVERFLOW = 5  # a finite score plus its prior increment fell below the score dtype's range (weight too large)


class TrieArrays(NamedTuple):
    """The flat arrays of a ``TitleTrie`` that every walk reads, and its EOS id (see ``constrained_rec.trie.trie``)."""

    seq_tokens: np.ndarray
    seq_offsets: np.ndarray
    seq_item_offsets: np.ndarray
    child_offsets: np.ndarray
    node_tokens: np.ndarray
    node_seq_lo: np.ndarray
    node_seq_hi: np.ndarray
    eos: int


class MaskConstraints(NamedTuple):
    """What the kernels read of a ``constrained_rec.decoding.constraints.ItemConstraints``, per prompt ``p``.

    ``excluded[excluded_offsets[p]:excluded_offsets[p + 1]]`` are the sorted positions of the items ``p`` may
    not get (excluded, or of zero prior mass). With a prior, ``prior_node_log[p, n]`` is the prior's lookahead
    ``L(n)`` at trie node ``n`` (float64): the log of the mass under ``n`` (``"sum"``, ``L(root) = 0``) or of the
    largest title mass under ``n`` (``"max"``), both over masses normalised to 1 over the allowed items, ``-inf``
    where nothing under ``n`` is allowed. A child ``c`` of ``n`` adds ``prior_weight * min(L(c) - L(n), 0)``.
    Without a prior ``prior_node_log`` has no rows.
    """

    excluded: np.ndarray
    excluded_offsets: np.ndarray
    prior_node_log: np.ndarray
    prior_weight: float


class WalkState(NamedTuple):
    status: int
    node: int  # deepest branching node reached (a tail node once the prefix has one completion)
    seq_lo: int  # the sequences the prefix can still become: seq_lo:seq_hi
    seq_hi: int
    depth: int  # ids consumed (IN_TRIE, FINISHED) or position of the first id off the trie (OFF_TRIE)


@cached_njit(nogil=True)
def walk_row(ids, num_ids, trie):
    node = 0
    lo = trie.node_seq_lo[0]
    hi = trie.node_seq_hi[0]
    for t in range(num_ids):
        tok = ids[t]
        if hi - lo == 1:
            # A tail: one completion left, read it from the sequence itself.
            if trie.seq_tokens[trie.seq_offsets[lo] + t] != tok:
                return OFF_TRIE, node, lo, hi, t
        else:
            a = trie.child_offsets[node]
            b = trie.child_offsets[node + 1]
            c = a + np.searchsorted(trie.node_tokens[a:b], tok)
            if c == b or trie.node_tokens[c] != tok:
                return OFF_TRIE, node, lo, hi, t
            node = c
            lo = trie.node_seq_lo[c]
            hi = trie.node_seq_hi[c]
        if tok == trie.eos:
            return FINISHED, node, lo, hi, t + 1
    return IN_TRIE, node, lo, hi, num_ids


def walk_prefix(ids, trie: TrieArrays) -> WalkState:
    """Walks one id sequence from the root; see :class:`WalkState`."""
    return WalkState(*(int(x) for x in walk_row(ids, len(ids), trie)))


# ---------------------------------------------------------------------- the allowed-item rule
@cached_njit(nogil=True)
def range_allowed(constraints, prompt, item_lo, item_hi):
    """True if the item positions item_lo:item_hi hold an item that `prompt` may still get.

    For one range (ints) or, element-wise, for arrays of ranges (the Python searches in
    ``constrained_rec.decoding`` ask through ``ItemConstraints.allowed``). The one place this rule is written
    for Numba (the torch kernel has its twin, ``torch_mask.ranges_allowed``).
    """
    excluded = constraints.excluded[constraints.excluded_offsets[prompt] : constraints.excluded_offsets[prompt + 1]]
    if len(excluded) == 0:
        return item_hi > item_lo
    inside = np.searchsorted(excluded, item_hi) - np.searchsorted(excluded, item_lo)
    return inside < item_hi - item_lo


@cached_njit(nogil=True)
def node_log_values(trie, seq_log, use_max, out):
    """Fills ``out[n]`` for every node: the log-sum-exp (or, with `use_max`, the max) of ``seq_log`` over the
    sequences under ``n``.

    Bottom-up (a child's id is above its parent's in BFS numbering), adding only non-negative masses in log
    space: no prefix sum is ever subtracted, so a node's value is exact to float64 rounding whatever the mass
    of its neighbours in trie order.
    """
    for n in range(len(trie.node_tokens) - 1, -1, -1):
        if trie.node_seq_hi[n] - trie.node_seq_lo[n] == 1:
            out[n] = seq_log[trie.node_seq_lo[n]]
            continue
        acc = -np.inf
        for c in range(trie.child_offsets[n], trie.child_offsets[n + 1]):
            value = out[c]
            if use_max or value == -np.inf or acc == -np.inf:
                acc = max(acc, value)
            elif value > acc:
                acc = value + np.log1p(np.exp(acc - value))
            else:
                acc = acc + np.log1p(np.exp(value - acc))
        out[n] = acc


@cached_njit(nogil=True)
def prior_increment(constraints, prompt, parent, child):
    """``w * min(L(child) - L(parent), 0)``: what moving from node `parent` to its child `child` adds.

    The one place the increment is written for Numba (the torch kernel has its twin in ``mask_scores_torch``,
    the Python searches theirs in ``decoding.steps``). ``L`` never rises from parent to child; the clamp only
    guards that, since best-first search needs increments <= 0.
    """
    values = constraints.prior_node_log[prompt]
    return constraints.prior_weight * min(values[child] - values[parent], 0.0)


# ---------------------------------------------------------------------- masking
# A node with more children than this is masked through a dense allowed-token array, shared by every row at
# the node (all rows sit at the root on the first step): its children are marked once per node, and each prompt
# only clears the children it excludes (and, with a prior, writes its increments).
WIDE_NODE = 64


@cached_njit(nogil=True)
def _exclude_children(allowed, flipped, node, trie, constraints, prompt):
    """Clears in `allowed` (set for every child of `node`) the children whose items `prompt` excludes, and
    records their tokens in `flipped`; returns how many it cleared.

    One step per child that holds an excluded item, not one per child: the prompt's excluded positions are
    scanned within the node's item range, jumping from child to child.
    """
    a = trie.child_offsets[node]
    b = trie.child_offsets[node + 1]
    item_offsets = trie.seq_item_offsets
    excluded = constraints.excluded[constraints.excluded_offsets[prompt] : constraints.excluded_offsets[prompt + 1]]
    k = np.searchsorted(excluded, item_offsets[trie.node_seq_lo[node]])
    end = np.searchsorted(excluded, item_offsets[trie.node_seq_hi[node]])
    cleared = 0
    while k < end:
        seq = np.searchsorted(item_offsets, excluded[k], side="right") - 1
        c = a + np.searchsorted(trie.node_seq_lo[a:b], seq, side="right") - 1
        child_hi = item_offsets[trie.node_seq_hi[c]]
        if not range_allowed(constraints, prompt, item_offsets[trie.node_seq_lo[c]], child_hi):
            allowed[trie.node_tokens[c]] = False
            flipped[cleared] = trie.node_tokens[c]
            cleared += 1
        k = np.searchsorted(excluded, child_hi)
    return cleared


@cached_njit(nogil=True)
def _dense_increments(increment, node, trie, constraints, prompt):
    """``increment[token]`` for every child of `node`: prior_increment's formula, inlined so that the loop
    reads the node values as one array (children nothing is allowed under get -inf or nan; they are masked)."""
    values = constraints.prior_node_log[prompt]
    weight = constraints.prior_weight
    parent = values[node]
    for c in range(trie.child_offsets[node], trie.child_offsets[node + 1]):
        increment[trie.node_tokens[c]] = weight * min(values[c] - parent, 0.0)


@cached_njit(nogil=True)
def _row_candidates(status, node, lo, depth, trie, constraints, prompt, pad, with_prior):
    """The allowed next tokens of a row that is finished, in a tail, or at a narrow node, and their increments."""
    if status == FINISHED:  # EOS (or pad) only, and no increment: the title's mass is spent
        keep = np.empty(2 if pad >= 0 and pad != trie.eos else 1, dtype=np.int64)
        keep[0] = trie.eos
        keep[-1] = pad if len(keep) == 2 else trie.eos
        return keep, np.zeros(len(keep))
    item_offsets = trie.seq_item_offsets
    if trie.node_seq_hi[node] - trie.node_seq_lo[node] == 1:  # a tail: the rest of one sequence
        keep = np.empty(1, dtype=np.int64)
        if not range_allowed(constraints, prompt, item_offsets[lo], item_offsets[lo + 1]):
            return keep[:0], np.zeros(0)
        keep[0] = trie.seq_tokens[trie.seq_offsets[lo] + depth]
        return keep, np.zeros(1)  # the prefix already holds all of its title's mass
    a = trie.child_offsets[node]
    b = trie.child_offsets[node + 1]
    keep = np.empty(b - a, dtype=np.int64)
    increment = np.zeros(b - a)
    kept = 0
    for c in range(a, b):
        if range_allowed(constraints, prompt, item_offsets[trie.node_seq_lo[c]], item_offsets[trie.node_seq_hi[c]]):
            keep[kept] = trie.node_tokens[c]
            if with_prior:
                increment[kept] = prior_increment(constraints, prompt, node, c)
            kept += 1
    return keep[:kept], increment[:kept]


@cached_njit(nogil=True)
def _walk_rows(generated, trie, num_prompts, rows_per_prompt, status_out, depth_out, nodes, seq_los):
    """Walks every row; returns each row's group key: (node, prompt) for rows at wide nodes, else -1."""
    num_rows, num_steps = generated.shape
    group_key = np.full(num_rows, -1, dtype=np.int64)
    for r in range(num_rows):
        status, node, lo, hi, depth = walk_row(generated[r], num_steps, trie)
        status_out[r] = status
        depth_out[r] = depth
        nodes[r] = node
        seq_los[r] = lo
        if status == IN_TRIE and hi - lo > 1 and trie.child_offsets[node + 1] - trie.child_offsets[node] > WIDE_NODE:
            group_key[r] = node * num_prompts + min(r // rows_per_prompt, num_prompts - 1)
    return group_key


# A row at a wide node whose children are fewer than vocab / SPARSE_FILL_RATIO is filled with -inf and its
# allowed scores put back (a write-only pass), not selected column by column (a read-modify-write that costs
# as much as a copy, and more than the fill wherever few columns survive). Without a prior, a row at a node
# that allows all but fewer than vocab / SPARSE_FILL_RATIO columns gets -inf written at those columns only.
SPARSE_FILL_RATIO = 8


@cached_njit(nogil=True)
def _keep_only(row, tokens, allowed, increment, neg_inf, limit, with_prior, saved):
    """Sets `row` to `neg_inf` except at the `tokens` that are `allowed`, whose scores are kept (plus their
    increments, with a prior). Returns whether a finite score fell below -`limit` once its increment was added."""
    kept = 0
    overflow = False
    for tok in tokens:
        if allowed[tok]:
            if with_prior:
                saved[kept] = row[tok] + increment[tok]
                overflow = overflow or (row[tok] != neg_inf and saved[kept] < -limit)
            else:
                saved[kept] = row[tok]
            kept += 1
    row[:] = neg_inf
    kept = 0
    for tok in tokens:
        if allowed[tok]:
            row[tok] = saved[kept]
            kept += 1
    return overflow


@cached_njit(nogil=True)
def _add_dense(row, allowed, increment, neg_inf, limit):
    """Adds the increments to the `allowed` columns of `row` and masks the others, in one branch-free pass
    (so that it vectorises). Returns whether a finite score fell below -`limit` once its increment was added."""
    overflows = 0
    for v in range(len(row)):
        before = row[v]
        after = before + increment[v]
        row[v] = after if allowed[v] else neg_inf
        # A product of 0/1 ints rather than a chain of bools: LLVM vectorises this reduction.
        overflows += np.int32(allowed[v]) * np.int32(before != neg_inf) * np.int32(after < -limit)
    return overflows > 0


@cached_njit(nogil=True)
def _mask_row(row, children, allowed, increment, banned_columns, complement, neg_inf, limit, with_prior, sparse, saved):
    """Masks one row at a wide node (see SPARSE_FILL_RATIO); returns its status (IN_TRIE when all went well).
    With `complement`, `banned_columns` are every column the row may not keep."""
    if sparse:
        overflow = _keep_only(row, children, allowed, increment, neg_inf, limit, with_prior, saved)
    elif with_prior:
        overflow = _add_dense(row, allowed, increment, neg_inf, limit)
    elif complement:
        overflow = False
        for v in banned_columns:
            row[v] = neg_inf
    else:
        overflow = False
        for v in range(len(row)):
            row[v] = row[v] if allowed[v] else neg_inf
    if overflow:
        return PRIOR_OVERFLOW
    for tok in children:
        if allowed[tok] and row[tok] != neg_inf:
            return IN_TRIE
    return ALL_BANNED


@cached_njit(nogil=True)
def _mask_wide_rows(scores, group_key, nodes, trie, constraints, rows_per_prompt, neg_inf, limit, with_prior,
                    status_out):
    """Masks the rows at wide nodes, a group of rows per (node, prompt) sharing one dense allowed array."""
    num_rows, vocab = scores.shape
    num_prompts = len(constraints.excluded_offsets) - 1
    order = np.argsort(group_key)
    allowed = np.empty(vocab, dtype=np.bool_)
    increment = np.zeros(vocab if with_prior else 0, dtype=scores.dtype)  # rounded to the scores' dtype
    saved = np.empty(0, dtype=scores.dtype)
    flipped = np.empty(_max_excluded(constraints), dtype=np.int64)
    cleared = 0
    allowed_node = -1  # the node whose children `allowed` holds, less the `cleared` tokens of `flipped`
    banned_columns = np.empty(0, dtype=np.int64)  # the node's non-children, where a complement fill applies
    i = 0
    while i < num_rows:
        key = group_key[order[i]]
        j = i + 1
        while j < num_rows and group_key[order[j]] == key:
            j += 1
        if key >= 0:
            node = nodes[order[i]]
            prompt = min(order[i] // rows_per_prompt, num_prompts - 1)
            children = trie.node_tokens[trie.child_offsets[node] : trie.child_offsets[node + 1]]
            sparse = len(children) * SPARSE_FILL_RATIO < vocab
            complement = not with_prior and (vocab - len(children)) * SPARSE_FILL_RATIO < vocab
            # Groups of one node are consecutive (the key is node-major): its children are marked once, and
            # each prompt only flips the children it excludes.
            if node != allowed_node:
                allowed[:] = False
                allowed[children] = True
                allowed_node = node
                banned_columns = np.flatnonzero(~allowed) if complement else np.empty(0, dtype=np.int64)
            else:
                allowed[flipped[:cleared]] = True
            cleared = _exclude_children(allowed, flipped, node, trie, constraints, prompt)
            kept = len(children) - cleared
            if with_prior and kept > 0:
                _dense_increments(increment, node, trie, constraints, prompt)
            if sparse and len(saved) < len(children):
                saved = np.empty(len(children), dtype=scores.dtype)
            banned = np.concatenate((banned_columns, flipped[:cleared])) if complement else banned_columns
            for g in range(i, j):
                r = order[g]
                if kept == 0:
                    status_out[r] = NOTHING_ALLOWED
                    continue
                status = _mask_row(scores[r], children, allowed, increment, banned, complement, neg_inf, limit,
                                   with_prior, sparse, saved)
                if status != IN_TRIE:
                    status_out[r] = status
        i = j


@cached_njit(nogil=True)
def _max_excluded(constraints):
    """The most positions any prompt excludes."""
    offsets = constraints.excluded_offsets
    most = 0
    for p in range(len(offsets) - 1):
        most = max(most, offsets[p + 1] - offsets[p])
    return most


@cached_njit(nogil=True)
def mask_scores(scores, generated, trie, constraints, rows_per_prompt, pad, neg_inf, limit, status_out, depth_out):
    """Sets every score but the allowed next tokens to -inf, with one write pass over each row.

    Args:
        scores: (rows, vocab), modified in place. Without a prior: an integer view of the score bits and
            `neg_inf` the bit pattern of -inf. With a prior (``constraints.prior_node_log`` has rows): float32 or
            float64 scores, `neg_inf` = -inf, and each allowed token gets its prior increment (float64,
            rounded to the scores' dtype) added in that dtype.
        limit: with a prior, the largest finite value of the dtype the scores end up in (float16 scores are
            masked as float32, then cast back): a finite score that falls below -limit marks its row
            PRIOR_OVERFLOW, since -inf would read as a masked token.
        generated: (rows, steps) int64 generated ids. Row ``r`` belongs to prompt
            ``min(r // rows_per_prompt, prompts - 1)``.
        pad: the id finished rows may emit besides EOS; -1 if none.
        status_out, depth_out: (rows,) int64 outputs, a walk outcome and ``WalkState.depth`` per row.

    Rows whose status ends up OFF_TRIE or NOTHING_ALLOWED are left untouched; running rows whose allowed scores
    all were -inf already become ALL_BANNED (masked), and a PRIOR_OVERFLOW row may be masked or not. The caller
    raises for all four.
    """
    num_rows = generated.shape[0]
    vocab = scores.shape[1]
    if scores.shape[0] != num_rows or len(status_out) != num_rows or len(depth_out) != num_rows:
        raise ValueError("mask_scores: scores, generated and the outputs need one row per row")
    if trie.eos >= vocab or pad >= vocab:
        raise ValueError("mask_scores: EOS or pad id outside the score columns")
    num_prompts = len(constraints.excluded_offsets) - 1
    with_prior = constraints.prior_node_log.shape[0] > 0
    if with_prior and constraints.prior_node_log.shape[0] != num_prompts:
        raise ValueError("mask_scores: prior rows and exclusion prompts differ")
    nodes = np.empty(num_rows, dtype=np.int64)
    seq_los = np.empty(num_rows, dtype=np.int64)
    group_key = _walk_rows(generated, trie, num_prompts, rows_per_prompt, status_out, depth_out, nodes, seq_los)

    _mask_wide_rows(scores, group_key, nodes, trie, constraints, rows_per_prompt, neg_inf, limit, with_prior,
                    status_out)

    # Every other row: save its few allowed scores, fill the row, put them back.
    for r in range(num_rows):
        if group_key[r] >= 0 or status_out[r] == OFF_TRIE:
            continue
        prompt = min(r // rows_per_prompt, num_prompts - 1)
        keep, incr = _row_candidates(status_out[r], nodes[r], seq_los[r], depth_out[r], trie, constraints, prompt,
                                     pad, with_prior)
        if len(keep) == 0:
            status_out[r] = NOTHING_ALLOWED
            continue
        row = scores[r]
        saved = np.empty(len(keep), dtype=scores.dtype)
        rounded = np.empty(len(keep), dtype=scores.dtype)  # increments in the scores' dtype, as in the dense pass
        if with_prior:
            rounded[:] = incr
        banned = True
        overflow = False
        for k in range(len(keep)):
            saved[k] = row[keep[k]] + rounded[k] if with_prior else row[keep[k]]
            banned = banned and saved[k] == neg_inf
            overflow = overflow or (with_prior and row[keep[k]] != neg_inf and saved[k] < -limit)
        if overflow:
            status_out[r] = PRIOR_OVERFLOW
            continue
        row[:] = neg_inf
        for k in range(len(keep)):
            row[keep[k]] = saved[k]
        if banned and status_out[r] == IN_TRIE:  # a finished row's output is padding anyway
            status_out[r] = ALL_BANNED
