"""The same walk and mask as ``trie_walk``, in vectorised torch ops, for scores that live on a GPU.

No Python loop over rows and no host-to-device copy of a mask: the trie's arrays are copied to the
device once, the walk advances all rows one generated position at a time (a few ops per position),
and only the allowed (row, token) pairs are gathered, so the full-size write is a single ``fill_``.
Finding a child is one ``searchsorted`` over *edge keys* ``parent * key_base + token``: BFS numbering
keeps children contiguous and sorted, so the keys of nodes 1, 2, ... are strictly increasing. A
generated id outside ``0 <= id < key_base`` is no trie token, and is refused before it can form a key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from constrained_rec.kernels.trie_walk import (
    ALL_BANNED,
    FINISHED,
    IN_TRIE,
    NOTHING_ALLOWED,
    OFF_TRIE,
    PRIOR_OVERFLOW,
    MaskConstraints,
    TrieArrays,
)


@dataclass
class DeviceTrie:
    """A ``TrieArrays`` on one device, as int64 tensors, with the edge keys of its children."""

    seq_tokens: torch.Tensor
    seq_offsets: torch.Tensor
    seq_item_offsets: torch.Tensor
    child_offsets: torch.Tensor
    node_tokens: torch.Tensor
    node_seq_lo: torch.Tensor
    node_seq_hi: torch.Tensor
    eos: int
    edge_keys: torch.Tensor  # edge_keys[c - 1] = parent(c) * key_base + node_tokens[c], for nodes c >= 1
    key_base: int  # larger than every trie token

    @classmethod
    def from_arrays(cls, trie: TrieArrays, device) -> "DeviceTrie":
        def put(a):
            return torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)

        child_offsets = put(trie.child_offsets)
        node_tokens = put(trie.node_tokens)
        key_base = max(int(np.max(trie.seq_tokens)), 0) + 2
        parents = torch.repeat_interleave(
            torch.arange(len(trie.node_tokens), device=device), child_offsets[1:] - child_offsets[:-1]
        )
        edge_keys = parents * key_base + node_tokens[1:]
        return cls(put(trie.seq_tokens), put(trie.seq_offsets), put(trie.seq_item_offsets), child_offsets, node_tokens,
                   put(trie.node_seq_lo), put(trie.node_seq_hi), int(trie.eos), edge_keys, key_base)


@dataclass
class DeviceConstraints:
    """A ``MaskConstraints`` on one device: excluded positions as sorted keys ``prompt * (items + 1) + position``."""

    excluded_keys: torch.Tensor
    key_stride: int
    num_prompts: int
    prior_node_log: torch.Tensor | None  # float64 (prompts, nodes), or None without a prior
    prior_weight: float

    @classmethod
    def from_constraints(cls, constraints: MaskConstraints, num_items: int, device) -> "DeviceConstraints":
        counts = np.diff(constraints.excluded_offsets)
        prompts = np.repeat(np.arange(len(counts)), counts)
        keys = prompts * (num_items + 1) + np.asarray(constraints.excluded, dtype=np.int64)
        with_prior = constraints.prior_node_log.shape[0] > 0
        return cls(
            torch.as_tensor(keys, dtype=torch.long, device=device),
            num_items + 1,
            len(counts),
            torch.tensor(constraints.prior_node_log, device=device) if with_prior else None,
            float(constraints.prior_weight),
        )


def ranges_allowed(constraints: DeviceConstraints, prompts: torch.Tensor, item_lo: torch.Tensor,
                   item_hi: torch.Tensor) -> torch.Tensor:
    """Whether each item-position range item_lo:item_hi holds an item its prompt may still get.

    The torch twin of ``trie_walk.range_allowed``, the one place this rule is written for torch.
    """
    if len(constraints.excluded_keys) == 0:
        return item_hi > item_lo
    base = prompts * constraints.key_stride
    keys = constraints.excluded_keys
    inside = torch.searchsorted(keys, base + item_hi) - torch.searchsorted(keys, base + item_lo)
    return inside < item_hi - item_lo


def walk_rows(trie: DeviceTrie, generated: torch.Tensor):
    """Walks every row of ``generated`` at once. Returns (status, node, seq_lo, seq_hi, depth) tensors."""
    num_rows, num_steps = generated.shape
    device = generated.device
    status = torch.full((num_rows,), IN_TRIE, dtype=torch.long, device=device)
    node = torch.zeros(num_rows, dtype=torch.long, device=device)
    lo = trie.node_seq_lo[node]
    hi = trie.node_seq_hi[node]
    depth = torch.zeros(num_rows, dtype=torch.long, device=device)
    last_token = len(trie.seq_tokens) - 1
    for t in range(num_steps):
        tok = generated[:, t]
        active = status == IN_TRIE
        in_tail = (hi - lo) == 1
        tail_ok = trie.seq_tokens[(trie.seq_offsets[lo] + t).clamp(max=last_token)] == tok
        # An id outside 0:key_base is no trie token; its key could equal another parent's edge key.
        is_token = (tok >= 0) & (tok < trie.key_base)
        key = node * trie.key_base + tok
        edge = torch.searchsorted(trie.edge_keys, key).clamp(max=max(len(trie.edge_keys) - 1, 0))
        found = trie.edge_keys[edge] == key if len(trie.edge_keys) else torch.zeros_like(active)
        found = found & is_token
        ok = torch.where(in_tail, tail_ok, found)
        step_child = active & ~in_tail & found
        node = torch.where(step_child, edge + 1, node)
        lo = torch.where(step_child, trie.node_seq_lo[node], lo)
        hi = torch.where(step_child, trie.node_seq_hi[node], hi)
        off = active & ~ok
        done = active & ok & (tok == trie.eos)
        depth = torch.where(active & ok, depth + 1, torch.where(off, torch.full_like(depth, t), depth))
        status = torch.where(off, OFF_TRIE, torch.where(done, FINISHED, status))
    return status, node, lo, hi, depth


def _candidates(trie: DeviceTrie, status, node, lo, hi, depth):
    """Every (row, token) the trie allows after each running row, with the child's item range and node (a
    tail's node for a row in a tail)."""
    device = status.device
    rows = torch.arange(len(status), device=device)
    branching = (status == IN_TRIE) & ((hi - lo) > 1)
    tail = (status == IN_TRIE) & ((hi - lo) == 1)
    first = trie.child_offsets[node]
    counts = torch.where(branching, trie.child_offsets[node + 1] - first, 0)
    cand_rows = torch.repeat_interleave(rows, counts)
    row_starts = torch.cumsum(counts, 0) - counts
    children = first[cand_rows] + torch.arange(len(cand_rows), device=device) - row_starts[cand_rows]
    tail_rows = rows[tail]
    tail_lo = lo[tail]
    tail_tokens = trie.seq_tokens[trie.seq_offsets[tail_lo] + depth[tail]]
    cand_rows = torch.cat([cand_rows, tail_rows])
    cand_tokens = torch.cat([trie.node_tokens[children], tail_tokens])
    item_lo = trie.seq_item_offsets[torch.cat([trie.node_seq_lo[children], tail_lo])]
    item_hi = trie.seq_item_offsets[torch.cat([trie.node_seq_hi[children], tail_lo + 1])]
    return cand_rows, cand_tokens, item_lo, item_hi, torch.cat([children, node[tail]])


