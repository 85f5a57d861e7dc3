"""Exact mode of ``constrained_rec.decoding.recommend.recommend``: best-first search that proves its top-k titles."""

from __future__ import annotations

import heapq
import itertools
import warnings
from typing import NamedTuple

import numpy as np
import torch

from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.decoding.runner import ModelRunner, PromptBatch, TokenTree
from constrained_rec.decoding.steps import Hypothesis, accumulate, allowed_children, fuse
from constrained_rec.trie.cursor import TrieCursor
from constrained_rec.trie.trie import TitleTrie


class _Entry(NamedTuple):
    """A queued prefix or complete title. Heap order: best fused score, complete titles first, then first come."""

    key: float
    running: bool
    order: int
    score: np.float32  # fused: log-prob plus prior increments, the search's bound
    log_prob: np.float32
    tokens: tuple
    cursor: TrieCursor  # where `tokens` lead (a complete title: its sequence is cursor.seq_lo)


class _Queues:
    """One best-first queue per prompt of the batch."""

    def __init__(self, trie: TitleTrie, constraints: ItemConstraints, batch: list[int]):
        self.trie, self.constraints, self.batch = trie, constraints, batch
        self.heaps: list[list[_Entry]] = [[] for _ in batch]
        self.order = itertools.count()

    def push(self, p, score, log_prob, tokens, cursor: TrieCursor):
        running = tokens[-1] != self.trie.eos_token_id
        heapq.heappush(self.heaps[p], _Entry(-float(score), running, next(self.order), np.float32(score),
                                             np.float32(log_prob), tokens, cursor))

    def push_children(self, p, entry: _Entry, log_probs: torch.Tensor):
        tokens, children, increments = allowed_children(self.trie, self.constraints, self.batch[p], entry.cursor)
        lm = log_probs[torch.from_numpy(tokens).to(log_probs.device)].cpu().numpy()
        for c, (t, lp, fused) in enumerate(zip(tokens, lm, fuse(entry.score, lm, increments))):
            self.push(p, fused, np.float32(entry.log_prob + lp), entry.tokens + (int(t),), children.at(c))

    def settle(self, p: int, found: list, k: int) -> bool:
        """Moves the complete titles at the top of queue `p` to `found`; True when `p` is done."""
        heap = self.heaps[p]
        while heap and not heap[0].running and len(found) < k:
            e = heapq.heappop(heap)
            found.append(Hypothesis(e.score, e.log_prob, e.score, e.cursor.seq_lo, e.tokens))
        return len(found) == k or not heap

    def pop_prefixes(self, p: int, count: int) -> list[_Entry]:
        """The best `count` prefixes of queue `p`; complete titles met on the way go back (final only at the top)."""
        heap = self.heaps[p]
        held, work = [], []
        while heap and len(work) < count:
            entry = heapq.heappop(heap)
            (work if entry.running else held).append(entry)
        for entry in held:
            heapq.heappush(heap, entry)
        return work


def exact_search(runner: ModelRunner, trie: TitleTrie, prompt: PromptBatch, constraints: ItemConstraints,
                 batch: list[int], k: int, per_forward: int, jump: bool, node_budget: int) -> list[list[Hypothesis]]:
    """Best-first search by fused score (log-probability plus prior increments), for every prompt of the batch.

    Each queue holds prefixes (scored, not yet expanded) and complete titles, keyed by fused score; model
    log-probabilities and prior increments are <= 0, so a prefix's score bounds every title below it and a
    complete title at the top is final. Expanding a prefix costs one row of a forward: the prefix is fed
    after the prompt's cache and its last position gives its children; with the jump, a prefix with one
    completion is fed with that completion (which adds no prior increment), coming back as a complete title.
    """
    queues = _Queues(trie, constraints, batch)
    tree = TokenTree(prompt)
    root_log_probs = torch.log_softmax(prompt.last_logits.float(), dim=-1)
    root = trie.root()
    for p in range(len(batch)):
        queues.push_children(p, _Entry(0.0, True, -1, np.float32(0), np.float32(0), (), root), root_log_probs[p])
    found: list[list[Hypothesis]] = [[] for _ in batch]
    expanded, exhausted = [0] * len(batch), [False] * len(batch)
    active = set(range(len(batch)))
    while active:
        work = []  # (prompt, entry)
        for p in sorted(active):
            if queues.settle(p, found[p], k):
                active.discard(p)
            elif expanded[p] >= node_budget:
                exhausted[p] = True
                active.discard(p)
            else:
                taken = queues.pop_prefixes(p, min(per_forward, node_budget - expanded[p]))
                expanded[p] += len(taken)
                work += [(p, entry) for entry in taken]
        if work:
            _expand(runner, tree, queues, work, trie, jump)
    _finish(runner, queues, found, expanded, exhausted, batch, k, node_budget)
    return found


def _expand(runner, tree: TokenTree, queues: _Queues, work: list, trie: TitleTrie, jump: bool) -> None:
    """Scores the prefixes of `work` in as few forwards as pay, and queues what they lead to."""
    fed, scored = [], []
    for _, entry in work:
        if jump and entry.cursor.is_tail:
            rest = trie.completion(entry.cursor)
            fed.append(list(entry.tokens) + rest[:-1])
            scored.append(rest)
        else:
            fed.append(list(entry.tokens))
            scored.append(None)
    rows = [p for p, _ in work]
    log_probs = tree.score(runner, rows, np.zeros((len(rows), 0), dtype=np.int64), fed, scored)
    for (p, entry), wanted, lp in zip(work, scored, log_probs):
        if wanted is None:
            queues.push_children(p, entry, lp)
        else:
            runner.stats.jumped += 1
            queues.push(p, accumulate(entry.score, lp), accumulate(entry.log_prob, lp), entry.tokens + tuple(wanted),
                        entry.cursor._replace(depth=len(entry.tokens) + len(wanted)))


def _finish(runner, queues: _Queues, found, expanded, exhausted, batch, k: int, node_budget: int) -> None:
    """Records the stats; where the budget stopped a prompt, appends the best complete titles scored so far."""
    for p in range(len(batch)):
        proven = len(found[p])
        if exhausted[p]:
            complete = sorted((e for e in queues.heaps[p] if not e.running), key=lambda e: (e.key, e.order))
            found[p] += [Hypothesis(e.score, e.log_prob, e.score, e.cursor.seq_lo, e.tokens) for e in complete[: k - proven]]
        runner.stats.expanded.append(expanded[p])
        runner.stats.budget_exhausted.append(exhausted[p])
        runner.stats.proven.append(proven)
    stopped = [batch[p] for p in range(len(batch)) if exhausted[p]]
    if stopped:
        warnings.warn(
            f"exact search hit node_budget={node_budget} for prompts {stopped[:10]} before proving the top-{k}; "
            "their lists start with the proven titles (stats.proven), then the best titles scored so far. "
            "Raise node_budget for a proof.",
            stacklevel=4,
        )
