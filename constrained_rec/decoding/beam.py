"""Beam mode of ``constrained_rec.decoding.recommend.recommend``: transformers' beam search, with only live beams and the jump.

See the ``constrained_rec.decoding.recommend`` module docstring for the rules it reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.decoding.runner import ModelRunner, PromptBatch, TokenTree
from constrained_rec.decoding.steps import Hypothesis, accumulate, allowed_children, fuse
from constrained_rec.trie.cursor import TrieCursor
from constrained_rec.trie.trie import TitleTrie


def penalised(scores: np.ndarray, length: int, length_penalty: float) -> np.ndarray:
    # In torch, as transformers divides a float32 tensor by a Python float, so the rounding is the same.
    return (torch.from_numpy(np.asarray(scores, dtype=np.float32)) / (length**length_penalty)).numpy()


@dataclass
class _Beams:
    """Running beams (or their candidate continuations), grouped by prompt; `score` is the fused total."""

    prompt: np.ndarray  # index in the batch
    score: np.ndarray  # float32: log-prob plus prior increments, what beam search ranks by
    log_prob: np.ndarray  # float32: the model's log-probability alone
    tokens: list
    cursor: TrieCursor  # of arrays: where each leads
    parent: np.ndarray | None = None  # candidates: the beam they continue
    token: np.ndarray | None = None  # candidates: the token they add


def _expand(beams: _Beams, trie: TitleTrie, constraints: ItemConstraints, batch: list[int], log_probs, step: int):
    """Every allowed continuation of every beam, scored as the processor and transformers would."""
    parts, cursors = [], []
    for beam in range(len(beams.prompt)):
        tokens, children, increments = allowed_children(trie, constraints, batch[beams.prompt[beam]],
                                                        beams.cursor.at(beam))
        parts.append((np.full(len(tokens), beam), tokens, increments))
        cursors.append(children)
    parent, token, increment = (np.concatenate(column) for column in zip(*parts))
    lm = log_probs[torch.from_numpy(parent).to(log_probs.device), torch.from_numpy(token).to(log_probs.device)]
    lm = lm.cpu().numpy()
    score = fuse(beams.score[parent], lm, increment)
    log_prob = (beams.log_prob[parent] + lm).astype(np.float32)
    return _Beams(beams.prompt[parent], score, log_prob, beams.tokens, TrieCursor.concatenate(cursors), parent, token)


def _select(cands: _Beams, finished, num_beams: int, eos: int, jump: bool, step: int, length_penalty: float):
    """Per prompt, transformers' choice: the top 2 * num_beams continuations; an EOS among the top num_beams
    finishes a title, the best num_beams others run on (or jump, at a tail). Returns (running, jumps)."""
    running, jumps = [], []
    tail = cands.cursor.is_tail
    for p in np.unique(cands.prompt):
        own = np.flatnonzero(cands.prompt == p)
        top = own[np.argsort(-cands.score[own], kind="stable")][: 2 * num_beams]
        is_eos = cands.token[top] == eos
        done = top[:num_beams][is_eos[:num_beams]]
        if len(done):
            scores = penalised(cands.score[done], step + 1, length_penalty)
            finished[p] += [Hypothesis(scores[i], cands.log_prob[c], cands.score[c], int(cands.cursor.seq_lo[c]),
                                       cands.tokens[cands.parent[c]] + (eos,)) for i, c in enumerate(done)]
        for c in top[~is_eos][:num_beams]:
            (jumps if jump and tail[c] else running).append(c)
    for p in np.unique(cands.prompt):
        finished[p] = sorted(finished[p], key=lambda h: -h.score)[:num_beams]
    return np.array(running, dtype=np.int64), jumps


def _still_running(cands: _Beams, running: np.ndarray, finished, num_beams, step, length_penalty) -> np.ndarray:
    """transformers' stopping heuristic (early_stopping=False): a prompt stops once its best running beam,
    penalised at its current length, can no longer beat its worst of `num_beams` finished titles. Returns
    which of `running` run on (a mask); more finished titles only stop more prompts."""
    live = np.ones(len(running), dtype=bool)
    for p in np.unique(cands.prompt):
        finished[p] = sorted(finished[p], key=lambda h: -h.score)[:num_beams]
        own = cands.prompt[running] == p
        if own.any() and len(finished[p]) == num_beams:
            best = penalised(cands.score[running[own]].max(keepdims=True), step + 1, length_penalty)[0]
            if not best > finished[p][-1].score:
                live &= ~own
    return live


def beam_search(runner: ModelRunner, trie: TitleTrie, prompt: PromptBatch, constraints: ItemConstraints,
                batch: list[int], num_beams: int, jump: bool, length_penalty: float,
                ride: bool = True) -> list[list[Hypothesis]]:
    """Beam search for every prompt of the batch at once; see the ``constrained_rec.decoding.recommend`` docstring for the rules.

    A step's jumped suffixes ride in the forward of its running beams' next tokens (`ride`; else each step's
    jumps take a forward of their own first, the same results up to float rounding). That forward feeds every
    beam of a prompt the titles finished so far cannot stop; a prompt the jumped titles then stop drops its
    beams' logits.
    """
    eos = trie.eos_token_id
    num_prompts = len(batch)
    finished: list[list[Hypothesis]] = [[] for _ in range(num_prompts)]
    zeros = np.zeros(num_prompts, dtype=np.float32)
    beams = _Beams(np.arange(num_prompts), zeros, zeros.copy(), [()] * num_prompts, trie.root().repeat(num_prompts))
    tree = TokenTree(prompt)
    paths = np.zeros((num_prompts, 0), dtype=np.int64)  # per beam: the tree positions of its generated tokens
    logits = prompt.last_logits
    step = 0
    while len(beams.prompt):
        cands = _expand(beams, trie, constraints, batch, torch.log_softmax(logits.float(), dim=-1), step)
        running, jumps = _select(cands, finished, num_beams, eos, jump, step, length_penalty)
        jumps = _worth_jumping(trie, finished, num_beams, jumps, cands, length_penalty)
        riding = _jump_segments(trie, paths, jumps, cands, beams) if jumps else None
        runner.stats.jumped += len(jumps)
        running = running[_still_running(cands, running, finished, num_beams, step, length_penalty)]
        if riding is not None and not (ride and len(running)):
            _finish(finished, jumps, cands, beams, riding[3], tree.score(runner, *riding), length_penalty)
            riding = None
            running = running[_still_running(cands, running, finished, num_beams, step, length_penalty)]
        if len(running) == 0:
            break
        parents = cands.parent[running]
        prompts = cands.prompt[running] if riding is None else np.concatenate([cands.prompt[running], riding[0]])
        tree.keep_prompts(np.unique(prompts))
        logits, positions, ridden = tree.step(runner, cands.prompt[running], paths[parents], cands.token[running],
                                              riding)
        if riding is not None:
            _finish(finished, jumps, cands, beams, riding[3], ridden, length_penalty)
            live = _still_running(cands, running, finished, num_beams, step, length_penalty)
            running, parents, positions = running[live], parents[live], positions[live]
            logits = logits[torch.from_numpy(live).to(logits.device)]
            if len(running) == 0:
                break
        beams = _Beams(cands.prompt[running], cands.score[running], cands.log_prob[running],
                       [beams.tokens[cands.parent[c]] + (int(cands.token[c]),) for c in running],
                       cands.cursor.at(running))
        tree.keep_prompts(np.unique(beams.prompt))
        paths = np.concatenate([paths[parents], positions[:, None]], axis=1)
        step += 1
    return finished


def _worth_jumping(trie: TitleTrie, finished, num_beams: int, jumps: list, cands: _Beams, length_penalty: float):
    """The beams of `jumps` whose title could still enter their prompt's finished titles.

    A title's score only falls as its suffix is scored (a tail adds no prior increment), and its final length
    is known, so ``score_now / final_length ** length_penalty`` bounds its final score. A beam whose bound is
    no better than the worst of `num_beams` finished titles would be scored only to be dropped.
    """
    worth = []
    for c in jumps:
        done = finished[cands.prompt[c]]
        if len(done) == num_beams:
            length = trie.sequence_length(int(cands.cursor.seq_lo[c]))
            if not penalised(cands.score[c : c + 1], length, length_penalty)[0] > done[-1].score:
                continue
        worth.append(c)
    return worth


def _jump_segments(trie, paths, jumps, cands: _Beams, beams: _Beams):
    """What scores the beams `jumps`, whose prefixes have one completion each, in one forward: per jump its
    prompt, ancestors, fed tokens and scored suffix, as `TokenTree.score` takes them."""
    suffixes = [trie.completion(cands.cursor.at(c)) for c in jumps]
    fed = [[int(cands.token[c])] + suffix[:-1] for c, suffix in zip(jumps, suffixes)]
    parents = cands.parent[jumps]
    return beams.prompt[parents], paths[parents], fed, suffixes


def _finish(finished, jumps, cands: _Beams, beams: _Beams, suffixes, log_probs, length_penalty) -> None:
    """Adds the jumped beams' titles (`suffixes`: their rest, EOS included) to their prompts' finished ones, from
    the suffixes' log-probabilities."""
    for c, suffix, suffix_log_probs in zip(jumps, suffixes, log_probs):
        fused = accumulate(cands.score[c], suffix_log_probs)
        tokens = beams.tokens[cands.parent[c]] + (int(cands.token[c]),) + tuple(suffix)
        score = penalised(np.array([fused]), len(tokens), length_penalty)[0]
        finished[cands.prompt[c]].append(Hypothesis(score, accumulate(cands.log_prob[c], suffix_log_probs), fused,
                                                    int(cands.cursor.seq_lo[c]), tokens))
