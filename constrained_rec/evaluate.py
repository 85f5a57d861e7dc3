"""Full-catalog leave-one-out evaluation: recommend top-K items per user, store them, score them.

A *recommender* turns a batch of :class:`EvalSample` into one prediction record per sample for each of its
method names. Three are provided:

- :class:`ConstrainedRecommender` ("constrained"): one beam search per prompt under the title trie; every
  returned title is a catalog item by construction (measured anyway), duplicate titles expand to all
  their items, ties keep beam order. With ``use_adapter=False`` on a LoRA model it is the zero-shot base
  model under the same constraint ("zero-shot-constrained").
- :class:`UnconstrainedRecommender`: BIGRec as published, the baseline. Unconstrained beam search, then
  post-hoc grounding (:mod:`constrained_rec.grounding`): "unconstrained-exact" keeps the beams whose text is
  exactly a catalog title, in beam order; "unconstrained-l2" ranks the whole catalog by the L2 distance
  between the top beam's embedding and every title's (BIGRec's ranking). One generation serves both.
- :class:`MostPopularRecommender` ("most-popular"): training-split counts.

:func:`evaluate` runs recommenders over samples, appends records to ``predictions.part<rank>.jsonl`` as
batches finish (so an interrupted run resumes without redoing finished samples), shards samples over the
processes of ``accelerate launch`` / ``torchrun`` (each takes every ``world``-th sample), and merges all
records into ``predictions.jsonl``. :func:`method_metrics` computes every figure from those records alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Mapping, Sequence

import numpy as np
import torch

from constrained_rec import metrics
from constrained_rec.grounding import TitleGrounder, last_token_hidden_states, left_pad, parse_generated_title
from constrained_rec.processor import TitleTrieProcessor
from constrained_rec.tokenization import eos_token_id, prompt_token_ids
from constrained_rec.trie import TitleTrie

PREDICTIONS = "predictions.jsonl"
IDENTITY = "evaluation.json"
DECODERS = ("beam", "generate")


@dataclass
class EvalConfig:
    """Settings of an evaluation; all of them are recorded with the results.

    Args:
        ks (`tuple[int, ...]`, defaults to `(1, 5, 10, 20)`):
            Cut-offs of HR@K and NDCG@K; every method recommends ``max(ks)`` items.
        num_beams (`int`, *optional*):
            Beam width, at least ``max(ks)``; defaults to ``max(ks)``.
        length_penalty (`float`, defaults to 0.0):
            Beams are ranked by ``log_prob / length ** length_penalty``; 0.0 ranks by the title's total
            log-probability (length normalisation biases the ranking, D3).
        exclude_history (`bool`, defaults to `True`):
            Keep items the user already consumed out of every ranking.
        batch_size (`int`, defaults to 4):
            Prompts decoded together (and the granularity of resuming).
        decoder (`str`, defaults to `"beam"`):
            Constrained decoding by ``"beam"`` (:func:`constrained_rec.decode.recommend`) or ``"generate"``
            (``generate()`` with :class:`TitleTrieProcessor`), see :func:`recommend_constrained`.
        confidence (`float`, defaults to 0.95):
            Coverage of the bootstrap intervals.
        bootstrap_resamples (`int`, defaults to 1000):
            Resamples of the users for the intervals.
        seed (`int`, defaults to 0):
            Seed of the bootstrap.
    """

    ks: tuple[int, ...] = (1, 5, 10, 20)
    num_beams: int | None = None
    length_penalty: float = 0.0
    exclude_history: bool = True
    batch_size: int = 4
    decoder: str = "beam"
    confidence: float = 0.95
    bootstrap_resamples: int = 1000
    seed: int = 0

    def __post_init__(self):
        ks = tuple(self.ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {self.ks!r}")
        self.ks = tuple(sorted(set(ks)))
        if self.num_beams is None:
            self.num_beams = self.max_k
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < self.max_k:
            raise ValueError(
                f"num_beams must be an integer >= max(ks) = {self.max_k} (beam search returns at most num_beams "
                f"titles), got {self.num_beams!r}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; accepted: {list(DECODERS)}")
        if not math.isfinite(float(self.length_penalty)):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")

    @property
    def max_k(self) -> int:
        return max(self.ks)


@dataclass(frozen=True)
class EvalSample:
    """One held-out interaction: the prompt, the target, and the items never to recommend to this user."""

    index: int
    user_id: int
    prompt: str
    target_item_id: int
    target_title: str
    exclude: frozenset[int] = field(default_factory=frozenset)


@dataclass
class RankedTitle:
    """A recommended title: the items it names (exclusions removed), the title, and its beam score."""

    item_ids: list[int]
    title: str
    score: float


# ------------------------------------------------------------------------------------------- data helpers
def consumed_items(interactions, samples: Iterable[Mapping]) -> list[frozenset[int]]:
    """For each sample, every item its user interacted with before the sample's target interaction.

    The target interaction is located in the user's time-ordered interactions as the last position whose
    item is the target and whose preceding items end with the sample's ``history_item_ids``; everything
    before it counts as consumed (not only the ``max_history`` items shown in the prompt).

    Args:
        interactions (`pandas.DataFrame`):
            ``user_id``, ``item_id`` sorted by user then time (``InteractionData.interactions``).
        samples (`Iterable[Mapping]`):
            Rows with ``user_id``, ``target_item_id`` and ``history_item_ids`` (a split of ``make_splits``).
    """
    users = interactions["user_id"].to_numpy()
    items = interactions["item_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    block = {int(users[s]): (int(s), int(e)) for s, e in zip(starts, ends)}
    consumed = []
    for row in samples:
        user, target, history = int(row["user_id"]), int(row["target_item_id"]), list(row["history_item_ids"])
        if user not in block:
            raise ValueError(f"user {user} of the evaluation samples has no interactions in the data set")
        start, end = block[user]
        user_items = items[start:end].tolist()
        for position in range(len(user_items) - 1, -1, -1):
            if user_items[position] == target and user_items[max(0, position - len(history)) : position] == history:
                consumed.append(frozenset(user_items[:position]))
                break
        else:
            raise ValueError(
                f"the target interaction (item {target} after history {history}) of user {user} is not in the "
                "data set's interactions; were the samples made from another data set?"
            )
    return consumed


def training_item_counts(interactions, held_out_rows: Iterable[int]) -> Counter:
    """Interactions per item, leaving out the held-out (validation and test) rows."""
    keep = np.ones(len(interactions), dtype=bool)
    keep[np.fromiter(held_out_rows, dtype=np.int64)] = False
    return Counter(interactions["item_id"].to_numpy()[keep].tolist())


def samples_from_split(split, exclude: Sequence[Collection[int]] | None = None) -> list[EvalSample]:
    """:class:`EvalSample` for every row of a test split (``make_splits(...)["test"]``)."""
    rows = list(split)
    if exclude is not None and len(exclude) != len(rows):
        raise ValueError(f"got {len(exclude)} exclusion sets for {len(rows)} samples; give one per sample")
    return [
        EvalSample(index, int(row["user_id"]), row["prompt"], int(row["target_item_id"]), row["target_title"],
                   frozenset(exclude[index]) if exclude is not None else frozenset())
        for index, row in enumerate(rows)
    ]


# ------------------------------------------------------------------------------------------ decoding
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

    input_ids, attention_mask = left_pad([prompt_token_ids(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    prompt_length = input_ids.shape[1]
    processors = LogitsProcessorList([logits_processor(prompt_length)] if logits_processor else [])
    with torch.no_grad():
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                generation_config=config, logits_processor=processors)
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


def _adapter_context(model, use_adapter: bool):
    if use_adapter:
        return nullcontext()
    if not hasattr(model, "disable_adapter"):
        raise ValueError("use_adapter=False needs a peft model with an adapter to switch off")
    return model.disable_adapter()


def recommend_constrained(model, tokenizer, prompts: Sequence[str], trie: TitleTrie, k: int, num_beams: int,
                          length_penalty: float = 0.0, exclude: Sequence[Collection[int]] | None = None,
                          decoder: str = "beam") -> tuple[list[list[RankedTitle]], list[int]]:
    """The top-``k`` catalog titles per prompt, by beam search under the title trie.

    Args:
        decoder (`str`, defaults to `"beam"`):
            ``"beam"``: :func:`constrained_rec.decode.recommend` (one prefill per prompt, beams share its KV
            cache, unique suffixes scored in one forward). ``"generate"``: transformers' ``generate()`` with
            :class:`TitleTrieProcessor`, the drop-in path (B prefills of each prompt, one step per token).

    Returns:
        `(rankings, invalid)`: per prompt its titles, best first, and the number of returned sequences
        that were not a complete catalog title (always 0 unless the constraint is broken: it is measured,
        not assumed).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; accepted: {list(DECODERS)}")
    if decoder == "beam":
        return _recommend_beam(model, tokenizer, prompts, trie, k, num_beams, length_penalty, exclude)
    config = _generation_config(tokenizer, num_beams, k, length_penalty, trie.max_length)

    def processor(prompt_length: int) -> TitleTrieProcessor:
        return TitleTrieProcessor(trie, prompt_length=prompt_length, exclude=exclude,
                                  pad_token_id=tokenizer.pad_token_id)

    rows, scores = _generate(model, tokenizer, prompts, config, processor)
    outputs = []
    for p in range(len(prompts)):
        titles = [parse_generated_title(tokenizer.decode(row, skip_special_tokens=True)) for row in rows[p * k : (p + 1) * k]]
        outputs.append(list(zip(rows[p * k : (p + 1) * k], titles, scores[p * k : (p + 1) * k])))
    return _checked_rankings(trie, outputs, exclude)


