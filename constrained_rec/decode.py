"""Fast constrained top-k: the k best catalog titles for each prompt, by beam search or exact search.

`recommend` is what evaluation calls; `TitleTrieProcessor` inside `generate()` stays the drop-in path for
users' own calls. Three things make it faster than `generate(num_beams=B)` with the processor:

* **One prefill per prompt.** `generate()` copies each prompt B times before the first step, so it runs
  B prefills of the same prompt. Here a (left-padded) batch of prompts is prefilled once, the first step
  is taken from those logits, and the beams are made by expanding the prompt's KV cache (an
  ``index_select`` of its rows, the same operation beam search uses to reorder beams), never the prompt.
* **Only live beams.** `generate()` keeps B rows per prompt even when fewer continuations exist (the
  rest are fillers scored -1e9 that are computed and thrown away); here a step forwards only the beams
  that are still running, and a prompt whose search is over leaves the batch.
* **Unique-suffix jump** (``jump=True``). Once a beam's prefix has a single completion in the trie (a
  *tail* of :class:`~constrained_rec.trie.TitleTrie`), its whole remaining suffix is scored in one
  teacher-forced forward instead of one step per token. The score of a title is the same either way (up
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
trie, ranked by total log-probability. Log-probabilities only fall along a path, so a complete title that
reaches the top of the queue beats everything still in it. It is bounded by ``node_budget``, the most trie
prefixes the model may score per prompt; a prompt that hits it is reported in
:attr:`DecodeStats.budget_exhausted` (and a warning), its proven titles first.
"""

from __future__ import annotations

import copy
import heapq
import inspect
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Collection, Sequence

import numpy as np
import torch

from constrained_rec.tokenization import eos_token_id, prompt_token_ids
from constrained_rec.trie import TitleTrie

MODES = ("beam", "exact")
# The price of one more forward, in padded tokens: on a CPU a forward costs about its tokens, on an
# accelerator mostly its launch. Rows of different lengths are split into forwards by it (_length_groups).
CPU_FORWARD_COST_TOKENS = 16
ACCELERATOR_FORWARD_COST_TOKENS = 4096


@dataclass
class Recommendation:
    """One recommended title.

    ``item_ids`` are the catalog items with this title that the prompt does not exclude (several items may
    share a title). ``log_prob`` is the total log-probability of the title's tokens, EOS included, given the
    prompt; ``score`` is what the search ranks by, ``log_prob / len(token_ids) ** length_penalty``.
    """

    item_ids: list[int]
    title: str | None
    log_prob: float
    score: float
    token_ids: list[int]