def mask_scores_torch(scores: torch.Tensor, generated: torch.Tensor, trie: DeviceTrie, constraints: DeviceConstraints,
                      rows_per_prompt: int, pad: int):
    """Masks ``scores`` in place to the allowed next tokens (adding prior increments); returns (status, depth).

    Row ``r`` belongs to prompt ``min(r // rows_per_prompt, prompts - 1)``. Rows whose status is OFF_TRIE or
    NOTHING_ALLOWED are left untouched; running rows whose allowed scores all were -inf already become
    ALL_BANNED (masked), and rows where a finite score fell below the dtype's range once its prior increment
    was added PRIOR_OVERFLOW (masked). The caller raises for all four.
    """
    device = scores.device
    num_rows, vocab = scores.shape
    if generated.shape[0] != num_rows:
        raise ValueError(f"mask_scores_torch: {generated.shape[0]} generated rows for {num_rows} score rows")
    if trie.eos >= vocab or pad >= vocab:
        raise ValueError(f"mask_scores_torch: EOS {trie.eos} or pad {pad} outside the {vocab} score columns")
    status, node, lo, hi, depth = walk_rows(trie, generated)
    cand_rows, cand_tokens, item_lo, item_hi, cand_nodes = _candidates(trie, status, node, lo, hi, depth)
    prompt_of_row = (torch.arange(num_rows, device=device) // rows_per_prompt).clamp(max=constraints.num_prompts - 1)
    cand_prompts = prompt_of_row[cand_rows]
    allowed = ranges_allowed(constraints, cand_prompts, item_lo, item_hi)
    cand_rows, cand_tokens, cand_prompts = cand_rows[allowed], cand_tokens[allowed], cand_prompts[allowed]
    increment = None
    if constraints.prior_node_log is not None:  # the twin of trie_walk.prior_increment
        values = constraints.prior_node_log
        child = values[cand_prompts, cand_nodes[allowed]]
        parent = values[cand_prompts, node[cand_rows]]
        increment = constraints.prior_weight * torch.clamp(child - parent, max=0.0)
    # Finished rows may only repeat EOS (or pad), with no increment.
    finished_rows = torch.arange(num_rows, device=device)[status == FINISHED]
    extra_rows, extra_tokens = [finished_rows], [torch.full_like(finished_rows, trie.eos)]
    if 0 <= pad != trie.eos:
        extra_rows.append(finished_rows)
        extra_tokens.append(torch.full_like(finished_rows, pad))
    num_running = len(cand_rows)
    cand_rows = torch.cat([cand_rows, *extra_rows])
    cand_tokens = torch.cat([cand_tokens, *extra_tokens])

    kept_per_row = torch.bincount(cand_rows, minlength=num_rows)
    status = torch.where((status == IN_TRIE) & (kept_per_row == 0), NOTHING_ALLOWED, status)
    masked_rows = (status == IN_TRIE) | (status == FINISHED)
    kept_values = scores[cand_rows, cand_tokens]
    if increment is not None:
        # As the Numba kernel rounds: the increment to float32 (float64 scores: float64), summed in that dtype.
        wide_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        wide = kept_values[:num_running].to(wide_dtype) + increment.to(wide_dtype)
        limit = torch.finfo(scores.dtype).max  # below -limit the score would read as masked (-inf)
        overflow = (kept_values[:num_running] != float("-inf")) & (wide < -limit)
        status = torch.where(torch.bincount(cand_rows[:num_running][overflow], minlength=num_rows) > 0,
                             PRIOR_OVERFLOW, status)
        kept_values = torch.cat([wide.to(scores.dtype), kept_values[num_running:]])
    scores.masked_fill_(masked_rows[:, None], float("-inf"))
    scores[cand_rows, cand_tokens] = kept_values
    live = torch.bincount(cand_rows[kept_values != float("-inf")], minlength=num_rows)
    status = torch.where((status == IN_TRIE) & (live == 0), ALL_BANNED, status)
    return status, depth
