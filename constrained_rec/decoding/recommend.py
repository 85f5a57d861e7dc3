"""Fast constrained top-k: the k best catalog titles for each prompt, by beam search or exact search.

`recommend` is what evaluation calls; `TitleTrieProcessor` inside `generate()` stays the drop-in path for
users' own calls. Three things make it faster than `generate(num_beams=B)` with the processor:

* **One prefill per prompt, and one for what the prompts share.** `generate()` copies each prompt B times
  before the first step, so it runs B prefills of the same prompt. Here a batch of prompts is prefilled
  once: the head all of them share (the longest common prefix of their token ids, e.g. the instruction)
  in one row, then each prompt's remainder after it (left-padded, with explicit position ids), and the
  first step is taken from those logits.
* **No cache copy per beam.** The KV cache keeps one row per prompt. Every token a beam feeds goes into
  its prompt's row beside its sibling beams' tokens (a token tree), and a 4D attention mask lets it see
  only its prompt and its own ancestors, at the positions it would have alone; so no step copies,
  reorders or grows the prompt's keys and values once per beam, as step-by-step beam search does. Jumps
  feed their tokens the same way, packed into as few batch rows as pay; exact mode keeps what it feeds
  in the same layout (below).
* **Only live beams.** `generate()` keeps B rows per prompt even when fewer continuations exist (the
  rest are fillers scored -1e9 that are computed and thrown away); here a step forwards only the beams
  that are still running, and a prompt whose search is over leaves the batch.
* **Unique-suffix jump** (``jump=True``). Once a beam's prefix has a single completion in the trie (a
  *tail* of :class:`~constrained_rec.trie.trie.TitleTrie`), its whole remaining suffix is scored
  teacher-forced at once instead of one step per token, and in beam mode it rides in the forward that feeds
  the running beams' next tokens (no forward of its own). The score of a title is the same either way (up
  to float rounding of a different batch shape).

Beam mode (``mode="beam"``) with ``jump=False`` is transformers' beam search (5.x, ``early_stopping=False``)
with `TitleTrieProcessor`: the same candidates (the top ``2 * num_beams`` continuations of the live
beams), the same rule for finished titles (an EOS candidate counts only when it ranks among the top
``num_beams``; scores are ``log_prob / length ** length_penalty`` with the length counting EOS), the same
choice of running beams and the same stopping heuristic, so it returns the same titles in the same order
with the same scores (float rounding aside: a forward over fewer rows may differ in the last bits).

With ``jump=True`` a beam leaves the running set at the step it enters a tail and joins the finished titles
at once with its final score. Step by step, that beam would hold a running slot until its EOS, and at each
of those steps it could be pushed out of the top beams by other candidates (its score keeps falling), or
push them out. With the jump it can no longer be pruned, and its slot goes to other, still branching
prefixes at the next step. The two modes therefore agree on the score of every title both find, but
their top-k lists can differ; ``experiments/bench_decode.py`` reports how often. A beam whose title could
not enter the finished titles even at its current score (its final length is known, so its penalised
score is bounded) is dropped rather than jumped. The jump saves forwards, which is what costs on an
accelerator; on a CPU, where a forward costs about its tokens, it saves little, since a jumped suffix
costs its tokens either way.

Exact mode (``mode="exact"``) returns the true top-k titles under the model: a best-first search over the
trie, ranked by total log-probability (plus ``w * log M(title)`` with a prior). Log-probabilities only fall
along a path, so a complete title that reaches the top of the queue beats everything still in it. With a
prior a prefix is bounded by ``w * log max_{titles t under it} M(t)`` (``prior_lookahead="max"``, exact mode's
default), which is tighter than the mass under it wherever many titles share a prefix. It is bounded by ``node_budget``, the most trie
prefixes the model may score per prompt; a prompt that hits it is reported in
:attr:`DecodeStats.budget_exhausted` (and a warning), its proven titles first. Every token it feeds stays in the
KV cache, so expanding a prefix feeds its last token only, after its ancestors' kept tokens (one token per
prefix, not its depth). It jumps tails (``jump``) on an accelerator only by default: on a CPU, where a forward
costs about its tokens, expanding a tail token by token stops where its bound falls below the k-th title, and
the jump's whole suffixes (and the padding they force on the other rows of a forward) cost more than the
forwards they save (measured in the README).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Collection, Sequence

import numpy as np
import torch

from constrained_rec.decoding.beam import beam_search
from constrained_rec.decoding.constraints import LOOKAHEADS, ItemConstraints
from constrained_rec.decoding.exact import exact_search
from constrained_rec.decoding.runner import (
    ACCELERATOR_FORWARD_COST_TOKENS,
    CPU_FORWARD_COST_TOKENS,
    ModelRunner,
    PromptBatch,
    select_rows,
)
from constrained_rec.decoding.steps import Hypothesis
from constrained_rec.hf import check_positions
from constrained_rec.trie.tokenization import SoftPrompt, eos_token_id, prompt_token_ids
from constrained_rec.trie.trie import TitleTrie
from constrained_rec.validation import check_int, check_number

MODES = ("beam", "exact")
__all__ = ["recommend", "recommend_at_weights", "Recommendation", "DecodeStats", "DecodeResult", "MODES",
           "CPU_FORWARD_COST_TOKENS", "ACCELERATOR_FORWARD_COST_TOKENS", "checked_prompt_ids", "check_prompt_positions",
           "FewerTitlesWarning", "soft_parts"]


class FewerTitlesWarning(UserWarning):
    """A prompt can still reach fewer than `k` titles (a small catalog, or `exclude` removing most of it), so
    `recommend` returns fewer titles for it. Callers that know who the prompts belong to (the evaluation) filter
    this category and warn naming their users instead."""


@dataclass
class Recommendation:
    """One recommended title.

    ``item_ids`` are the catalog items with this title that the prompt does not exclude (several items may
    share a title). ``log_prob`` is the total log-probability of the title's tokens, EOS included, given the
    prompt (the model alone). ``prior_log_mass`` is ``log M(title)``, the log of the prior mass of its allowed
    items (renormalised over the prompt's allowed items; 0.0 without a prior), and ``fused_log_prob`` the
    search's total ``log_prob + prior_weight * log M(title)`` (float32 sums, as step-by-step decoding adds).
    ``score`` is what the search ranks by, ``fused_log_prob / len(token_ids) ** length_penalty``.
    """

    item_ids: list[int]
    title: str | None
    log_prob: float
    score: float
    token_ids: list[int]
    prior_log_mass: float = 0.0
    fused_log_prob: float | None = None


@dataclass
class DecodeStats:
    """What a `recommend` call cost, and where exact search stopped early.

    ``model_forwards`` counts calls of the model (prefills included), ``forward_tokens`` the tokens they
    fed (rows x positions, padding excluded). ``jumped`` counts suffixes scored in one forward. Per prompt:
    ``expanded`` is how many trie prefixes (nodes) exact search expanded, i.e. scored for their children (or, a
    jumped tail, to its end), ``search_forwards`` in how many of the search's forwards (the prefill excluded) its
    prefixes took part, ``search_tokens`` how many tokens they fed, ``budget_exhausted`` whether ``node_budget``
    stopped it, and ``proven`` how many of its returned titles are proven to be the true top ones (all of
    them unless the budget stopped it); beam mode counts 0 of each, and proves nothing.
    """

    model_forwards: int = 0
    forward_tokens: int = 0
    jumped: int = 0
    expanded: list[int] = field(default_factory=list)
    search_forwards: list[int] = field(default_factory=list)
    search_tokens: list[int] = field(default_factory=list)
    budget_exhausted: list[bool] = field(default_factory=list)
    proven: list[int] = field(default_factory=list)


@dataclass
class DecodeResult:
    """``recommendations[p]`` is the best-first list of titles for prompt ``p``."""

    recommendations: list[list[Recommendation]]
    stats: DecodeStats


def recommend(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    trie: TitleTrie,
    k: int,
    *,
    num_beams: int | None = None,
    mode: str = "beam",
    jump: bool | None = None,
    length_penalty: float = 0.0,
    exclude: Sequence[Collection[int]] | None = None,
    batch_size: int = 8,
    node_budget: int = 2000,
    item_log_prior=None,
    prior_weight: float = 1.0,
    prior_lookahead: str | None = None,
    constraints: ItemConstraints | None = None,
) -> DecodeResult:
    r"""
    The top-`k` catalog titles of `trie` for each prompt, by constrained beam search or exact best-first search.

    Args:
        model (`PreTrainedModel`):
            Any causal LM with a KV cache (a PEFT model too), in eval mode, on any device.
        tokenizer (`PreTrainedTokenizerBase` or `None`):
            Tokenizes string prompts with `tokenization.prompt_token_ids`; its EOS must be the trie's.
            May be `None` when every prompt is given as token ids.
        prompts (`Sequence[str | Sequence[int] | SoftPrompt]`):
            One prompt per user: a string, or its token ids (BOS included where the model uses one), or a
            `tokenization.SoftPrompt` (token ids some of whose positions take given input embeddings: prefilled by
            `inputs_embeds`).
        trie (`TitleTrie`):
            The catalog's titles, tokenized as the model writes them.
        k (`int`):
            How many titles to return per prompt.
        num_beams (`int`, *optional*, defaults to `k`):
            Beam mode: the beam width (at least `k`). Exact mode: how many queued prefixes of a prompt one
            forward scores (more means fewer forwards but possibly wasted work).
        mode (`str`, *optional*, defaults to `"beam"`):
            `"beam"` (transformers' beam search, see the module docstring) or `"exact"` (the true top-`k`).
        jump (`bool`, *optional*, defaults to `True` in beam mode; in exact mode, `True` on an accelerator only):
            Score a prefix's unique remaining suffix in one forward. Exact mode gives the same result either way
            (up to float rounding); beam mode may differ from `jump=False` (module docstring).
        length_penalty (`float`, *optional*, defaults to 0.0):
            Beam mode ranks finished titles by `log_prob / length ** length_penalty`, as transformers does.
            Exact mode ranks by `log_prob` and needs 0.0.
        exclude (`Sequence[Collection[int]]`, *optional*):
            One collection of catalog item ids per prompt never to recommend to it (e.g. its history). A title
            stays allowed while one of its items is not excluded.
        batch_size (`int`, *optional*, defaults to 8):
            Prompts decoded together (left-padded into one batch).
        node_budget (`int`, *optional*, defaults to 2000):
            Exact mode: the most trie prefixes the model scores per prompt before the search gives up.
        item_log_prior (array-like of shape `(len(prompts), trie.num_items)`, *optional*):
            Per prompt, a log-probability per catalog item (column `j`: the `j`-th item id the trie was built
            with; `-inf`: zero mass, excluded). Each allowed token then scores
            `log p(t) + prior_weight * (log M(h + t) - log M(h))` (see `constrained_rec.decoding.constraints`), so titles
            are ranked by `log p_LM(title) + prior_weight * log M(title)`; exact mode proves its top-`k` under
            that fused score.
        prior_weight (`float`, *optional*, defaults to 1.0):
            The prior's weight `w` >= 0.
        prior_lookahead (`str`, *optional*, defaults to `"sum"` in beam mode, `"max"` in exact mode):
            What a partial title's prior increments look ahead to: `"sum"`, the mass of every title under it, or
            `"max"`, the mass of its best title (`constrained_rec.decoding.constraints`). Titles get the same fused totals
            either way (the per-prompt constant `"max"` leaves out is added back to `fused_log_prob` and `score`);
            beam search prunes differently, exact search proves the same top-`k` with fewer prefixes under
            `"max"`. Beam mode with `"max"` needs `length_penalty=0.0` (a penalty would turn the constant into a
            length preference).
        constraints (`ItemConstraints`, *optional*):
            Instead of `exclude`/`item_log_prior`/`prior_weight`/`prior_lookahead`: constraints built for `trie`
            and these prompts.

    Returns:
        `DecodeResult`: `recommendations[p]`, a best-first list of `k` `Recommendation`s per prompt, and `stats`.
        A prompt gets fewer only where it can reach fewer than `k` titles at all (after `exclude` and the prior's
        zero-mass items: a `FewerTitlesWarning` naming it, and every title it can reach), where beam search
        finished fewer titles, or where exact search ran out of budget first; each warns.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from constrained_rec import TitleTrie
    >>> from constrained_rec.decoding.recommend import recommend

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    >>> trie = TitleTrie.from_token_sequences([[5, 6, 7], [5, 9], [11, 12, 13, 14], [11, 12]], eos_token_id=2,
    ...     item_ids=[100, 200, 300, 400])
    >>> prompts = [[1, 20, 21], [1, 22]]  # token ids; strings need a tokenizer
    >>> beam = recommend(model, None, prompts, trie, k=2, num_beams=3, exclude=[{100}, set()])
    >>> exact = recommend(model, None, prompts, trie, k=2, mode="exact")
    >>> [len(recs) for recs in exact.recommendations]
    [2, 2]
    >>> any(100 in rec.item_ids for rec in beam.recommendations[0])  # excluded for the first prompt
    False
    >>> exact.stats.budget_exhausted
    [False, False]

    ```
    """
    num_beams = _check_options(model, trie, k, num_beams, mode, length_penalty, batch_size, node_budget)
    prompt_ids = checked_prompt_ids(tokenizer, prompts, trie, model)
    _check_prompt_lengths(model, trie, prompt_ids)
    constraints = _constraints(trie, len(prompt_ids), exclude, item_log_prior, prior_weight, constraints,
                               _lookahead(prior_lookahead, mode, length_penalty, constraints))

    stats = DecodeStats()
    runner = ModelRunner(model, trie, stats)
    soft = soft_parts(prompts, model)
    recommendations: list[list[Recommendation]] = []
    with torch.inference_mode():
        for start in range(0, len(prompt_ids), batch_size):
            batch = list(range(start, min(start + batch_size, len(prompt_ids))))
            prompt = PromptBatch([prompt_ids[p] for p in batch], runner, soft=[soft[p] for p in batch])
            if mode == "beam":
                found = beam_search(runner, trie, prompt, constraints, batch, num_beams, jump is not False,
                                    float(length_penalty))
                _no_exact_stats(stats, len(batch))
            else:
                exact_jump = runner.forward_cost > CPU_FORWARD_COST_TOKENS if jump is None else bool(jump)
                found = exact_search(runner, trie, prompt, constraints, batch, k, num_beams, exact_jump, node_budget)
            for p, hypotheses in zip(batch, found):
                recommendations.append([_recommendation(trie, constraints, p, h) for h in hypotheses[:k]])
    available = _warn_fewer_titles(constraints, len(prompt_ids), k)
    if mode == "beam":
        _warn_short_beams([recommendations], available, k)
    return DecodeResult(recommendations, stats)


def recommend_at_weights(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: TitleTrie, k: int,
                         prior_weights: Sequence[float], *, item_log_prior, num_beams: int | None = None,
                         exclude: Sequence[Collection[int]] | None = None, batch_size: int = 8,
                         jump: bool = True, prior_lookahead: str | Sequence[str] = "sum") -> list[DecodeResult]:
    """`recommend(..., mode="beam", item_log_prior=item_log_prior, prior_weight=w, prior_lookahead=a)` for every
    `w` of `prior_weights`, with each batch of prompts prefilled once for all of them (a copy of its KV cache per
    weight): the same titles and scores, one prefill instead of `len(prior_weights)`. `prior_lookahead` is one
    lookahead `a` for every weight, or one per weight (a weight may repeat with another lookahead). Returns one
    `DecodeResult` per weight; the prefills are counted in the first one's `stats`.
    """
    num_beams = _check_options(model, trie, k, num_beams, "beam", 0.0, batch_size, 1)
    prompt_ids = checked_prompt_ids(tokenizer, prompts, trie, model)
    weights = list(prior_weights)
    if not weights:
        raise ValueError("`prior_weights` is empty; give at least one weight")
    lookaheads = [prior_lookahead] * len(weights) if isinstance(prior_lookahead, str) else list(prior_lookahead)
    if len(lookaheads) != len(weights):
        raise ValueError(f"`prior_lookahead` gives {len(lookaheads)} lookaheads for {len(weights)} weights; give one "
                         "string, or one per weight")
    _check_prompt_lengths(model, trie, prompt_ids)
    constraints = [_constraints(trie, len(prompt_ids), exclude, item_log_prior, w, None, _lookahead(a, "beam", 0.0, None))
                   for w, a in zip(weights, lookaheads)]
    available = _warn_fewer_titles(constraints[0], len(prompt_ids), k)
    stats = [DecodeStats() for _ in weights]
    recommendations: list[list[list[Recommendation]]] = [[] for _ in weights]
    runner = ModelRunner(model, trie, stats[0])
    soft = soft_parts(prompts, model)
    with torch.inference_mode():
        for start in range(0, len(prompt_ids), batch_size):
            batch = list(range(start, min(start + batch_size, len(prompt_ids))))
            runner.stats = stats[0]
            prompt = PromptBatch([prompt_ids[p] for p in batch], runner, soft=[soft[p] for p in batch])
            own_rows = torch.arange(len(batch), device=prompt.last_logits.device)
            for w, weight_constraints in enumerate(constraints):
                runner.stats = stats[w]
                forked = copy.copy(prompt)  # beam search reorders its prompt's cache in place: each weight its own
                forked.cache = select_rows(prompt.cache, own_rows)
                found = beam_search(runner, trie, forked, weight_constraints, batch, num_beams, jump, 0.0)
                _no_exact_stats(stats[w], len(batch))
                recommendations[w] += [[_recommendation(trie, weight_constraints, p, h) for h in hypotheses[:k]]
                                       for p, hypotheses in zip(batch, found)]
    _warn_short_beams(recommendations, available, k)
    return [DecodeResult(found, s) for found, s in zip(recommendations, stats)]


def _no_exact_stats(stats: DecodeStats, num_prompts: int) -> None:
    """Beam search expands no prefixes of exact search's, exhausts no budget and proves nothing."""
    stats.expanded += [0] * num_prompts
    stats.search_forwards += [0] * num_prompts
    stats.search_tokens += [0] * num_prompts
    stats.budget_exhausted += [False] * num_prompts
    stats.proven += [0] * num_prompts


def _warn_short_beams(results: list[list[list[Recommendation]]], available: list[int], k: int) -> None:
    """Warns for the prompts where beam search (in any of `results`) finished fewer titles than it could reach."""
    short = sorted({p for found in results for p, recs in enumerate(found) if len(recs) < min(k, available[p])})
    if short:
        warnings.warn(f"beam search finished fewer than k={k} titles for prompts {short[:10]}; raise num_beams",
                      stacklevel=3)


def _warn_fewer_titles(constraints: ItemConstraints, num_prompts: int, k: int) -> list[int]:
    """How many titles each prompt can still reach; a `FewerTitlesWarning` for those below `k`."""
    available = [constraints.titles_available(p) for p in range(num_prompts)]
    fewer = [p for p, count in enumerate(available) if count < k]
    if fewer:
        warnings.warn(
            f"prompts {fewer[:10]} can be recommended only {[available[p] for p in fewer[:10]]} titles "
            f"({'; '.join(f'prompt {p}: {constraints.removal_cause(p)}' for p in fewer[:10])}), fewer than k={k}: "
            "they get those titles only", FewerTitlesWarning, stacklevel=3
        )
    return available


def _check_prompt_lengths(model, trie: TitleTrie, prompt_ids: list[list[int]]) -> None:
    longest = max(range(len(prompt_ids)), key=lambda p: len(prompt_ids[p]))
    check_positions(model, len(prompt_ids[longest]) + trie.max_length - 1,
                    f"prompt {longest} ({len(prompt_ids[longest])} tokens, the longest) and the trie's longest title "
                    f"({trie.max_length - 1} tokens; its EOS is never fed back)")


# ---------------------------------------------------------------------- inputs
def _check_options(model, trie, k, num_beams, mode, length_penalty, batch_size, node_budget) -> int:
    """Validates `recommend`'s options; returns `num_beams` (defaulting to `k`)."""
    if not isinstance(trie, TitleTrie):
        raise ValueError(f"`trie` has to be a TitleTrie, but is {type(trie).__name__}")
    check_int(k, "`k`", least=1, numpy=True)
    num_beams = int(k) if num_beams is None else num_beams
    for name, value in (("num_beams", num_beams), ("batch_size", batch_size), ("node_budget", node_budget)):
        check_int(value, f"`{name}`", least=1, numpy=True)
    if mode not in MODES:
        raise ValueError(f"`mode` has to be one of {MODES}, but is {mode!r}")
    if mode == "beam" and num_beams < k:
        raise ValueError(f"beam search returns at most `num_beams` titles: num_beams={num_beams} < k={k}")
    check_number(length_penalty, "`length_penalty`")
    if mode == "exact" and length_penalty != 0.0:
        raise ValueError(
            f"exact mode ranks titles by total log-probability and needs length_penalty=0.0, got {length_penalty!r}; "
            "a length penalty breaks the falling-score bound best-first search relies on"
        )
    if getattr(model, "training", False):
        raise ValueError("the model is in training mode (dropout is active); call model.eval() before recommend()")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"recommend() needs a decoder-only causal LM, got the encoder-decoder {type(model).__name__}")
    return num_beams


def checked_prompt_ids(tokenizer, prompts: Sequence[str | Sequence[int]], trie: TitleTrie, model=None) -> list[list[int]]:
    """The token ids of each prompt, checked: string prompts are tokenized (`tokenization.prompt_token_ids`) by
    `tokenizer`, whose EOS must be the trie's; token-id prompts must be non-empty lists of ints >= 0 and, given
    `model`, ids its input embeddings cover."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"`prompts` has to be a non-empty sequence of strings or token-id lists, but is {prompts!r}")
    if tokenizer is not None and eos_token_id(tokenizer) != trie.eos_token_id:
        raise ValueError(
            f"the tokenizer's EOS id {eos_token_id(tokenizer)} is not the trie's EOS id {trie.eos_token_id}: "
            "build the trie with this tokenizer"
        )
    out = []
    for p, prompt in enumerate(prompts):
        if isinstance(prompt, SoftPrompt):
            prompt = prompt.ids
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError(f"prompt {p} is a string, which needs a tokenizer; pass one or give token ids")
            out.append(prompt_token_ids(tokenizer, prompt))
            continue
        ids = None
        if isinstance(prompt, (np.ndarray, torch.Tensor)):
            ids = prompt.tolist()
        elif isinstance(prompt, Sequence):
            ids = list(prompt)
        if not ids or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 0 for t in ids):
            raise ValueError(f"prompt {p} has to be a string or a non-empty list of token ids >= 0, but is {prompt!r}")
        out.append([int(t) for t in ids])
    if model is not None:
        vocab = model.get_input_embeddings().weight.shape[0]
        for p, ids in enumerate(out):
            if max(ids) >= vocab:
                raise ValueError(f"prompt {p} holds token id {max(ids)}, but the model embeds only {vocab} tokens")
    return out


def soft_parts(prompts: Sequence, model) -> list:
    """Per prompt, ``(soft positions, embeddings)`` of a :class:`~constrained_rec.trie.tokenization.SoftPrompt`
    (``None`` for any other prompt); an embedding width other than the model's hidden size is an error."""
    hidden = model.get_input_embeddings().weight.shape[1]
    out = []
    for p, prompt in enumerate(prompts):
        if not isinstance(prompt, SoftPrompt):
            out.append(None)
            continue
        if prompt.embeds.shape[1] != hidden:
            raise ValueError(f"prompt {p}'s soft tokens are {prompt.embeds.shape[1]}-wide embeddings, but the model's "
                             f"input embeddings are {hidden}-wide")
        out.append((prompt.positions, prompt.embeds))
    return out


def check_prompt_positions(model, tokenizer, prompts: Sequence[str], trie: TitleTrie, what: str) -> None:
    """:func:`constrained_rec.hf.check_positions` for string ``prompts`` decoded under ``trie``, before any
    forward (a run checks all its prompts up front): the longest one plus the longest title must fit."""
    longest = 0
    for start in range(0, len(prompts), 1024):
        batch = list(prompts[start : start + 1024])
        longest = max([longest] + [len(ids) for ids in tokenizer(batch, add_special_tokens=True)["input_ids"]])
    check_positions(model, longest + trie.max_length - 1,
                    f"{what} (the longest has {longest} tokens) and the catalog's longest title ({trie.max_length - 1} "
                    "tokens; its EOS is never fed back)")


def _lookahead(prior_lookahead, mode: str, length_penalty, constraints) -> str:
    """The prior lookahead to build constraints with: the given one, or the mode's default."""
    if prior_lookahead is not None and prior_lookahead not in LOOKAHEADS:
        raise ValueError(f"`prior_lookahead` has to be None or one of {LOOKAHEADS}, but is {prior_lookahead!r}")
    if constraints is not None and prior_lookahead not in (None, getattr(constraints, "prior_lookahead", None)):
        raise ValueError(f"`prior_lookahead={prior_lookahead!r}` disagrees with the given `constraints`, built with "
                         f"{getattr(constraints, 'prior_lookahead', None)!r}; pass one of them")
    lookahead = getattr(constraints, "prior_lookahead", None) or prior_lookahead or (
        "max" if mode == "exact" else "sum")
    if mode == "beam" and lookahead == "max" and length_penalty != 0.0:
        raise ValueError(
            f"prior_lookahead='max' leaves a per-prompt constant out of every title's fused score, which "
            f"length_penalty={length_penalty!r} would turn into a preference for some lengths; use length_penalty=0.0 "
            "or prior_lookahead='sum'"
        )
    return lookahead


def _constraints(trie, num_prompts: int, exclude, item_log_prior, prior_weight, constraints,
                 lookahead: str) -> ItemConstraints:
    if constraints is None:
        constraints = ItemConstraints.build(trie, num_prompts=num_prompts, exclude=exclude,
                                            item_log_prior=item_log_prior, prior_weight=prior_weight,
                                            prior_lookahead=lookahead)
    elif not isinstance(constraints, ItemConstraints) or exclude is not None or item_log_prior is not None:
        raise ValueError("pass either `constraints` (an ItemConstraints) or `exclude`/`item_log_prior`, not both")
    elif constraints.num_prompts not in (None, num_prompts):
        raise ValueError(f"`constraints` cover {constraints.num_prompts} prompts, but {num_prompts} prompts were given")
    constraints.check_trie(trie)
    return constraints


def _recommendation(trie: TitleTrie, constraints: ItemConstraints, prompt: int, hypothesis: Hypothesis) -> Recommendation:
    items = constraints.allowed_items(prompt, hypothesis.seq)
    title = trie.titles.title(items[0]) if trie.titles is not None else None
    # The search's totals lack w * L(root) under the "max" lookahead (a per-prompt constant, 0 under "sum"); a
    # length penalty, which would scale it, is refused with "max".
    offset = np.float32(constraints.prior_offset(prompt))
    return Recommendation(items, title, float(hypothesis.log_prob), float(np.float32(hypothesis.score + offset)),
                          list(hypothesis.tokens), constraints.title_log_mass(prompt, hypothesis.seq),
                          float(np.float32(hypothesis.fused + offset)))