@dataclass
class DecodeStats:
    """What a `recommend` call cost, and where exact search stopped early.

    ``model_forwards`` counts calls of the model (prefills included), ``forward_tokens`` the tokens they
    fed (rows x positions, padding excluded). ``jumped`` counts suffixes scored in one forward. Per prompt:
    ``expanded`` is how many trie prefixes exact search scored, ``budget_exhausted`` whether ``node_budget``
    stopped it, and ``proven`` how many of its returned titles are proven to be the true top ones (all of
    them unless the budget stopped it; 0 in beam mode, which proves nothing).
    """

    model_forwards: int = 0
    forward_tokens: int = 0
    jumped: int = 0
    expanded: list[int] = field(default_factory=list)
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
    jump: bool = True,
    length_penalty: float = 0.0,
    exclude: Sequence[Collection[int]] | None = None,
    batch_size: int = 8,
    node_budget: int = 2000,
) -> DecodeResult:
    r"""
    The top-`k` catalog titles of `trie` for each prompt, by constrained beam search or exact best-first search.

    Args:
        model (`PreTrainedModel`):
            Any causal LM with a KV cache (a PEFT model too), in eval mode, on any device.
        tokenizer (`PreTrainedTokenizerBase` or `None`):
            Tokenizes string prompts with `tokenization.prompt_token_ids`; its EOS must be the trie's.
            May be `None` when every prompt is given as token ids.
        prompts (`Sequence[str | Sequence[int]]`):
            One prompt per user: a string, or its token ids (BOS included where the model uses one).
        trie (`TitleTrie`):
            The catalog's titles, tokenized as the model writes them.
        k (`int`):
            How many titles to return per prompt.
        num_beams (`int`, *optional*, defaults to `k`):
            Beam mode: the beam width (at least `k`). Exact mode: how many queued prefixes of a prompt one
            forward scores (more means fewer forwards but possibly wasted work).
        mode (`str`, *optional*, defaults to `"beam"`):
            `"beam"` (transformers' beam search, see the module docstring) or `"exact"` (the true top-`k`).
        jump (`bool`, *optional*, defaults to `True`):
            Score a prefix's unique remaining suffix in one forward. Exact mode gives the same result either way;
            beam mode may differ from `jump=False` (module docstring).
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

    Returns:
        `DecodeResult`: `recommendations[p]`, a best-first list of `k` `Recommendation`s per prompt (fewer only
        where beam search finished fewer titles, or exact search ran out of budget first; both warn), and `stats`.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from constrained_rec import TitleTrie
    >>> from constrained_rec.decode import recommend

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
    if not isinstance(trie, TitleTrie):
        raise ValueError(f"`trie` has to be a TitleTrie, but is {type(trie).__name__}")
    _check_positive_int("k", k)
    num_beams = int(k) if num_beams is None else num_beams
    for name, value in (("num_beams", num_beams), ("batch_size", batch_size), ("node_budget", node_budget)):
        _check_positive_int(name, value)
    if mode not in MODES:
        raise ValueError(f"`mode` has to be one of {MODES}, but is {mode!r}")
    if mode == "beam" and num_beams < k:
        raise ValueError(f"beam search returns at most `num_beams` titles: num_beams={num_beams} < k={k}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or not np.isfinite(length_penalty):
        raise ValueError(f"`length_penalty` has to be a finite number, but is {length_penalty!r}")
    if mode == "exact" and length_penalty != 0.0:
        raise ValueError(
            f"exact mode ranks titles by total log-probability and needs length_penalty=0.0, got {length_penalty!r}; "
            "a length penalty breaks the falling-score bound best-first search relies on"
        )
    if getattr(model, "training", False):
        raise ValueError("the model is in training mode (dropout is active); call model.eval() before recommend()")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"recommend() needs a decoder-only causal LM, got the encoder-decoder {type(model).__name__}")
    prompt_ids = _prompt_token_ids(tokenizer, prompts, trie)
    exclusions = _Exclusions(trie, exclude, len(prompt_ids), k)

    vocab = model.get_input_embeddings().weight.shape[0]
    for p, ids in enumerate(prompt_ids):
        if max(ids) >= vocab:
            raise ValueError(f"prompt {p} holds token id {max(ids)}, but the model embeds only {vocab} tokens")

    stats = DecodeStats()
    runner = _ModelRunner(model, trie, stats)
    recommendations: list[list[Recommendation]] = []
    with torch.inference_mode():
        for start in range(0, len(prompt_ids), batch_size):
            batch = list(range(start, min(start + batch_size, len(prompt_ids))))
            prompt = _PromptBatch([prompt_ids[p] for p in batch], runner)
            if mode == "beam":
                found = _beam_search(runner, trie, prompt, exclusions, batch, num_beams, jump, float(length_penalty))
                stats.expanded += [0] * len(batch)
                stats.budget_exhausted += [False] * len(batch)
                stats.proven += [0] * len(batch)
            else:
                found = _exact_search(runner, trie, prompt, exclusions, batch, k, num_beams, jump, node_budget)
            for p, hypotheses in zip(batch, found):
                recommendations.append([_recommendation(trie, exclusions, p, h) for h in hypotheses[:k]])
    short = [p for p, recs in enumerate(recommendations) if len(recs) < k]
    if short and mode == "beam":
        warnings.warn(
            f"beam search finished fewer than k={k} titles for prompts {short[:10]}; raise num_beams", stacklevel=2
        )
    return DecodeResult(recommendations, stats)


# ---------------------------------------------------------------------- inputs
def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` has to be a positive integer, but is {value!r}")


def _prompt_token_ids(tokenizer, prompts, trie: TitleTrie) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"`prompts` has to be a non-empty sequence of strings or token-id lists, but is {prompts!r}")
    if tokenizer is not None and eos_token_id(tokenizer) != trie.eos_token_id:
        raise ValueError(
            f"the tokenizer's EOS id {eos_token_id(tokenizer)} is not the trie's EOS id {trie.eos_token_id}: "
            "build the trie with this tokenizer"
        )
    out = []
    for p, prompt in enumerate(prompts):
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
    return out


class _Exclusions:
    """Per prompt, the sorted positions (in ``trie.item_ids_by_position``) of its excluded items."""

    def __init__(self, trie: TitleTrie, exclude, num_prompts: int, k: int):
        self.trie = trie
        if exclude is None:
            self.positions = [np.zeros(0, dtype=np.int64)] * num_prompts
            available = [len(trie)] * num_prompts
        else:
            if isinstance(exclude, Sequence) and not isinstance(exclude, (str, bytes)) and len(exclude) != num_prompts:
                raise ValueError(f"`exclude` has {len(exclude)} collections for {num_prompts} prompts; give one per prompt")
            # The processor's validation: unknown ids, wrong types, a prompt with every item excluded.
            excluded, offsets = trie.excluded_positions(exclude)
            self.positions = [excluded[offsets[p] : offsets[p + 1]] for p in range(num_prompts)]
            available = [len(trie) - self._fully_excluded_titles(pos) for pos in self.positions]
        for p, count in enumerate(available):
            if count < k:
                raise ValueError(f"prompt {p} can be recommended only {count} titles (after `exclude`), fewer than k={k}")

    def _fully_excluded_titles(self, positions: np.ndarray) -> int:
        offsets = self.trie.seq_item_offsets
        seqs = np.searchsorted(offsets, positions, side="right") - 1
        seq_ids, counts = np.unique(seqs, return_counts=True)
        return int(np.sum(counts == offsets[seq_ids + 1] - offsets[seq_ids]))

    def allowed(self, prompt: int, seq_lo: np.ndarray, seq_hi: np.ndarray) -> np.ndarray:
        """Whether each sequence range seq_lo:seq_hi keeps at least one item that `prompt` does not exclude."""
        excluded = self.positions[prompt]
        if len(excluded) == 0:
            return np.ones(len(seq_lo), dtype=bool)
        item_lo = self.trie.seq_item_offsets[seq_lo]
        item_hi = self.trie.seq_item_offsets[seq_hi]
        inside = np.searchsorted(excluded, item_hi) - np.searchsorted(excluded, item_lo)
        return inside < item_hi - item_lo

    def items(self, prompt: int, seq: int) -> list[int]:
        lo, hi = self.trie.seq_item_offsets[seq], self.trie.seq_item_offsets[seq + 1]
        positions = np.arange(lo, hi)
        kept = positions[~np.isin(positions, self.positions[prompt])]
        return self.trie.item_ids_by_position[kept].tolist()


def _recommendation(trie: TitleTrie, exclusions: _Exclusions, prompt: int, hypothesis: "_Hypothesis") -> Recommendation:
    items = exclusions.items(prompt, hypothesis.seq)
    title = trie.titles.title(items[0]) if trie.titles is not None else None
    return Recommendation(items, title, float(hypothesis.log_prob), float(hypothesis.score), list(hypothesis.tokens))


@dataclass
class _Hypothesis:
    """A complete title found by a search: its sequence index in the trie, tokens (EOS included), scores."""

    score: np.float32
    log_prob: np.float32
    seq: int
    tokens: tuple


def _children(trie: TitleTrie, node: int, lo: int, hi: int, depth: int):
    """The continuations of a prefix of length `depth` at (node, lo, hi): tokens, nodes, seq_lo, seq_hi arrays."""
    if hi - lo == 1:  # a tail: its one continuation is read from the sequence
        token = trie.seq_tokens[trie.seq_offsets[lo] + depth]
        return np.array([token], dtype=np.int64), np.array([node]), np.array([lo]), np.array([hi])
    a, b = trie.child_offsets[node], trie.child_offsets[node + 1]
    return (trie.node_tokens[a:b].astype(np.int64), np.arange(a, b), trie.node_seq_lo[a:b], trie.node_seq_hi[a:b])


def _suffix(trie: TitleTrie, seq: int, depth: int) -> list[int]:
    """The tokens of sequence `seq` from position `depth` on (EOS included)."""
    return trie.seq_tokens[trie.seq_offsets[seq] + depth : trie.seq_offsets[seq + 1]].tolist()


def _accumulate(start: np.float32, log_probs) -> np.float32:
    """Adds log-probabilities one at a time in float32, the order step-by-step decoding adds them."""
    total = np.float32(start)
    for value in log_probs:
        total = np.float32(total + np.float32(value))
    return total


# ---------------------------------------------------------------------- the model
class _ModelRunner:
    """Calls the model with an explicit cache, position ids and mask; counts forwards and tokens."""

    def __init__(self, model, trie: TitleTrie, stats: DecodeStats):
        self.model = model
        self.trie = trie
        self.stats = stats
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        parameters = inspect.signature(base.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache`.
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.keeps_logits = "logits_to_keep" in parameters
        self.device = model.get_input_embeddings().weight.device
        on_cpu = self.device.type == "cpu"
        self.forward_cost = CPU_FORWARD_COST_TOKENS if on_cpu else ACCELERATOR_FORWARD_COST_TOKENS
        self.checked_vocab = False

    def __call__(self, input_ids, attention_mask, position_ids, cache=None, last_only=False):
        kwargs = {"use_cache": True}
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        if last_only and self.keeps_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        self.stats.model_forwards += 1
        self.stats.forward_tokens += int(attention_mask[:, -input_ids.shape[1] :].sum())
        if not self.checked_vocab:
            if self.trie.max_token_id >= out.logits.shape[-1]:
                raise ValueError(
                    f"the trie holds token id {self.trie.max_token_id} but the model scores only "
                    f"{out.logits.shape[-1]} tokens: the trie was built with another tokenizer than this model's"
                )
            self.checked_vocab = True
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            raise ValueError(f"{type(self.model).__name__} returned no KV cache; recommend() needs a model with one")
        return out.logits, new_cache


def _select_rows(cache, rows: torch.Tensor):
    """A new cache holding `rows` of `cache` (repeats allowed), leaving `cache` untouched."""
    if hasattr(cache, "layers"):
        forked = copy.copy(cache)
        forked.layers = [copy.copy(layer) for layer in cache.layers]  # reorder_cache rebinds their tensors
    else:
        forked = copy.deepcopy(cache)
    forked.reorder_cache(rows)
    return forked


class _PromptBatch:
    """A left-padded batch of prompts, prefilled once: its cache, mask, lengths and last-position logits."""

    def __init__(self, prompts: list[list[int]], runner: _ModelRunner):
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(runner.device), mask.to(runner.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() numbers left-padded prompts
        logits, self.cache = runner(ids, mask, positions, last_only=True)
        self.last_logits = logits[:, -1, :]
        self.mask = mask
        self.lengths = mask.sum(-1)  # real tokens per prompt: the position of the first generated token
        self.device = runner.device

    def rows_mask(self, prompts: torch.Tensor, generated: int, new: torch.Tensor) -> torch.Tensor:
        """Attention mask for rows of `prompts` with `generated` tokens cached and a block `new` of new tokens."""
        done = torch.ones((len(prompts), generated), dtype=torch.long, device=self.device)
        return torch.cat([self.mask[prompts], done, new], dim=1)


def _length_groups(lengths: list[int], forward_cost: int) -> list[list[int]]:
    """Splits rows into forwards so that padded tokens plus `forward_cost` per forward is least.

    Rows sorted by length are cut into contiguous groups (dynamic programming over the cut points); a group
    costs `forward_cost + rows * longest`. Returns the row indices of each group.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0] + [None] * n  # best[j]: least cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + forward_cost + (j - i) * lengths[order[i]]
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _teacher_forced(runner, prompt: _PromptBatch, cache, cache_rows: list[int], row_prompts: list[int],
                    generated: int, fed: list[list[int]], scored: list[list[int] | None]) -> list:
    """Feeds each row's tokens `fed` after `generated` tokens held in row `cache_rows[i]` of `cache`.

    Returns, per row, the float32 log-probabilities of its tokens `scored` (scored[i][j] at the position
    that predicts it: `len(fed[i]) - len(scored[i]) + j`), or, where scored[i] is None, the log-softmax of
    the last position's logits (the distribution over the next token). Rows are right-padded into as few
    forwards as pays (`_length_groups`); `cache` itself is left untouched.
    """
    out = [None] * len(fed)
    for group in _length_groups([len(f) for f in fed], runner.forward_cost):
        width = max(len(fed[i]) for i in group)
        ids = torch.full((len(group), width), runner.trie.eos_token_id, dtype=torch.long)
        new = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            ids[row, : len(fed[i])] = torch.tensor(fed[i])
            new[row, : len(fed[i])] = 1
        prompts = torch.tensor([row_prompts[i] for i in group], device=prompt.device)
        ids, new = ids.to(prompt.device), new.to(prompt.device)
        mask = prompt.rows_mask(prompts, generated, new)
        positions = (prompt.lengths[prompts] + generated)[:, None] + torch.arange(width, device=prompt.device)
        forked = _select_rows(cache, torch.tensor([cache_rows[i] for i in group], device=prompt.device))
        logits, _ = runner(ids, mask, positions, cache=forked)
        rows, cols = [], []
        for row, i in enumerate(group):
            count = 1 if scored[i] is None else len(scored[i])
            rows += [row] * count
            cols += range(len(fed[i]) - count, len(fed[i]))
        log_probs = torch.log_softmax(logits[rows, cols].float(), dim=-1)
        at = 0
        for i in group:
            if scored[i] is None:
                out[i] = log_probs[at]
                at += 1
            else:
                wanted = torch.tensor(scored[i], device=log_probs.device)
                out[i] = log_probs[torch.arange(at, at + len(wanted), device=log_probs.device), wanted].cpu().numpy()
                at += len(wanted)
    return out