def _recommend_beam(model, tokenizer, prompts, trie, k, num_beams, length_penalty, exclude):
    from constrained_rec.decode import recommend

    result = recommend(model, tokenizer, list(prompts), trie, k, num_beams=num_beams, length_penalty=length_penalty,
                       exclude=exclude, batch_size=len(prompts))
    outputs = [[(r.token_ids, r.title, r.score) for r in recs] for recs in result.recommendations]
    return _checked_rankings(trie, outputs, exclude)


def _checked_rankings(trie, outputs, exclude) -> tuple[list[list[RankedTitle]], list[int]]:
    """Per prompt, the outputs ``(token ids, title, score)`` that are complete titles, and how many were not."""
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


# --------------------------------------------------------------------------------------- recommenders
def _record(sample: EvalSample, item_ids, titles, scores, num_outputs: int, num_valid: int, **extra) -> dict:
    return {"sample": sample.index, "user_id": sample.user_id, "target_item_id": sample.target_item_id,
            "target_title": sample.target_title, "item_ids": list(item_ids), "titles": list(titles),
            "scores": [float(s) for s in scores], "num_outputs": num_outputs, "num_valid_outputs": num_valid,
            **extra}


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
    """Beam search under the title trie ("constrained"); the base model of a LoRA model with ``use_adapter=False``."""

    def __init__(self, model, tokenizer, trie: TitleTrie, config: EvalConfig, use_adapter: bool = True,
                 name: str | None = None):
        if eos_token_id(tokenizer) != trie.eos_token_id:
            raise ValueError(
                f"the tokenizer's EOS id {eos_token_id(tokenizer)} is not the trie's EOS id {trie.eos_token_id}: "
                "the trie was built with another tokenizer"
            )
        if config.max_k > len(trie):
            raise ValueError(f"K = {config.max_k} is larger than the catalog's {len(trie)} distinct titles")
        self.model, self.tokenizer, self.trie, self.config = model, tokenizer, trie, config
        self.use_adapter = use_adapter
        self.names = (name or ("constrained" if use_adapter else "zero-shot-constrained"),)

    def __call__(self, samples: Sequence[EvalSample]) -> dict[str, list[dict]]:
        exclude = [s.exclude for s in samples] if self.config.exclude_history else None
        with _adapter_context(self.model, self.use_adapter):
            rankings, invalid = recommend_constrained(
                self.model, self.tokenizer, [s.prompt for s in samples], self.trie, self.config.max_k,
                self.config.num_beams, self.config.length_penalty, exclude, self.config.decoder)
        records = []
        for sample, ranked, bad in zip(samples, rankings, invalid):
            items, titles, scores = _expand(ranked, self.config.max_k)
            records.append(_record(sample, items, titles, scores, len(ranked) + bad, len(ranked)))
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
            exact.append(_record(sample, items, titles, scores, len(outputs), sum(valid), generated=generated))
            l2.append(_record(sample, near, [self.grounder.title_of(i) for i in near],
                              [-float(d) for d in dist[: len(near)]], 1, int(valid[0]), generated=generated[:1]))
        return {"unconstrained-exact": exact, "unconstrained-l2": l2}


