"""Does the LM learn users? A control that every evaluation can run.

A recommender that writes titles can score well by writing *popular, probable titles* without reading the
user's history at all. This module measures whether it reads it. For each evaluated user, a fixed candidate
set (the held-out target plus ``N`` other catalog items) is scored by the exact total log-probability of
each title under three prompts:

* **own**: the user's own prompt (their history);
* **other**: another user's prompt, the users being paired by a seeded *derangement* (a permutation
  without fixed points), so every user's candidates are scored under exactly one foreign history;
* **generic**: the same instruction with an empty history: the model's title prior.

Per condition it reports the target's mean rank among the ``N + 1`` candidates (1 = best, ties averaged)
and its AUC (the fraction of the ``N`` other candidates the target beats, ties counting half; 0.5 is
chance), and, paired over users, the differences *own - other* (the user-specific signal: a model that
ignores the history scores 0) and *own - generic* (what the history adds over the title prior), each with
a percentile-bootstrap interval over users (:func:`constrained_rec.evaluation.metrics.bootstrap_interval`).

The candidates are, by default, ``N`` items drawn uniformly (seeded, per user) from the catalog minus the
user's consumed items (``EvalSample.exclude``), the target and any item sharing the target's title (it
would tie with the target under every prompt). A ``proposer`` callable can supply them instead, e.g. a
collaborative model's top-``N``: hard negatives make the control stricter, uniform ones make it a test of
whether the history narrows the catalog at all.

Titles are scored exactly as the trie holds them (:func:`constrained_rec.trie.tokenization.title_token_ids`,
EOS included) by :func:`constrained_rec.decoding.scoring.score_titles`: one prefill per prompt, whose KV cache is then expanded over that
prompt's candidates, which are fed teacher-forced in batches.

Its markdown section and plot are :func:`constrained_rec.experiment.report.signal_markdown` and
:func:`constrained_rec.experiment.report.plot_user_signal`.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Collection, Sequence

import numpy as np

from constrained_rec.decoding.scoring import catalog_items, score_titles
from constrained_rec.evaluation.metrics import bootstrap_interval
from constrained_rec.prompts import build_prompt, history_text
from constrained_rec.trie.trie import TitleTrie
from constrained_rec.validation import check_int

CONDITIONS = ("own", "other", "generic")
DIFFERENCES = {"own_minus_other": ("own", "other"), "own_minus_generic": ("own", "generic")}
# Stands in for the history while the generic prompt is rendered by build_prompt, then is cut out.
_HISTORY_PLACEHOLDER = "HISTORY-PLACEHOLDER"


# ---------------------------------------------------------------------------------------------- the control
def derangement(num_users: int, seed: int = 0) -> np.ndarray:
    """A uniformly random permutation of ``range(num_users)`` with no fixed point (seeded; rejection sampling).

    Example:

    ```python
    >>> from constrained_rec.evaluation.user_signal import derangement
    >>> pairs = derangement(5, seed=0)
    >>> sorted(pairs.tolist()), any(pairs == range(5))
    ([0, 1, 2, 3, 4], False)

    ```
    """
    check_int(num_users, "num_users", least=2, numpy=True, note=" (a derangement pairs every user with another one and needs at least 2 users)")
    rng = np.random.default_rng([int(seed), 1])
    while True:  # about e tries on average, at most a few dozen with overwhelming probability
        permutation = rng.permutation(int(num_users))
        if not (permutation == np.arange(num_users)).any():
            return permutation


def rank_and_auc(target_score: float, other_scores: Sequence[float]) -> tuple[float, float]:
    """The target's rank among itself and ``other_scores`` (1 = best, ties averaged) and its AUC.

    The AUC is the fraction of the other candidates the target scores above, ties counting half, so that
    ``rank = 1 + len(other_scores) * (1 - auc)``.

    Example:

    ```python
    >>> from constrained_rec.evaluation.user_signal import rank_and_auc
    >>> rank_and_auc(-1.0, [-3.0, -1.0, -0.5, -2.0])
    (2.5, 0.625)

    ```
    """
    others = np.asarray(other_scores, dtype=np.float64)
    if others.ndim != 1 or len(others) == 0:
        raise ValueError(f"rank_and_auc needs at least one other candidate score, got {other_scores!r}")
    if np.isnan(others).any() or math.isnan(target_score):
        raise ValueError("candidate scores must not be NaN")
    above, ties = float((others > target_score).sum()), float((others == target_score).sum())
    return 1.0 + above + ties / 2.0, (len(others) - above - ties / 2.0) / len(others)


def generic_prompt(item_noun: str = "movies", template: str = "alpaca", tokenizer=None) -> str:
    """The project's prompt (:func:`constrained_rec.prompts.build_prompt`) with an empty history.

    Example:

    ```python
    >>> from constrained_rec.evaluation.user_signal import generic_prompt
    >>> generic_prompt().splitlines()[6]
    'The user has watched the following movies before:'

    ```
    """
    prompt = build_prompt([_HISTORY_PLACEHOLDER], item_noun, template, tokenizer)
    history = history_text([_HISTORY_PLACEHOLDER], item_noun)
    if prompt.count(history) != 1:
        raise ValueError(f"template {template!r} does not render the history as one piece of text; "
                         "pass generic_prompt= explicitly")
    return prompt.replace(history, history.replace(f'"{_HISTORY_PLACEHOLDER}"', "").rstrip())


def _draw_candidates(samples, trie: TitleTrie, num_candidates: int, seed: int, proposer, exclude) -> list[list[int]]:
    """Per sample: the target, then ``num_candidates`` other items (sampled or proposed, validated)."""
    catalog = catalog_items(trie)
    known = set(catalog.tolist())
    out = []
    for i, sample in enumerate(samples):
        target = int(sample.target_item_id)
        if target not in known:
            raise ValueError(f"target item {target} of user {sample.user_id} is not in the catalog")
        consumed = sample.exclude if exclude is None else exclude[i]
        unknown = sorted(set(int(x) for x in consumed) - known)
        if unknown:
            raise ValueError(f"excluded items {unknown[:10]} of user {sample.user_id} are not in the catalog")
        banned = set(int(x) for x in consumed) | set(trie.items_with_same_title(target))
        if proposer is None:
            available = len(known - banned)
            if available < num_candidates:
                raise ValueError(f"user {sample.user_id} has only {available} candidate items left after "
                                 f"excluding consumed items and the target, fewer than num_candidates={num_candidates}")
            # A uniform random prefix of the catalog, filtered, is a uniform random subset of what is allowed.
            rng = np.random.default_rng([int(seed), int(sample.user_id), target])
            drawn = rng.choice(catalog, size=min(len(catalog), num_candidates + len(banned)), replace=False)
            others = [int(x) for x in drawn if int(x) not in banned][:num_candidates]
        else:
            others = [int(x) for x in proposer(sample, num_candidates, frozenset(banned))]
            bad = sorted(set(others) - known)
            if bad:
                raise ValueError(f"the proposer named items {bad[:10]} for user {sample.user_id}: not in the catalog")
            if len(others) != num_candidates or len(set(others)) != num_candidates or set(others) & banned:
                raise ValueError(f"the proposer must return {num_candidates} distinct items outside the user's "
                                 f"consumed items and the target's title; for user {sample.user_id} it returned "
                                 f"{others[:20]!r}")
        out.append([target] + others)
    return out


def _figure(values: np.ndarray, confidence: float, num_resamples: int, seed: int) -> dict:
    low, high = bootstrap_interval(values, confidence, num_resamples, seed)
    return {"value": float(values.mean()), "ci": [low, high]}


def _condition_ranks(model, tokenizer, samples, trie, candidates, others_of, generic, batch_size):
    """Per condition, each user's target rank and AUC among their candidates."""
    # One prefill per prompt: prompt j scores its own candidates and those of the user it is "other" for.
    scored_items = [set(c) for c in candidates]
    for i, j in enumerate(others_of):
        scored_items[j] |= set(candidates[i])
    scored_items.append(set().union(*candidates))  # the generic prompt scores every distinct candidate once
    item_lists = [sorted(items) for items in scored_items]
    scores = score_titles(model, tokenizer, [s.prompt for s in samples] + [generic], item_lists, trie,
                          batch_size=batch_size)
    lookup = [dict(zip(items, values)) for items, values in zip(item_lists, scores)]
    ranks = {condition: np.zeros(len(samples)) for condition in CONDITIONS}
    aucs = {condition: np.zeros(len(samples)) for condition in CONDITIONS}
    for i, items in enumerate(candidates):
        for condition, prompt in (("own", i), ("other", int(others_of[i])), ("generic", len(samples))):
            values = [lookup[prompt][item] for item in items]
            ranks[condition][i], aucs[condition][i] = rank_and_auc(values[0], values[1:])
    return ranks, aucs