# ---------------------------------------------------------------------- beam mode
def _penalised(log_probs: np.ndarray, length: int, length_penalty: float) -> np.ndarray:
    # In torch, as transformers divides a float32 tensor by a Python float, so the rounding is the same.
    return (torch.from_numpy(np.asarray(log_probs, dtype=np.float32)) / (length**length_penalty)).numpy()


def _beam_search(runner, trie: TitleTrie, prompt: _PromptBatch, exclusions: _Exclusions, batch: list[int],
                 num_beams: int, jump: bool, length_penalty: float) -> list[list[_Hypothesis]]:
    """Beam search for every prompt of the batch at once; see the module docstring for the rules."""
    eos = trie.eos_token_id
    num_prompts = len(batch)
    finished: list[list[_Hypothesis]] = [[] for _ in range(num_prompts)]
    # The running beams, grouped by prompt: prompt (in the batch), score, tokens and trie state.
    beam_prompt = np.arange(num_prompts)
    beam_score = np.zeros(num_prompts, dtype=np.float32)
    beam_tokens: list[tuple] = [()] * num_prompts
    beam_node = np.zeros(num_prompts, dtype=np.int64)
    beam_lo = np.zeros(num_prompts, dtype=np.int64)
    beam_hi = np.full(num_prompts, len(trie), dtype=np.int64)
    logits, cache = prompt.last_logits, prompt.cache
    step = 0
    while len(beam_prompt):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        # Every allowed continuation of every beam: (beam, token, child state).
        parts = []
        for beam in range(len(beam_prompt)):
            tokens, nodes, los, his = _children(trie, beam_node[beam], beam_lo[beam], beam_hi[beam], step)
            keep = exclusions.allowed(batch[beam_prompt[beam]], los, his)
            parts.append((np.full(int(keep.sum()), beam), tokens[keep], nodes[keep], los[keep], his[keep]))
        cand_beam, cand_token, cand_node, cand_lo, cand_hi = (np.concatenate(column) for column in zip(*parts))
        cand_log_prob = log_probs[torch.from_numpy(cand_beam).to(log_probs.device),
                                  torch.from_numpy(cand_token).to(log_probs.device)].cpu().numpy()
        cand_score = (beam_score[cand_beam] + cand_log_prob).astype(np.float32)
        cand_prompt = beam_prompt[cand_beam]

        next_beams, jumps = [], []  # candidate indices
        for p in np.unique(beam_prompt):
            own = np.flatnonzero(cand_prompt == p)
            # transformers keeps the top 2 * num_beams continuations; an EOS among the top num_beams finishes a
            # title, the best num_beams others run on.
            top = own[np.argsort(-cand_score[own], kind="stable")][: 2 * num_beams]
            is_eos = cand_token[top] == eos
            done = top[: num_beams][is_eos[: num_beams]]
            if len(done):
                scores = _penalised(cand_score[done], step + 1, length_penalty)
                finished[p] += [
                    _Hypothesis(scores[i], cand_score[c], int(cand_lo[c]), beam_tokens[cand_beam[c]] + (eos,))
                    for i, c in enumerate(done)
                ]
            for c in top[~is_eos][:num_beams]:
                (jumps if jump and cand_hi[c] - cand_lo[c] == 1 else next_beams).append(c)

        for p in np.unique(beam_prompt):
            finished[p] = sorted(finished[p], key=lambda h: -h.score)[:num_beams]
        if jumps:
            jumps = _worth_jumping(trie, finished, num_beams, jumps, cand_prompt, cand_lo, cand_score, length_penalty)
        if jumps:
            finished_jumps = _jump(runner, trie, prompt, cache, step, jumps, cand_beam, cand_token, cand_lo,
                                   cand_score, beam_prompt, beam_tokens, length_penalty)
            for c, hypothesis in zip(jumps, finished_jumps):
                finished[cand_prompt[c]].append(hypothesis)
        next_beams = np.array(next_beams, dtype=np.int64)
        live = np.ones(len(next_beams), dtype=bool)
        for p in np.unique(beam_prompt):
            finished[p] = sorted(finished[p], key=lambda h: -h.score)[:num_beams]
            own = cand_prompt[next_beams] == p
            if own.any() and len(finished[p]) == num_beams:
                # transformers' stopping heuristic (early_stopping=False): the best running beam, penalised at its
                # current length, can no longer beat the worst finished title.
                best = _penalised(cand_score[next_beams[own]].max(keepdims=True), step + 1, length_penalty)[0]
                if not best > finished[p][-1].score:
                    live &= ~own
        next_beams = next_beams[live]
        if len(next_beams) == 0:
            break

        parents = torch.from_numpy(cand_beam[next_beams]).to(prompt.device)
        cache.reorder_cache(parents)  # expands the prompt's cache into its beams at the first step
        beam_prompt = cand_prompt[next_beams]
        beam_score = cand_score[next_beams]
        beam_tokens = [beam_tokens[cand_beam[c]] + (int(cand_token[c]),) for c in next_beams]
        beam_node, beam_lo, beam_hi = cand_node[next_beams], cand_lo[next_beams], cand_hi[next_beams]
        prompts = torch.from_numpy(beam_prompt).to(prompt.device)
        ids = torch.from_numpy(cand_token[next_beams]).to(prompt.device)[:, None]
        mask = prompt.rows_mask(prompts, step, torch.ones_like(ids))
        positions = (prompt.lengths[prompts] + step)[:, None]
        logits, cache = runner(ids, mask, positions, cache=cache)
        logits = logits[:, -1, :]
        step += 1
    return finished