class MostPopularRecommender:
    """The most interacted items of the training split, history excluded alike; ties by item id.

    Example:

    ```python
    >>> from constrained_rec.evaluate import EvalConfig, EvalSample, MostPopularRecommender, method_metrics
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
            records.append(_record(sample, items, [self.catalog[i] for i in items],
                                   [self.counts.get(i, 0) for i in items], 0, 0))
        return {"most-popular": records}


# ------------------------------------------------------------------------------------------ predictions
def _read_jsonl(path: Path, repair_tail: bool) -> list[dict]:
    """Records of a JSON-lines file. A last line cut short by an interruption is dropped (and, with
    ``repair_tail``, cut from the file so that appending continues cleanly); any other bad line is an error."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the unterminated last line of an interrupted write
                if repair_tail:
                    with open(path, "r+b") as file:
                        file.truncate(len(data) - len(line))
                break
            raise ValueError(f"{path}:{number} is not a JSON record ({error}); the predictions file is damaged") from None
    return records


def read_predictions(output_dir: str | os.PathLike, repair_tail: bool = False) -> list[dict]:
    """Every record in ``predictions.jsonl`` and the per-process parts of an unfinished run, first copy wins."""
    folder = Path(output_dir)
    paths = [folder / PREDICTIONS] + sorted(folder.glob("predictions.part*.jsonl"))
    seen, records = set(), []
    for path in paths:
        for record in _read_jsonl(path, repair_tail):
            key = (record["method"], record["sample"])
            if key not in seen:
                seen.add(key)
                records.append(record)
    return records


