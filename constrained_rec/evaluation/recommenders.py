"""Recommenders: what an evaluation runs. Each turns a batch of samples into one prediction record per
sample for each of its method names (the :class:`Recommender` protocol).

- :class:`ConstrainedRecommender` ("constrained"): one search per prompt under the title trie (beam search,
  ``generate()`` or exact search: :data:`~constrained_rec.evaluation.evaluate.DECODERS`); every
  returned title is a catalog item by construction (measured anyway), duplicate titles expand to all
  their items, ties keep beam order. With ``use_adapter=False`` on a LoRA model it is the zero-shot base
  model under the same constraint ("zero-shot-constrained").
- :class:`UnconstrainedRecommender`: BIGRec as published, the baseline. Unconstrained beam search, then
  post-hoc grounding (:mod:`constrained_rec.evaluation.grounding`): "unconstrained-exact" keeps the beams whose text is
  exactly a catalog title, in beam order; "unconstrained-l2" ranks the whole catalog by the L2 distance
  between the top beam's embedding and every title's (BIGRec's ranking). One generation serves both.
- :class:`MostPopularRecommender` ("most-popular"): training-split counts.

A new method is a class with ``names`` and ``__call__``; records are built with :func:`prediction_record`.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import import_module
from typing import Collection, Iterable, Mapping, Sequence

import torch

from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.decoding.processor import TitleTrieProcessor
from constrained_rec.evaluation.evaluate import DECODERS, EvalConfig, EvalSample
from constrained_rec.evaluation.grounding import TitleGrounder, last_token_hidden_states, parse_generated_title
from constrained_rec.hf import adapter_disabled, check_positions, left_pad
from constrained_rec.trie.tokenization import SoftPrompt, eos_token_id, prompt_token_ids
from constrained_rec.trie.trie import TitleTrie

# The "exact" decoder: the most trie prefixes exact search scores per user before it gives up (the search-error
# check's budget too); a user it stops says so in its prediction record (budget_exhausted, proven), and every
# record says how many prefixes it expanded (nodes_expanded).
EXACT_NODE_BUDGET = 2000

@dataclass
class RankedTitle:
    """A recommended title: the items it names (exclusions removed), the title, and its beam score."""

    item_ids: list[int]
    title: str
    score: float


def _generation_config(tokenizer, num_beams: int, num_return_sequences: int, length_penalty: float,
                       max_new_tokens: int):
    from transformers import GenerationConfig

    # A fresh config: a checkpoint's own generation defaults (sampling, repetition penalty) must not leak in.
    return GenerationConfig(
        num_beams=num_beams, num_return_sequences=num_return_sequences, do_sample=False,
        length_penalty=float(length_penalty), max_new_tokens=max_new_tokens, early_stopping=False,
        return_dict_in_generate=True, output_scores=True, output_logits=num_beams == 1,
        eos_token_id=eos_token_id(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )


def _generate(model, tokenizer, prompts: Sequence[str], config, logits_processor=None):
    """``(generated ids per returned row, score per row)`` of one ``generate`` call on left-padded prompts."""
    from transformers import LogitsProcessorList

    from constrained_rec.decoding.recommend import soft_parts
    from constrained_rec.decoding.runner import soft_inputs

    prompt_ids = [list(p.ids) if isinstance(p, SoftPrompt) else prompt_token_ids(tokenizer, p) for p in prompts]
    input_ids, attention_mask = left_pad(prompt_ids, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    prompt_length = input_ids.shape[1]
    # soft tokens (tokenization.SoftPrompt): generate() reads inputs_embeds for the prompt and keeps input_ids as
    # the rows' first prompt_length ids, so the processor's prompt_length is the same as without them
    with torch.no_grad():
        embeds = soft_inputs(model, input_ids.to(device), soft_parts(prompts, model),
                             [prompt_length - len(p) for p in prompt_ids])
    extra = {} if embeds is None else {"inputs_embeds": embeds}
    check_positions(model, prompt_length + config.max_new_tokens - 1,
                    f"the longest prompt ({prompt_length} tokens) and max_new_tokens={config.max_new_tokens} (the last "
                    "token is never fed back)")
    processors = LogitsProcessorList([logits_processor(prompt_length)] if logits_processor else [])
    with torch.no_grad():
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                generation_config=config, logits_processor=processors, **extra)
    generated = output.sequences[:, prompt_length:].cpu()
    if config.num_beams > 1:
        scores = output.sequences_scores.float().cpu().tolist()
    else:  # greedy: the total log-probability of the chosen tokens, up to EOS, from the raw logits
        log_probs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in output.logits], dim=1).cpu()
        chosen = log_probs.gather(2, generated[:, : log_probs.shape[1], None])[..., 0]
        eos = config.eos_token_id
        live = torch.cumsum((generated[:, : log_probs.shape[1]] == eos).long(), dim=1)
        live = (live - (generated[:, : log_probs.shape[1]] == eos).long()) == 0  # up to and including EOS
        scores = (chosen * live).sum(dim=1).tolist()
    rows = []
    for row in generated.tolist():
        rows.append(row[: row.index(config.eos_token_id) + 1] if config.eos_token_id in row else row)
    return rows, scores


def recommend_constrained(model, tokenizer, prompts: Sequence[str], trie: TitleTrie, k: int, num_beams: int,
                          length_penalty: float = 0.0, exclude: Sequence[Collection[int]] | None = None,
                          decoder: str = "beam", item_log_prior=None, prior_weight: float = 1.0,
                          prior_lookahead: str | None = None) -> tuple[list[list[RankedTitle]], list[int], list[dict]]:
    """The top-``k`` catalog titles per prompt, by beam search (or exact search) under the title trie.

    Args:
        decoder (`str`, defaults to `"beam"`):
            A name in :data:`constrained_rec.evaluation.evaluate.DECODERS`, which names its function.
            ``"beam"`` (:func:`recommend_beam`): :func:`constrained_rec.decoding.recommend.recommend` (one prefill per
            prompt, beams share its KV cache, unique suffixes scored in one forward). ``"generate"``
            (:func:`recommend_generate`): transformers' ``generate()`` with :class:`TitleTrieProcessor`, the drop-in
            path (B prefills of each prompt, one step per token). ``"exact"`` (:func:`recommend_exact`): exact
            best-first search, the true top-``k`` within :data:`EXACT_NODE_BUDGET` prefixes per prompt.
        item_log_prior (array-like `(len(prompts), trie.num_items)`, *optional*), prior_weight (`float`):
            A collaborative prior fused into the search (columns in the trie's build order): titles rank by
            ``log p_LM(title) + prior_weight * log M(title)``, see :func:`constrained_rec.decoding.recommend.recommend`.
        prior_lookahead (`str`, *optional*):
            ``"sum"`` or ``"max"``, what a partial title's prior increments look ahead to (the order in which beam
            search prunes; exact search's bound); ``None``: the decoder's default (``"max"`` for exact search,
            ``"sum"`` otherwise).

    Returns:
        `(rankings, invalid, extras)`: per prompt its titles, best first, the number of returned sequences
        that were not a complete catalog title (always 0 unless the constraint is broken: it is measured,
        not assumed), and fields for its prediction record (exact search: ``budget_exhausted``, ``proven``).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; accepted: {list(DECODERS)}")
    module, function = DECODERS[decoder].split(":")
    return getattr(import_module(module), function)(model, tokenizer, prompts, trie, k, num_beams, length_penalty,
                                                    exclude, item_log_prior, prior_weight, prior_lookahead)


def recommend_generate(model, tokenizer, prompts, trie, k, num_beams, length_penalty, exclude, item_log_prior=None,
                       prior_weight=1.0, prior_lookahead=None):
    """The ``"generate"`` decoder: transformers' ``generate()`` with :class:`TitleTrieProcessor`; under the
    ``"max"`` lookahead each score gets back the per-prompt constant the processor leaves out."""
    if prior_lookahead == "max" and length_penalty != 0.0:
        raise ValueError(f"prior_lookahead='max' leaves a per-prompt constant out of every title's score, which "
                         f"length_penalty={length_penalty!r} would scale by length; use length_penalty=0.0 or 'sum'")
    config = _generation_config(tokenizer, num_beams, k, length_penalty, trie.max_length)
    constraints = ItemConstraints.build(trie, num_prompts=len(prompts), exclude=exclude,
                                        item_log_prior=item_log_prior, prior_weight=prior_weight,
                                        prior_lookahead=prior_lookahead or "sum")

    def processor(prompt_length: int) -> TitleTrieProcessor:
        return TitleTrieProcessor(trie, prompt_length=prompt_length, pad_token_id=tokenizer.pad_token_id,
                                  constraints=constraints)

    rows, scores = _generate(model, tokenizer, prompts, config, processor)
    outputs = []
    for p in range(len(prompts)):
        # A prompt that can reach fewer than k titles gets them first, then generate()'s fillers scored about
        # -1e9 (repeats, or rows that are no title): those are not outputs of the model, so they are left out.
        real = slice(p * k, p * k + min(k, constraints.titles_available(p)))
        titles = [parse_generated_title(tokenizer.decode(row, skip_special_tokens=True)) for row in rows[real]]
        offset = constraints.prior_offset(p)  # 0 under "sum"
        outputs.append([(row, title, score + offset) for row, title, score in zip(rows[real], titles, scores[real])])
    return (*_checked_rankings(trie, outputs, exclude), [{} for _ in prompts])


def recommend_beam(model, tokenizer, prompts, trie, k, num_beams, length_penalty, exclude, item_log_prior=None,
                   prior_weight=1.0, prior_lookahead=None):
    """The ``"beam"`` decoder: :func:`constrained_rec.decoding.recommend.recommend`."""
    rankings, invalid, _ = _recommend("beam", model, tokenizer, prompts, trie, k, num_beams, length_penalty, exclude,
                                      item_log_prior, prior_weight, prior_lookahead)
    return rankings, invalid, [{} for _ in prompts]


def recommend_exact(model, tokenizer, prompts, trie, k, num_beams, length_penalty, exclude, item_log_prior=None,
                    prior_weight=1.0, prior_lookahead=None):
    """The ``"exact"`` decoder: ``recommend(mode="exact")``, the true top-``k`` titles under the model (and the
    prior, bounded by the ``"max"`` lookahead unless ``prior_lookahead`` says ``"sum"``), ``num_beams`` prefixes
    scored per forward, at most :data:`EXACT_NODE_BUDGET` per prompt. A prompt that reaches the budget keeps the
    titles found so far, its proven ones first; its extras say so: ``budget_exhausted`` and ``proven`` (how many of
    its leading titles are proven the true top ones). They also say what its search cost: ``nodes_expanded`` (trie
    prefixes expanded), ``search_forwards`` (forwards its prefixes took part in, the prefill excluded) and
    ``search_tokens`` (tokens they fed), :class:`constrained_rec.decoding.recommend.DecodeStats`' per-prompt counts."""
    rankings, invalid, stats = _recommend("exact", model, tokenizer, prompts, trie, k, num_beams, length_penalty,
                                          exclude, item_log_prior, prior_weight, prior_lookahead)
    return rankings, invalid, [
        {"budget_exhausted": bool(exhausted), "proven": int(proven), "nodes_expanded": int(nodes),
         "search_forwards": int(forwards), "search_tokens": int(tokens)}
        for exhausted, proven, nodes, forwards, tokens in zip(stats.budget_exhausted, stats.proven, stats.expanded,
                                                              stats.search_forwards, stats.search_tokens)]


def _recommend(mode, model, tokenizer, prompts, trie, k, num_beams, length_penalty, exclude, item_log_prior,
               prior_weight, prior_lookahead):
    """:func:`constrained_rec.decoding.recommend.recommend` in ``mode``: ``(rankings, invalid, stats)``."""
    from constrained_rec.decoding.recommend import FewerTitlesWarning, recommend

    with warnings.catch_warnings():
        # the evaluation names the users who got fewer titles or no proof (ConstrainedRecommender), not batch positions
        warnings.simplefilter("ignore", FewerTitlesWarning)
        warnings.filterwarnings("ignore", message="exact search hit node_budget")
        result = recommend(model, tokenizer, list(prompts), trie, k, num_beams=num_beams, mode=mode,
                           length_penalty=length_penalty, exclude=exclude, batch_size=len(prompts),
                           item_log_prior=item_log_prior, prior_weight=prior_weight, prior_lookahead=prior_lookahead,
                           node_budget=EXACT_NODE_BUDGET)
    rankings, invalid = [], []
    for recs in result.recommendations:
        # recommend() already left the excluded items out of each title's items; the trie walk only re-checks
        # (measures) that every output is a whole catalog title.
        complete = [r for r in recs if trie.output_item_ids(r.token_ids)]
        rankings.append([RankedTitle(r.item_ids, r.title, r.score) for r in complete])
        invalid.append(len(recs) - len(complete))
    return rankings, invalid, result.stats


def _checked_rankings(trie, outputs, exclude) -> tuple[list[list[RankedTitle]], list[int]]:
    """Per prompt, the ``generate()`` outputs ``(token ids, title, score)`` that are complete titles, with their
    items less the prompt's excluded ones (a title keeps all its items in the trie), and how many were not titles."""
    rankings, invalid = [], []
    for p, prompt_outputs in enumerate(outputs):
        ranked, bad = [], 0
        excluded = exclude[p] if exclude is not None else ()
        for token_ids, title, score in prompt_outputs:
            items = trie.output_item_ids(token_ids)
            if not items:
                bad += 1
                continue
            ranked.append(RankedTitle([i for i in items if i not in excluded], title, score))
        rankings.append(ranked)
        invalid.append(bad)
    return rankings, invalid


def generate_unconstrained(model, tokenizer, prompts: Sequence[str], k: int, num_beams: int,
                           length_penalty: float, max_new_tokens: int) -> list[list[tuple[str, float]]]:
    """Per prompt, the ``k`` best beams of free generation: ``(decoded text, beam score)``, best first."""
    config = _generation_config(tokenizer, num_beams, k, length_penalty, max_new_tokens)
    rows, scores = _generate(model, tokenizer, prompts, config)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
    return [list(zip(texts[p * k : (p + 1) * k], scores[p * k : (p + 1) * k])) for p in range(len(prompts))]


def prediction_record(sample: EvalSample, item_ids, titles, scores, num_outputs: int, num_valid: int,
                      **extra) -> dict:
    """The record of one sample: its ranked ``item_ids`` with their titles and scores, how many outputs the
    method produced and how many were valid catalog titles, and any ``extra`` fields."""
    return {"sample": sample.index, "user_id": sample.user_id, "target_item_id": sample.target_item_id,
            "target_title": sample.target_title, "item_ids": list(item_ids), "titles": list(titles),
            "scores": [float(s) for s in scores], "num_outputs": num_outputs, "num_valid_outputs": num_valid,
            **extra}


def warn_fewer_recommendations(method: str, records: Sequence[dict], k: int) -> None:
    """Warn naming the users whose records hold fewer than ``k`` items: their exclusions (history) leave fewer
    catalog titles than K. Metrics count their missing ranks as misses."""
    short = [(r["user_id"], len(r["item_ids"])) for r in records if len(r["item_ids"]) < k]
    if short:
        named = ", ".join(f"user {user} ({count})" for user, count in short[:10])
        warnings.warn(f"{method}: {len(short)} user(s) got fewer than K={k} recommendations, as their history "
                      f"leaves fewer titles: {named}{', ...' if len(short) > 10 else ''}; metrics count the "
                      "missing ranks as misses", stacklevel=2)


def _expand(ranked: Iterable[RankedTitle], limit: int):
    """Items of titles in order (each once), with their titles and scores, cut at ``limit`` items."""
    items, titles, scores, seen = [], [], [], set()
    for entry in ranked:
        for item in entry.item_ids:
            if item not in seen and len(items) < limit:
                seen.add(item)
                items.append(item)
                titles.append(entry.title)
                scores.append(entry.score)
    return items, titles, scores


class ConstrainedRecommender:
    """Search under the title trie ("constrained", by ``config.decoder``); the base model of a LoRA model with
    ``use_adapter=False``.

    With ``prior`` (a callable ``samples -> float (len(samples), trie.num_items)`` log-prior rows, columns in the
    trie's build order, e.g. :class:`constrained_rec.experiment.assistant_prior.AssistantPrior`) and ``prior_weight`` it is
    LM + prior: the search ranks titles by ``log p_LM(title) + prior_weight * log M(title)`` (D3's assistant), partial
    titles looking ahead by ``prior_lookahead`` (``None``: the decoder's default, see :func:`recommend_constrained`).
    Records of exact search carry ``budget_exhausted``, ``proven`` and its cost, ``nodes_expanded``,
    ``search_forwards`` and ``search_tokens`` (:func:`recommend_exact`).
    """

    def __init__(self, model, tokenizer, trie: TitleTrie, config: EvalConfig, use_adapter: bool = True,
                 name: str | None = None, prior=None, prior_weight: float = 1.0, prior_lookahead: str | None = None):
        if eos_token_id(tokenizer) != trie.eos_token_id:
            raise ValueError(
                f"the tokenizer's EOS id {eos_token_id(tokenizer)} is not the trie's EOS id {trie.eos_token_id}: "
                "the trie was built with another tokenizer"
            )
        if config.max_k > len(trie):
            raise ValueError(f"K = {config.max_k} is larger than the catalog's {len(trie)} distinct titles")
        self.model, self.tokenizer, self.trie, self.config = model, tokenizer, trie, config
        self.use_adapter = use_adapter
        self.prior, self.prior_weight, self.prior_lookahead = prior, prior_weight, prior_lookahead
        self.names = (name or ("constrained" if use_adapter else "zero-shot-constrained"),)

    def __call__(self, samples: Sequence[EvalSample]) -> dict[str, list[dict]]:
        # a user who consumed the whole catalog has no title left: an empty list, not a decoding error
        left = [s for s in samples if not (self.config.exclude_history and len(s.exclude) >= self.trie.num_items)]
        decoded = {}
        if left:
            exclude = [s.exclude for s in left] if self.config.exclude_history else None
            with nullcontext() if self.use_adapter else adapter_disabled(self.model):
                ranked, bad, extras = recommend_constrained(
                    self.model, self.tokenizer, [s.prompt for s in left], self.trie, self.config.max_k,
                    self.config.num_beams, self.config.length_penalty, exclude, self.config.decoder,
                    item_log_prior=self.prior(left) if self.prior is not None else None, prior_weight=self.prior_weight,
                    prior_lookahead=self.prior_lookahead)
            decoded = {s.index: found for s, found in zip(left, zip(ranked, bad, extras))}
        records = []
        for sample in samples:
            ranked, bad, extra = decoded.get(sample.index, ([], 0, {}))
            items, titles, scores = _expand(ranked, self.config.max_k)
            records.append(prediction_record(sample, items, titles, scores, len(ranked) + bad, len(ranked), **extra))
        unproven = [r for r in records if r.get("budget_exhausted")]
        warn_fewer_recommendations(self.names[0], [r for r in records if not r.get("budget_exhausted")],
                                   self.config.max_k)
        if unproven:
            named = ", ".join(f"user {r['user_id']} ({r['proven']} proven, {len(r['item_ids'])} items)"
                              for r in unproven[:10])
            warnings.warn(f"{self.names[0]}: exact search's node budget ({EXACT_NODE_BUDGET} prefixes) left the "
                          f"top-{self.config.max_k} of {len(unproven)} user(s) unproven: {named}; their records "
                          "say so (budget_exhausted, proven titles first, then the best titles scored so far)",
                          stacklevel=2)
        return {self.names[0]: records}


class UnconstrainedRecommender:
    """BIGRec: free beam search, then exact-title grounding of every beam and L2 grounding of the top beam.

    ``max_new_tokens`` is the trie's ``max_length``: every catalog title plus EOS fits, so an output cut
    there is longer than any title and invalid either way.
    """

    def __init__(self, model, tokenizer, trie: TitleTrie, grounder: TitleGrounder, config: EvalConfig,
                 embedding_batch_size: int = 64):
        if config.max_k > len(grounder.item_ids):
            raise ValueError(f"K = {config.max_k} is larger than the catalog of {len(grounder.item_ids)} items")
        self.model, self.tokenizer, self.trie, self.grounder, self.config = model, tokenizer, trie, grounder, config
        self.embedding_batch_size = embedding_batch_size
        self.names = ("unconstrained-exact", "unconstrained-l2")

    def __call__(self, samples: Sequence[EvalSample]) -> dict[str, list[dict]]:
        k = self.config.max_k
        beams = generate_unconstrained(self.model, self.tokenizer, [s.prompt for s in samples], k,
                                       self.config.num_beams, self.config.length_penalty, self.trie.max_length)
        exclude = [s.exclude if self.config.exclude_history else frozenset() for s in samples]
        # the top beam's title as written; an empty output is embedded as the raw text or EOS, so that it
        # still maps to its nearest item (and counts as invalid)
        top_texts = [parse_generated_title(b[0][0]) or b[0][0] or self.tokenizer.eos_token for b in beams]
        embeddings = last_token_hidden_states(self.model, self.tokenizer, top_texts, self.embedding_batch_size)
        nearest, distances = self.grounder.nearest(embeddings, k, exclude=exclude)
        exact, l2 = [], []
        for sample, outputs, near, dist, excluded in zip(samples, beams, nearest, distances, exclude):
            generated = [text for text, _ in outputs]
            valid = [self.grounder.is_valid(text) for text in generated]
            ranked = [RankedTitle(self.grounder.exact(text, excluded), parse_generated_title(text), score)
                      for text, score in outputs]
            items, titles, scores = _expand(ranked, k)
            exact.append(prediction_record(sample, items, titles, scores, len(outputs), sum(valid), generated=generated))
            l2.append(prediction_record(sample, near, [self.grounder.title_of(i) for i in near],
                              [-float(d) for d in dist[: len(near)]], 1, int(valid[0]), generated=generated[:1]))
        return {"unconstrained-exact": exact, "unconstrained-l2": l2}


class MostPopularRecommender:
    """The most interacted items of the training split, history excluded alike; ties by item id.

    Example:

    ```python
    >>> from constrained_rec.evaluation.evaluate import EvalConfig, EvalSample, method_metrics
    >>> from constrained_rec.evaluation.recommenders import MostPopularRecommender
    >>> catalog = {1: "Heat (1995)", 2: "Casino (1995)", 3: "Babe (1995)"}
    >>> samples = [EvalSample(0, user_id=7, prompt="...", target_item_id=3, target_title="Babe (1995)",
    ...                       exclude=frozenset({2}))]
    >>> records = MostPopularRecommender({2: 50, 3: 20, 1: 5}, catalog, EvalConfig(ks=(1, 2)))(samples)
    >>> records["most-popular"][0]["item_ids"]  # item 2 is in the user's history
    [3, 1]
    >>> rows = [{"method": "most-popular", "seconds": 0.0, **r} for r in records["most-popular"]]
    >>> method_metrics(rows, EvalConfig(ks=(1, 2)), catalog_size=3, popularity={1: 0.0, 2: 100.0, 3: 50.0}
    ...                )["most-popular"]["hr@1"]["value"]
    1.0

    ```
    """

    names = ("most-popular",)

    def __init__(self, counts: Mapping[int, int], catalog: Mapping[int, str], config: EvalConfig):
        if config.max_k > len(catalog):
            raise ValueError(f"K = {config.max_k} is larger than the catalog of {len(catalog)} items")
        self.catalog, self.config = catalog, config
        self.order = sorted(catalog, key=lambda item: (-counts.get(item, 0), item))
        self.counts = counts

    def __call__(self, samples: Sequence[EvalSample]) -> dict[str, list[dict]]:
        records = []
        for sample in samples:
            excluded = sample.exclude if self.config.exclude_history else frozenset()
            items = []
            for item in self.order:
                if item not in excluded:
                    items.append(item)
                    if len(items) == self.config.max_k:
                        break
            records.append(prediction_record(sample, items, [self.catalog[i] for i in items],
                                   [self.counts.get(i, 0) for i in items], 0, 0))
        return {"most-popular": records}