def _worth_jumping(trie, finished, num_beams, jumps, cand_prompt, cand_lo, cand_score, length_penalty):
    """The beams of `jumps` whose title could still enter their prompt's finished titles.

    A title's log-probability only falls as its suffix is scored, and its final length is known, so
    ``log_prob_now / final_length ** length_penalty`` bounds its final score. A beam whose bound is no
    better than the worst of `num_beams` finished titles would be scored only to be dropped.
    """
    worth = []
    for c in jumps:
        done = finished[cand_prompt[c]]
        if len(done) == num_beams:
            length = int(trie.seq_offsets[cand_lo[c] + 1] - trie.seq_offsets[cand_lo[c]])
            if not _penalised(cand_score[c : c + 1], length, length_penalty)[0] > done[-1].score:
                continue
        worth.append(c)
    return worth


def _jump(runner, trie, prompt, cache, step, jumps, cand_beam, cand_token, cand_lo, cand_score, beam_prompt,
          beam_tokens, length_penalty) -> list[_Hypothesis]:
    """Finishes the beams `jumps`, whose prefixes have one completion each, by scoring it in one forward."""
    suffixes = [_suffix(trie, int(cand_lo[c]), step + 1) for c in jumps]
    fed = [[int(cand_token[c])] + suffix[:-1] for c, suffix in zip(jumps, suffixes)]
    parents = cand_beam[jumps].tolist()
    log_probs = _teacher_forced(runner, prompt, cache, parents, beam_prompt[parents].tolist(), step, fed, suffixes)
    runner.stats.jumped += len(jumps)
    out = []
    for c, suffix, suffix_log_probs in zip(jumps, suffixes, log_probs):
        total = _accumulate(cand_score[c], suffix_log_probs)
        tokens = beam_tokens[cand_beam[c]] + (int(cand_token[c]),) + tuple(suffix)
        score = _penalised(np.array([total]), len(tokens), length_penalty)[0]
        out.append(_Hypothesis(score, total, int(cand_lo[c]), tokens))
    return out