def _process_state():
    from accelerate import PartialState

    return PartialState()


def _check_identity(folder: Path, identity: dict, is_main: bool, wait) -> None:
    path = folder / IDENTITY
    if is_main and not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))
        os.replace(tmp, path)
    wait()
    saved = json.loads(path.read_text())
    differing = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {identity.get(k)!r}" for k in differing)
        raise ValueError(
            f"{folder} holds predictions of a different evaluation ({details}); resume only with the same "
            "settings, or choose another --output-dir"
        )


def evaluate(recommenders: Sequence, samples: Sequence[EvalSample], output_dir: str | os.PathLike,
             identity: Mapping | None = None, show_progress: bool = True) -> list[dict] | None:
    """Run every recommender over ``samples``, resumably and sharded over processes; merge the records.

    Args:
        recommenders (`Sequence`):
            Objects with ``names`` (method names) and ``__call__(samples) -> {name: [record per sample]}``.
        samples (`Sequence[EvalSample]`):
            The held-out interactions to evaluate, ``index`` unique.
        output_dir (`str` or `os.PathLike`):
            Receives ``predictions.part<rank>.jsonl`` while running and ``predictions.jsonl`` at the end.
        identity (`Mapping`, *optional*):
            What makes two evaluations the same (settings, model, catalog, samples). It is stored in
            ``evaluation.json``; resuming in a folder written with another identity is an error.
        show_progress (`bool`, defaults to `True`):
            A progress bar per recommender on the main process.

    Returns:
        On the main process, every record of ``predictions.jsonl`` (this run's and earlier runs' in the same
        folder); ``None`` on the other processes.
    """
    from tqdm.auto import tqdm

    folder = Path(output_dir)
    state = _process_state()
    rank, world = state.process_index, state.num_processes
    indices = [s.index for s in samples]
    if len(set(indices)) != len(indices):
        raise ValueError("sample indices must be unique: they key the predictions for resuming")
    sample_digest = hashlib.sha256(json.dumps([[s.index, s.user_id, s.target_item_id, s.prompt, sorted(s.exclude)]
                                               for s in samples]).encode()).hexdigest()[:16]
    _check_identity(folder, {**(identity or {}), "samples": sample_digest}, state.is_main_process,
                    state.wait_for_everyone)
    done = {(r["method"], r["sample"]) for r in read_predictions(folder, repair_tail=False)}
    part = folder / f"predictions.part{rank}.jsonl"
    _read_jsonl(part, repair_tail=True)  # only this process appends to its part
    mine = list(samples)[rank::world]
    with open(part, "a", encoding="utf-8") as file:
        for recommender in recommenders:
            todo = [s for s in mine if any((name, s.index) not in done for name in recommender.names)]
            batch_size = getattr(getattr(recommender, "config", None), "batch_size", 64)
            bar = tqdm(total=len(todo), desc=" + ".join(recommender.names), unit="user",
                       disable=not (show_progress and state.is_main_process))
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                started = time.perf_counter()
                produced = recommender(batch)
                seconds = (time.perf_counter() - started) / len(batch)
                for name, records in produced.items():
                    for sample, record in zip(batch, records):
                        if (name, sample.index) not in done:
                            file.write(json.dumps({"method": name, **record, "seconds": seconds},
                                                  ensure_ascii=False) + "\n")
                file.flush()
                bar.update(len(batch))
            bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    records = read_predictions(folder)
    order = {index: position for position, index in enumerate(indices)}
    methods = list(dict.fromkeys(r["method"] for r in records))
    records.sort(key=lambda r: (methods.index(r["method"]), order.get(r["sample"], len(order) + r["sample"])))
    tmp = folder / (PREDICTIONS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, folder / PREDICTIONS)
    for path in folder.glob("predictions.part*.jsonl"):
        path.unlink()
    return records