def user_signal(model, tokenizer, samples: Sequence, trie: TitleTrie, *, num_candidates: int = 20, seed: int = 0,
                proposer: Callable[[object, int, frozenset], Sequence[int]] | None = None,
                exclude: Sequence[Collection[int]] | None = None, item_noun: str = "movies",
                template: str = "alpaca", generic: str | Sequence[int] | None = None, batch_size: int = 32,
                confidence: float = 0.95, num_resamples: int = 1000) -> dict:
    """The user-signal control (module docstring): target rank and AUC under own, other and generic prompts.

    Args:
        model, tokenizer: As for :func:`score_titles` (a PEFT model is scored with its adapter).
        samples (`Sequence[EvalSample]`):
            The evaluated users (at least 2): ``user_id``, ``prompt`` (text, or token ids with
            ``tokenizer=None``), ``target_item_id`` and ``exclude`` (their consumed items).
        trie (`TitleTrie`): The catalog; candidates are its items, scored by its token ids.
        num_candidates (`int`, defaults to 20): ``N``, the other items in each user's candidate set.
        seed (`int`, defaults to 0): Seeds the candidate draws, the derangement and the bootstrap.
        proposer (`Callable`, *optional*):
            ``proposer(sample, N, banned) -> N item ids`` instead of the uniform draw; the ids must be distinct
            catalog items outside ``banned`` (the consumed items and every item with the target's title).
        exclude (`Sequence[Collection[int]]`, *optional*): Overrides each sample's ``exclude``.
        item_noun, template: Of the generic prompt (:func:`generic_prompt`), as the samples' prompts were built.
        generic (`str` or token ids, *optional*): The generic prompt itself, instead of :func:`generic_prompt`.
        batch_size (`int`, defaults to 32): Titles per forward (:func:`score_titles`).
        confidence, num_resamples: Of the bootstrap intervals over users.

    Returns:
        `dict`, JSON-ready: ``conditions[c]["mean_rank" | "auc"]`` and ``differences["own_minus_other" |
        "own_minus_generic"]["mean_rank" | "auc"]`` as ``{"value", "ci"}``, the settings, ``seconds`` and
        ``per_user`` ranks. A user-specific signal shows as a positive AUC difference (a negative rank one).

    Example (token-id prompts and a tiny random model; real runs pass ``EvalSample`` s and a tokenizer):

    ```python
    >>> from types import SimpleNamespace
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from constrained_rec import TitleTrie
    >>> from constrained_rec.evaluation.user_signal import user_signal
    >>> _ = torch.manual_seed(0)
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    >>> trie = TitleTrie.from_token_sequences([[5 + i, 20 + i] for i in range(8)], eos_token_id=2, item_ids=range(8))
    >>> users = [SimpleNamespace(user_id=u, prompt=[1, 5 + u, 20 + u, 3], target_item_id=u + 1, exclude={u})
    ...          for u in range(4)]
    >>> signal = user_signal(model, None, users, trie, num_candidates=3, generic=[1, 3])
    >>> sorted(signal["conditions"]), sorted(signal["differences"])
    (['generic', 'other', 'own'], ['own_minus_generic', 'own_minus_other'])

    ```
    """
    started = time.perf_counter()
    num_candidates = int(check_int(num_candidates, "`num_candidates`", least=1, numpy=True))
    if not isinstance(trie, TitleTrie):
        raise ValueError(f"`trie` has to be a TitleTrie, but is {type(trie).__name__}")
    samples = list(samples)
    if exclude is not None and len(exclude) != len(samples):
        raise ValueError(f"`exclude` has {len(exclude)} collections for {len(samples)} samples; give one per sample")
    others_of = derangement(len(samples), seed)  # user i's candidates are also scored under prompt others_of[i]
    candidates = _draw_candidates(samples, trie, num_candidates, seed, proposer, exclude)
    if generic is None:
        generic = generic_prompt(item_noun, template, tokenizer)

    ranks, aucs = _condition_ranks(model, tokenizer, samples, trie, candidates, others_of, generic, batch_size)

    def figures(rank_values, auc_values):
        return {"mean_rank": _figure(rank_values, confidence, num_resamples, seed),
                "auc": _figure(auc_values, confidence, num_resamples, seed)}

    return {
        "users": len(samples),
        "num_candidates": num_candidates,
        "candidates": ("uniform over the catalog minus the user's consumed items and the target's title"
                       if proposer is None else f"proposed by {getattr(proposer, '__name__', type(proposer).__name__)}"),
        "seed": seed,
        "confidence": confidence,
        "conditions": {c: figures(ranks[c], aucs[c]) for c in CONDITIONS},
        "differences": {name: figures(ranks[a] - ranks[b], aucs[a] - aucs[b]) for name, (a, b) in DIFFERENCES.items()},
        "seconds": time.perf_counter() - started,
        "per_user": {"user_id": [int(s.user_id) for s in samples],
                     "other_user_id": [int(samples[j].user_id) for j in others_of],
                     "rank": {c: ranks[c].tolist() for c in CONDITIONS}},
    }