# ---------------------------------------------------------------------- exact mode
def _exact_search(runner, trie: TitleTrie, prompt: _PromptBatch, exclusions: _Exclusions, batch: list[int], k: int,
                  per_forward: int, jump: bool, node_budget: int) -> list[list[_Hypothesis]]:
    """Best-first search by total log-probability, for every prompt of the batch at once.

    Each queue holds prefixes (scored, not yet expanded) and complete titles, keyed by log-probability; a
    prefix's log-probability bounds every title below it, so a complete title at the top is final.
    Expanding a prefix costs one row of a forward: the prefix is fed after the prompt's cache and its
    last position gives its children; with the jump, a prefix with one completion is fed with that
    completion, which comes back as a complete title.
    """
    eos = trie.eos_token_id
    num_prompts = len(batch)
    order = itertools.count()  # ties: complete titles first, then first come
    queues: list[list] = [[] for _ in range(num_prompts)]

    def push(p, score, tokens, node, lo, hi):
        complete = tokens[-1] == eos
        heapq.heappush(queues[p], (-float(score), not complete, next(order), np.float32(score), tokens, node, lo, hi))

    def push_children(p, score, tokens, node, lo, hi, log_probs):
        child_tokens, nodes, los, his = _children(trie, node, lo, hi, len(tokens))
        keep = exclusions.allowed(batch[p], los, his)
        child_log_probs = log_probs[torch.from_numpy(child_tokens[keep]).to(log_probs.device)].cpu().numpy()
        for t, n, l, h, lp in zip(child_tokens[keep], nodes[keep], los[keep], his[keep], child_log_probs):
            push(p, np.float32(score + lp), tokens + (int(t),), int(n), int(l), int(h))

    root_log_probs = torch.log_softmax(prompt.last_logits.float(), dim=-1)
    for p in range(num_prompts):
        push_children(p, np.float32(0.0), (), 0, 0, len(trie), root_log_probs[p])

    found: list[list[_Hypothesis]] = [[] for _ in range(num_prompts)]
    expanded = [0] * num_prompts
    exhausted = [False] * num_prompts
    active = set(range(num_prompts))
    while active:
        work = []  # (prompt, entry)
        for p in sorted(active):
            queue = queues[p]
            while queue and not queue[0][1] and len(found[p]) < k:
                _, _, _, score, tokens, _, lo, _ = heapq.heappop(queue)
                found[p].append(_Hypothesis(score, score, lo, tokens))
            if len(found[p]) == k or not queue:
                active.discard(p)
                continue
            if expanded[p] >= node_budget:
                exhausted[p] = True
                active.discard(p)
                continue
            # Pop the best prefixes; complete titles met on the way go back (they are final only at the top).
            held, taken = [], 0
            while queue and taken < min(per_forward, node_budget - expanded[p]):
                entry = heapq.heappop(queue)
                if entry[1]:
                    work.append((p, entry))
                    taken += 1
                else:
                    held.append(entry)
            for entry in held:
                heapq.heappush(queue, entry)
            expanded[p] += taken
        if not work:
            continue
        fed, scored = [], []
        for p, (_, _, _, score, tokens, node, lo, hi) in work:
            if jump and hi - lo == 1:
                rest = _suffix(trie, lo, len(tokens))
                fed.append(list(tokens) + rest[:-1])
                scored.append(rest)
            else:
                fed.append(list(tokens))
                scored.append(None)
        rows = [p for p, _ in work]
        log_probs = _teacher_forced(runner, prompt, prompt.cache, rows, rows, 0, fed, scored)
        for (p, (_, _, _, score, tokens, node, lo, hi)), wanted, lp in zip(work, scored, log_probs):
            if wanted is None:
                push_children(p, score, tokens, node, lo, hi, lp)
            else:
                runner.stats.jumped += 1
                push(p, _accumulate(score, lp), tokens + tuple(wanted), node, lo, hi)

    for p in range(num_prompts):
        proven = len(found[p])
        if exhausted[p]:
            # Unproven extras: the best complete titles already scored, in order.
            complete = sorted((e for e in queues[p] if not e[1]), key=lambda e: (e[0], e[2]))
            found[p] += [_Hypothesis(e[3], e[3], e[6], e[4]) for e in complete[: k - proven]]
        runner.stats.expanded.append(expanded[p])
        runner.stats.budget_exhausted.append(exhausted[p])
        runner.stats.proven.append(proven)
    stopped = [batch[p] for p in range(num_prompts) if exhausted[p]]
    if stopped:
        warnings.warn(
            f"exact search hit node_budget={node_budget} for prompts {stopped[:10]} before proving the top-{k}; "
            "their lists start with the proven titles (stats.proven), then the best titles scored so far. "
            "Raise node_budget for a proof.",
            stacklevel=3,
        )
    return found
