"""Full-catalog leave-one-out evaluation: recommend top-K items per user, store them, score them.

The pieces, one module each:

- samples (:class:`EvalSample`, built from a test split by :func:`samples_from_split` with the items each
  user consumed, :func:`consumed_items`) and settings (:class:`EvalConfig`), here;
- recommenders (:mod:`constrained_rec.evaluation.recommenders`: the :class:`~constrained_rec.evaluation.evaluate.Recommender`
  protocol, constrained and unconstrained decoding, most-popular);
- the resumable, sharded prediction store (:mod:`constrained_rec.evaluation.predictions`).

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
from dataclasses import asdict, dataclass, field
from typing import Collection, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from constrained_rec.evaluation import metrics
from constrained_rec.evaluation.predictions import PredictionStore
from constrained_rec.hf import process_state
from constrained_rec.validation import check_int, is_int

# The constrained decoders, registered here only: name -> the function of constrained_rec.evaluation.recommenders
# that decodes with it ("module:function", imported when first used, so that reading the options imports no
# torch). Each takes recommend_constrained's arguments (model, tokenizer, prompts, trie, k, num_beams,
# length_penalty, exclude, item_log_prior, prior_weight, prior_lookahead) and returns its (rankings, invalid,
# extras): extras[p] holds fields for prompt p's prediction record (exact search's proof, {} for the others).
DECODERS = {"beam": "constrained_rec.evaluation.recommenders:recommend_beam",
            "generate": "constrained_rec.evaluation.recommenders:recommend_generate",
            "exact": "constrained_rec.evaluation.recommenders:recommend_exact"}


@runtime_checkable
class Recommender(Protocol):
    """What :func:`constrained_rec.evaluation.evaluate.evaluate` runs.

    Attributes:
        names (`tuple[str, ...]`):
            The methods this recommender produces (one generation may serve several, e.g. BIGRec's exact
            and L2 grounding). They key the stored predictions, so they must be unique across recommenders.
        config (*optional*):
            When present, ``config.batch_size`` is how many samples one call receives (default 64).

    ``__call__(samples)`` takes a batch of :class:`~constrained_rec.evaluation.evaluate.EvalSample` and returns
    ``{name: [record per sample, in order]}`` for every name in ``names``; a record is
    :func:`~constrained_rec.evaluation.recommenders.prediction_record` (ranked ``item_ids`` best first, at most
    ``max(ks)`` of them, plus whatever
    extra fields the method reports). Recommenders must be deterministic for a given sample: resuming
    an interrupted evaluation recomputes only the samples without a record.
    """

    names: tuple[str, ...]

    def __call__(self, samples: Sequence[EvalSample]) -> dict[str, list[dict]]: ...


# coverage and the popularity percentile look at each user's top 10 (or all of a shorter top-K)
BEYOND_ACCURACY_K = 10


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
            Constrained decoding by ``"beam"`` (:func:`constrained_rec.decoding.recommend.recommend`), ``"generate"``
            (``generate()`` with :class:`TitleTrieProcessor`) or ``"exact"`` (``recommend(mode="exact")``, the
            true top-K within a node budget per user), see
            :func:`~constrained_rec.evaluation.recommenders.recommend_constrained`.
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
        if not ks or not all(is_int(k) and k >= 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {self.ks!r}")
        self.ks = tuple(sorted(set(ks)))
        if self.num_beams is None:
            self.num_beams = self.max_k
        if not (is_int(self.num_beams) and self.num_beams >= self.max_k):
            raise ValueError(f"num_beams must be an integer >= max(ks) = {self.max_k} (beam search returns at most "
                             f"num_beams titles), got {self.num_beams!r}")
        check_int(self.batch_size, "batch_size", least=1)
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; accepted: {list(DECODERS)}")
        if not math.isfinite(float(self.length_penalty)):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")

    @property
    def max_k(self) -> int:
        return max(self.ks)


@dataclass(frozen=True)
class EvalSample:
    """One held-out interaction: the prompt, the target, and the items never to recommend to this user.

    ``prompt`` is the prompt text, or a ``tokenization.SoftPrompt`` where the prompt carries collaborative tokens
    (``training.collab_tokens.CollabTokens.soft_samples``); decoding and the user-signal control take either."""

    index: int
    user_id: int
    prompt: str
    target_item_id: int
    target_title: str
    exclude: frozenset[int] = field(default_factory=frozenset)



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



# ------------------------------------------------------------------------------------------ evaluation
def sample_digest(samples: Sequence[EvalSample]) -> str:
    """A hash of the samples (index, user, target, prompt, exclusions): part of an evaluation's identity."""
    # a prompt with soft tokens (tokenization.SoftPrompt) by its text, items and a hash of its soft embeddings
    rows = [[s.index, s.user_id, s.target_item_id, s.prompt if isinstance(s.prompt, str) else str(s.prompt),
             sorted(s.exclude)] for s in samples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def evaluate(recommenders: Sequence[Recommender], samples: Sequence[EvalSample], output_dir: str | os.PathLike,
             identity: Mapping | None = None, show_progress: bool = True) -> list[dict] | None:
    """Run every recommender over ``samples``, resumably and sharded over processes; merge the records.

    Args:
        recommenders (`Sequence[Recommender]`):
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

    state = process_state()
    indices = [s.index for s in samples]
    if len(set(indices)) != len(indices):
        raise ValueError("sample indices must be unique: they key the predictions for resuming")
    names = [name for recommender in recommenders for name in recommender.names]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique across recommenders (they key the predictions), got {names}")
    store = PredictionStore(output_dir, {**(identity or {}), "samples": sample_digest(samples)}, state)
    mine = store.shard(samples)
    with open(store.part, "a", encoding="utf-8") as file:
        for recommender in recommenders:
            todo = [s for s in mine if any(not store.is_done(name, s.index) for name in recommender.names)]
            batch_size = getattr(getattr(recommender, "config", None), "batch_size", 64)
            bar = tqdm(total=len(todo), desc=" + ".join(recommender.names), unit="user",
                       disable=not (show_progress and state.is_main_process))
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                started = time.perf_counter()
                produced = recommender(batch)
                seconds = (time.perf_counter() - started) / len(batch)
                for name, records in produced.items():
                    for record in records:
                        store.append(file, name, record, seconds)
                file.flush()
                bar.update(len(batch))
            bar.close()
    return store.merge(indices)


# ---------------------------------------------------------------------------------------------- metrics
def method_metrics(records: Sequence[dict], config: EvalConfig, catalog_size: int,
                   popularity: Mapping[int, float]) -> dict[str, dict]:
    """Every figure of every method, from prediction records alone.

    Per method: ``users``; ``hr@K`` / ``ndcg@K`` as ``{"value", "ci"}`` (item-id hits, the headline);
    ``title_hr@K`` / ``title_ndcg@K`` alike (title hits as D3 and MiniOneRec count them,
    :func:`constrained_rec.evaluation.metrics.title_ranking_metrics`; absent for records without titles); ``validity_rate`` (valid outputs /
    outputs, ``None`` for methods without model outputs); ``coverage@C``; ``popularity_percentile@C``
    (mean popularity percentile of the top-C items, ``None`` when nothing was recommended), where ``C`` is 10 or the
    largest K when that is smaller (a run with ``--k 1`` recommends one item: ``coverage@1``); ``seconds`` and
    ``users_per_s`` of the recommender (per process under sharding). A method decoded by exact search (records
    with ``budget_exhausted``) also has ``budget_exhausted``: the users whose top-K its node budget left unproven,
    and, where its records count them, ``nodes_expanded`` and ``search_forwards`` per user (``{mean, median, max}``).
    """
    by_method: dict[str, list[dict]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    figures = {}
    top = min(BEYOND_ACCURACY_K, config.max_k)  # no method recommends more than max(ks) items
    for method, rows in by_method.items():
        rankings = [r["item_ids"] for r in rows]
        outputs = sum(r["num_outputs"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        popularity_pct = metrics.mean_popularity_percentile(rankings, popularity, k=top)  # nan: nothing recommended
        figures[method] = {
            "users": len(rows),
            **metrics.ranking_metrics(rankings, [r["target_item_id"] for r in rows], config.ks,
                                      config.confidence, config.bootstrap_resamples, config.seed),
            **_title_metrics(rows, config),
            "validity_rate": sum(r["num_valid_outputs"] for r in rows) / outputs if outputs else None,
            "outputs": outputs,
            f"coverage@{top}": metrics.catalog_coverage(rankings, catalog_size, k=top),
            f"popularity_percentile@{top}": popularity_pct if math.isfinite(popularity_pct) else None,
            "seconds": seconds,
            "users_per_s": len(rows) / seconds if seconds > 0 else None,
        }
        if any("budget_exhausted" in r for r in rows):
            figures[method]["budget_exhausted"] = sum(bool(r.get("budget_exhausted")) for r in rows)
        figures[method].update(_search_cost(rows))
    return figures


def _search_cost(rows: Sequence[dict]) -> dict:
    """Exact search's work per user, from records that count it (all of one method's or none: records written
    before the counts existed carry none): ``nodes_expanded`` and ``search_forwards``, each ``{mean, median, max}``."""
    if not rows or not all("nodes_expanded" in r for r in rows):
        return {}
    return {name: {"mean": float(np.mean(values)), "median": float(np.median(values)), "max": int(np.max(values))}
            for name in ("nodes_expanded", "search_forwards") for values in [[int(r[name]) for r in rows]]}


def _title_metrics(rows: Sequence[dict], config: EvalConfig) -> dict[str, dict]:
    """Title hits of one method's records; none where a record lacks titles (written by an older version)."""
    if not all("titles" in r and "target_title" in r for r in rows):
        return {}
    return metrics.title_ranking_metrics([r["titles"] for r in rows], [r["target_title"] for r in rows], config.ks,
                                         config.confidence, config.bootstrap_resamples, config.seed)


def config_dict(config: EvalConfig) -> dict:
    return {**asdict(config), "ks": list(config.ks)}
