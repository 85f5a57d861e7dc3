"""Exact mode of ``constrained_rec.decoding.recommend.recommend``: best-first search that proves its top-k titles."""

from __future__ import annotations

import heapq
import itertools
import warnings
from typing import NamedTuple

import numpy as np
import torch

from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.decoding.runner import ModelRunner, PromptBatch
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
    path: tuple = ()  # the cache positions of tokens[:-1], fed and kept by earlier expansions


class _Queues:
    """One best-first queue per prompt of the batch."""

    def __init__(self, trie: TitleTrie, constraints: ItemConstraints, batch: list[int]):
        self.trie, self.constraints, self.batch = trie, constraints, batch
        self.heaps: list[list[_Entry]] = [[] for _ in batch]
        self.order = itertools.count()

    def push(self, p, score, log_prob, tokens, cursor: TrieCursor, path: tuple = ()):
        running = tokens[-1] != self.trie.eos_token_id
        heapq.heappush(self.heaps[p], _Entry(-float(score), running, next(self.order), np.float32(score),
                                             np.float32(log_prob), tokens, cursor, path))

    def push_children(self, p, entry: _Entry, log_probs: torch.Tensor, path: tuple):
        """Queues the allowed children of `entry`, whose next-token log-probabilities are `log_probs`; `path`:
        the cache positions of `entry.tokens` (its own last token included), which the children extend."""
        tokens, children, increments = allowed_children(self.trie, self.constraints, self.batch[p], entry.cursor)
        lm = log_probs[torch.from_numpy(tokens).to(log_probs.device)].cpu().numpy()
        for c, (t, lp, fused) in enumerate(zip(tokens, lm, fuse(entry.score, lm, increments))):
            self.push(p, fused, np.float32(entry.log_prob + lp), entry.tokens + (int(t),), children.at(c), path)

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


class _PrefixCache:
    """The prompts' KV cache, one row per prompt still searching, and every token exact search feeds, kept.

    Expanding a prefix feeds only its last token, after its prompt and its `path` (the cache positions where its
    earlier tokens were kept when its ancestors were expanded), through a 4D mask that lets a token see only those
    and the tokens before it in its own segment, at the position ids it would have alone (`TokenTree`'s layout,
    with a path per segment). A prefix of depth d thus costs one token, not d. Each forward gives every cache row
    one batch row, its segments side by side, padded to the fullest; all of it stays in the cache.
    """

    def __init__(self, prompt: PromptBatch, runner: ModelRunner):
        self.prompt, self.runner = prompt, runner
        self.cache = prompt.cache
        self.row_prompt = list(range(len(prompt.lengths)))  # the prompt (batch position) of each cache row
        self.width = prompt.mask.shape[1]  # cache positions filled so far
        self.device = prompt.last_logits.device

    def keep(self, prompts: list[int]) -> None:
        """Drops the cache rows of every prompt not in `prompts` (sorted)."""
        if len(prompts) < len(self.row_prompt):
            rows = [self.row_prompt.index(p) for p in prompts]
            self.cache.reorder_cache(torch.tensor(rows, dtype=torch.long, device=self.device))
            self.row_prompt = list(prompts)

    def feed(self, segments: list) -> tuple[list, list[int]]:
        """Feeds each segment `(prompt, path, tokens, scored)` after its prompt and path, and keeps it.

        Returns, per segment, what `TokenTree.score` returns (the float32 log-probabilities of `scored`, or with
        `scored` None the log-softmax of its last position), and the cache position of its first token."""
        by_row = {p: [] for p in self.row_prompt}
        for i, (p, _, tokens, _) in enumerate(segments):
            by_row[p].append(i)
        fills = {p: sum(len(segments[i][2]) for i in found) for p, found in by_row.items()}
        width = max(fills.values())
        rows = len(self.row_prompt)
        ids = np.full((rows, width), self.runner.trie.eos_token_id, dtype=np.int64)
        positions = np.zeros((rows, width), dtype=np.int64)
        seen = np.zeros((rows, width, self.width + width), dtype=bool)
        seen[:, :, : self.prompt.mask.shape[1]] = self.prompt.mask[self.row_prompt][:, None, :]
        causal = np.tril(np.ones((width, width), dtype=bool))
        starts = [(0, 0)] * len(segments)
        for r, p in enumerate(self.row_prompt):
            at = 0
            for i in by_row[p]:
                _, path, tokens, _ = segments[i]
                n = len(tokens)
                ids[r, at : at + n] = tokens
                positions[r, at : at + n] = self.prompt.lengths[p] + len(path) + np.arange(n)
                seen[r, at : at + n, list(path)] = True
                seen[r, at : at + n, self.width + at : self.width + at + n] = causal[:n, :n]
                starts[i] = (r, at)
                at += n
            seen[r, at:, self.width + at : self.width + width] = causal[: width - at, : width - at]  # padding sees itself
        mask = torch.zeros(seen.shape, dtype=self.runner.dtype, device=self.device)
        mask.masked_fill_(~torch.from_numpy(seen).to(self.device), torch.finfo(self.runner.dtype).min)
        logits, self.cache = self.runner(torch.from_numpy(ids).to(self.device), mask[:, None],
                                         torch.from_numpy(positions).to(self.device), cache=self.cache,
                                         real_tokens=sum(fills.values()))
        kept_at = [self.width + at for _, at in starts]
        self.width += width
        return _segment_log_probs(logits, starts, segments), kept_at