# ---------------------------------------------------------------------------------------------- metrics
def method_metrics(records: Sequence[dict], config: EvalConfig, catalog_size: int,
                   popularity: Mapping[int, float]) -> dict[str, dict]:
    """Every figure of every method, from prediction records alone.

    Per method: ``users``; ``hr@K`` / ``ndcg@K`` as ``{"value", "ci"}``; ``validity_rate`` (valid outputs /
    outputs, ``None`` for methods without model outputs); ``coverage@10``; ``popularity_percentile@10``
    (mean popularity percentile of the top-10 items, ``None`` when nothing was recommended); ``seconds`` and ``users_per_s`` of the recommender
    (per process under sharding).
    """
    by_method: dict[str, list[dict]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    figures = {}
    for method, rows in by_method.items():
        rankings = [r["item_ids"] for r in rows]
        outputs = sum(r["num_outputs"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        popularity_pct = metrics.mean_popularity_percentile(rankings, popularity, k=10)  # nan: nothing recommended
        figures[method] = {
            "users": len(rows),
            **metrics.ranking_metrics(rankings, [r["target_item_id"] for r in rows], config.ks,
                                      config.confidence, config.bootstrap_resamples, config.seed),
            "validity_rate": sum(r["num_valid_outputs"] for r in rows) / outputs if outputs else None,
            "outputs": outputs,
            "coverage@10": metrics.catalog_coverage(rankings, catalog_size, k=10),
            "popularity_percentile@10": popularity_pct if math.isfinite(popularity_pct) else None,
            "seconds": seconds,
            "users_per_s": len(rows) / seconds if seconds > 0 else None,
        }
    return figures


def config_dict(config: EvalConfig) -> dict:
    return {**asdict(config), "ks": list(config.ks)}
