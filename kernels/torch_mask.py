"""The same walk and mask as ``trie_walk``, in vectorised torch ops, for scores that live on a GPU.

No Python loop over rows and no host-to-device copy of a mask: the trie's arrays are copied to the
device once, the walk advances all rows one generated position at a time (a few ops per position),
and only the allowed (row, token) pairs are gathered, so the full-size write is a single ``fill_``.
Finding a child is one ``searchsorted`` over *edge keys* ``parent * key_base + token``: BFS numbering
keeps children contiguous and sorted, so the keys of nodes 1, 2, ... are strictly increasing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from constrained_rec.kernels.trie_walk import FINISHED, IN_TRIE, NOTHING_ALLOWED, OFF_TRIE


@dataclass
class DeviceTrie:
    seq_tokens: torch.Tensor
    seq_offsets: torch.Tensor
    child_offsets: torch.Tensor
    node_tokens: torch.Tensor
    node_seq_lo: torch.Tensor
    node_seq_hi: torch.Tensor
    seq_item_offsets: torch.Tensor
    edge_keys: torch.Tensor  # edge_keys[c - 1] = parent(c) * key_base + node_tokens[c], for nodes c >= 1
    key_base: int

    @classmethod
    def from_arrays(cls, seq_tokens, seq_offsets, child_offsets, node_tokens, node_seq_lo, node_seq_hi,
                    seq_item_offsets, device) -> "DeviceTrie":
        def put(a):
            return torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)

        child_offsets_t = put(child_offsets)
        node_tokens_t = put(node_tokens)
        key_base = int(max(int(np.max(seq_tokens)), 0)) + 2
        num_nodes = len(node_tokens)
        parents = torch.repeat_interleave(
            torch.arange(num_nodes, device=device), child_offsets_t[1:] - child_offsets_t[:-1]
        )
        edge_keys = parents * key_base + node_tokens_t[1:]
        return cls(put(seq_tokens), put(seq_offsets), child_offsets_t, node_tokens_t, put(node_seq_lo),
                   put(node_seq_hi), put(seq_item_offsets), edge_keys, key_base)


def walk_rows(trie: DeviceTrie, generated: torch.Tensor, eos: int):
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
        key = node * trie.key_base + tok
        edge = torch.searchsorted(trie.edge_keys, key).clamp(max=max(len(trie.edge_keys) - 1, 0))
        found = trie.edge_keys[edge] == key if len(trie.edge_keys) else torch.zeros_like(active)
        ok = torch.where(in_tail, tail_ok, found)
        step_child = active & ~in_tail & found
        node = torch.where(step_child, edge + 1, node)
        lo = torch.where(step_child, trie.node_seq_lo[node], lo)
        hi = torch.where(step_child, trie.node_seq_hi[node], hi)
        off = active & ~ok
        done = active & ok & (tok == eos)
        depth = torch.where(active & ok, depth + 1, torch.where(off, torch.full_like(depth, t), depth))
        status = torch.where(off, OFF_TRIE, torch.where(done, FINISHED, status))
    return status, node, lo, hi, depth


def mask_scores_torch(scores: torch.Tensor, generated: torch.Tensor, trie: DeviceTrie, excluded_keys: torch.Tensor,
                      num_items: int, rows_per_prompt: int, eos: int, pad: int):
    """Masks ``scores`` in place to the allowed next tokens; returns (status, depth) per row.

    ``excluded_keys`` holds ``prompt * (num_items + 1) + position`` for every excluded item position,
    sorted, so one ``searchsorted`` counts a range's excluded items for every (row, candidate) at once.
    Rows whose status is OFF_TRIE or NOTHING_ALLOWED are left untouched; the caller raises.
    """
    device = scores.device
    num_rows = scores.shape[0]
    status, node, lo, hi, depth = walk_rows(trie, generated, eos)
    rows = torch.arange(num_rows, device=device)
    branching = (status == IN_TRIE) & ((hi - lo) > 1)
    tail = (status == IN_TRIE) & ((hi - lo) == 1)

    # Candidates of branching rows: all children of their node.
    first = trie.child_offsets[node]
    counts = torch.where(branching, trie.child_offsets[node + 1] - first, 0)
    cand_rows = torch.repeat_interleave(rows, counts)
    row_starts = torch.cumsum(counts, 0) - counts
    children = first[cand_rows] + torch.arange(len(cand_rows), device=device) - row_starts[cand_rows]
    cand_tokens = trie.node_tokens[children]
    cand_lo = trie.node_seq_lo[children]
    cand_hi = trie.node_seq_hi[children]
    # Candidates of tail rows: the next token of their single sequence.
    tail_rows = rows[tail]
    tail_lo = lo[tail]
    tail_tokens = trie.seq_tokens[trie.seq_offsets[tail_lo] + depth[tail]]
    cand_rows = torch.cat([cand_rows, tail_rows])
    cand_tokens = torch.cat([cand_tokens, tail_tokens])
    item_lo = trie.seq_item_offsets[torch.cat([cand_lo, tail_lo])]
    item_hi = trie.seq_item_offsets[torch.cat([cand_hi, tail_lo + 1])]
    if len(excluded_keys):
        base = (cand_rows // rows_per_prompt) * (num_items + 1)
        inside = torch.searchsorted(excluded_keys, base + item_hi) - torch.searchsorted(excluded_keys, base + item_lo)
        allowed = inside < (item_hi - item_lo)
        cand_rows, cand_tokens = cand_rows[allowed], cand_tokens[allowed]
    # Finished rows may only repeat EOS (or pad).
    finished_rows = rows[status == FINISHED]
    extra = [finished_rows, torch.full_like(finished_rows, eos)]
    if pad >= 0 and pad != eos:
        extra = [torch.cat([extra[0], finished_rows]), torch.cat([extra[1], torch.full_like(finished_rows, pad)])]
    cand_rows = torch.cat([cand_rows, extra[0]])
    cand_tokens = torch.cat([cand_tokens, extra[1]])

    kept_per_row = torch.bincount(cand_rows, minlength=num_rows)
    status = torch.where((status == IN_TRIE) & (kept_per_row == 0), NOTHING_ALLOWED, status)
    masked_rows = (status == IN_TRIE) | (status == FINISHED)
    kept_values = scores[cand_rows, cand_tokens]
    scores.masked_fill_(masked_rows[:, None], float("-inf"))
    scores[cand_rows, cand_tokens] = kept_values
    return status, depth