def _segment_log_probs(logits: torch.Tensor, starts: list, segments: list) -> list:
    """Per segment `(prompt, path, tokens, scored)` starting at `starts[i]` (row, column) of `logits`: its scored
    tokens' log-probabilities (float32 numpy), or with `scored` None its last position's log-softmax (a tensor).
    The positions that score a token are gathered first, and normalised by one log-sum-exp over them."""
    spans, rows, columns = [], [], []
    for (r, at), (_, _, tokens, scored) in zip(starts, segments):
        end = at + len(tokens)
        first = end - (1 if scored is None else len(scored))
        spans.append((len(rows), end - first))
        rows += [r] * (end - first)
        columns += range(first, end)
    picked = logits[torch.tensor(rows, device=logits.device), torch.tensor(columns, device=logits.device)].float()
    log_probs = picked - torch.logsumexp(picked, dim=-1, keepdim=True)
    out = []
    for (at, n), (_, _, _, scored) in zip(spans, segments):
        if scored is None:
            out.append(log_probs[at])
        else:
            wanted = torch.tensor(scored, device=logits.device)
            out.append(log_probs[at + torch.arange(n, device=logits.device), wanted].cpu().numpy())
    return out


def exact_search(runner: ModelRunner, trie: TitleTrie, prompt: PromptBatch, constraints: ItemConstraints,
                 batch: list[int], k: int, per_forward: int, jump: bool, node_budget: int) -> list[list[Hypothesis]]:
    """Best-first search by fused score (log-probability plus prior increments), for every prompt of the batch.

    Each queue holds prefixes (scored, not yet expanded) and complete titles, keyed by fused score; model
    log-probabilities and prior increments are <= 0, so a prefix's score bounds every title below it and a
    complete title at the top is final. Each round expands the best `per_forward` prefixes of every prompt in
    one forward (`_PrefixCache`: a prefix feeds its last token only, after the kept tokens of its ancestors);
    with the jump, a prefix with one completion is fed with that completion (which adds no prior increment),
    coming back as a complete title.
    """
    queues = _Queues(trie, constraints, batch)
    tree = _PrefixCache(prompt, runner)
    root_log_probs = torch.log_softmax(prompt.last_logits.float(), dim=-1)
    root = trie.root()
    for p in range(len(batch)):
        queues.push_children(p, _Entry(0.0, True, -1, np.float32(0), np.float32(0), (), root), root_log_probs[p], ())
    found: list[list[Hypothesis]] = [[] for _ in batch]
    expanded, exhausted = [0] * len(batch), [False] * len(batch)
    forwards, tokens = [0] * len(batch), [0] * len(batch)
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
            tree.keep(sorted(active))
            for p in {p for p, _ in work}:
                forwards[p] += 1
            for p, fed in zip((p for p, _ in work), _expand(tree, queues, work, trie, jump)):
                tokens[p] += fed
    runner.stats.search_forwards += forwards
    runner.stats.search_tokens += tokens
    _finish(runner, queues, found, expanded, exhausted, batch, k, node_budget)
    return found


def _expand(tree: _PrefixCache, queues: _Queues, work: list, trie: TitleTrie, jump: bool) -> list[int]:
    """Scores the prefixes of `work` in one forward, and queues what they lead to; returns the tokens fed for each."""
    segments = []
    for p, entry in work:
        if jump and entry.cursor.is_tail:
            rest = trie.completion(entry.cursor)
            segments.append((p, entry.path, [entry.tokens[-1]] + rest[:-1], rest))
        else:
            segments.append((p, entry.path, [entry.tokens[-1]], None))
    log_probs, kept_at = tree.feed(segments)
    for (p, entry), (_, _, _, wanted), lp, at in zip(work, segments, log_probs, kept_at):
        if wanted is None:
            queues.push_children(p, entry, lp, entry.path + (at,))
        else:
            tree.runner.stats.jumped += 1
            queues.push(p, accumulate(entry.score, lp), accumulate(entry.log_prob, lp), entry.tokens + tuple(wanted),
                        entry.cursor._replace(depth=len(entry.tokens) + len(wanted)))
    return [len(tokens) for _, _, tokens, _ in segments]


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
