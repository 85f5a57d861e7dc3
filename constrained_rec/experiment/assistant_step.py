"""The collaborative assistant as a step of a run: fit it, weigh its prior.

:func:`constrained_rec.experiment.skeleton.run_experiment` calls these steps when ``--assistant`` is not ``none``:

1. :func:`fit_assistant_step` (before the adapter): fit the assistant on the *training* interactions of the split
   (validation targets only choose its hyper-parameters, test targets are never seen), save it into
   ``OUTPUT_DIR/assistant``; a resumed run reloads it.
2. :func:`prior_weight_step` (once the adapter is ready): the prior's weight ``w`` and lookahead, given or chosen
   on validation users (:func:`sweep_prior_weight`), saved beside the assistant; the sweep may instead choose the
   assistant alone, and LM + prior then falls back to it (its recommendations are the assistant's).

:func:`sweep_prior_weight` decodes a sample of validation users exactly as the run decodes its test users (LM +
prior beam search, or exact search with ``--decoder exact``; :mod:`constrained_rec.experiment.assistant_prior`) at
every ``w`` of the grid (under each lookahead with ``--prior-lookahead auto``) and keeps the arm with the best
validation NDCG@10, so the choice accounts for the search error too.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from constrained_rec.experiment.assistant_prior import AssistantPrior

ASSISTANT_FOLDER = "assistant"
PRIOR_WEIGHT_FILE = "prior_weight.json"
# Each weight costs one beam search per validation user (about 2.3 CPU s a user on this 2-core machine, issue 20),
# so 100 users x 5 weights was about 20 CPU minutes. w = 0 (the LM alone, which the run also reports) never won
# and w = 64 approaches the assistant alone, which is now an arm of its own: three weights remain.
WEIGHT_GRID = (1.0, 4.0, 16.0)
# Issue 20: 30 users could not tell the weights apart (or the LM + prior from the assistant); 100 at least.
SWEEP_USERS = 100
SWEEP_BEAMS = 10
SWEEP_K = 10
SWEEP_BATCH = 4
# --prior-lookahead auto: the sweep decodes every weight under each of these (constrained_rec.decoding.constraints)
LOOKAHEAD_ARMS = ("sum", "max")


@dataclass
class AssistantSetup:
    """A fitted assistant and what the run needs of it: test histories, the prior weight and its sweep."""

    name: str
    assistant: object  # constrained_rec.collaborative.Assistant
    histories: list  # histories[sample.index]: the test user's items before the target, oldest first
    prior_weight: float | None = None
    prior_lookahead: str = "sum"  # of LM + prior's partial titles: given, or chosen by the sweep
    sweep: dict | None = None
    fit_seconds: float | None = None
    fallback: bool = False  # the sweep found the assistant alone at least as good: LM + prior is the assistant
    tokens: object = None  # CollabTokens of --collab-tokens items: the sweep's validation prompts carry them
    _prior: tuple | None = field(default=None, repr=False, compare=False)  # (trie, its AssistantPrior)

    @property
    def fused_name(self) -> str:
        """The LM + prior method's name in reports, e.g. ``"constrained+sasrec"``."""
        return f"constrained+{self.name}"

    def prior(self, trie) -> AssistantPrior:
        """The test users' :class:`~constrained_rec.experiment.assistant_prior.AssistantPrior` on ``trie``, built
        once per trie (the LM + prior method and the search-error check share it)."""
        if self._prior is None or self._prior[0] is not trie:
            self._prior = (trie, AssistantPrior(self.assistant, self.histories, trie))
        return self._prior[1]


def full_histories(data, split) -> list:
    """Each sample's user's full ordered history before its target (not only the prompt's window)."""
    from constrained_rec.collaborative import histories_before, sample_rows

    return histories_before(data, sample_rows(data, split)) if len(split) else []


def _wait(state) -> None:
    if state is not None:
        state.wait_for_everyone()


def fit_assistant_step(name: str, loaded, output_dir: Path, seed: int, state=None) -> AssistantSetup | None:
    """Fit ``name`` on the training split (main process), save it into ``OUTPUT_DIR/assistant``, load it.

    A folder that already holds the assistant (an interrupted run of the same identity) is reloaded, not refit.
    Returns ``None`` for ``"none"``.
    """
    from constrained_rec.collaborative import fit_assistant, load_assistant

    if name == "none":
        return None
    folder = Path(output_dir) / ASSISTANT_FOLDER
    fit_seconds = None
    if (state is None or state.is_main_process) and not _saved_assistant(folder, name):
        tick = time.perf_counter()
        progress = {"log": lambda line: print(line, flush=True)} if name == "sasrec" else {}  # one line per epoch
        fit_assistant(name, loaded.data, loaded.split_config, seed=seed, positions=loaded.target_rows(),
                      **progress).save(folder)
        fit_seconds = time.perf_counter() - tick
    _wait(state)
    return AssistantSetup(name, load_assistant(folder), full_histories(loaded.data, loaded.splits["test"]),
                          fit_seconds=fit_seconds)


def _saved_assistant(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds a readable ``name`` assistant to reuse. A damaged folder (a save killed by an
    older, non-atomic version, a lost file) is removed with a message, to be refit; another kind is an error."""
    from constrained_rec.collaborative import DamagedAssistantError, load_assistant
    from constrained_rec.collaborative.base import read_config

    if not folder.exists():
        return False
    try:
        kind = read_config(folder)["kind"]
        if kind == name:
            load_assistant(folder)
    except DamagedAssistantError as error:
        print(f"the saved assistant in {folder} is damaged ({error}); refitting the {name} assistant", flush=True)
        shutil.rmtree(folder)  # its prior_weight.json belonged to the damaged assistant: chosen again
        return False
    if kind != name:
        raise ValueError(f"{folder} holds a {kind!r} assistant, not the {name!r} this run asks for")
    return True


def prior_weight_step(setup: AssistantSetup, prior_weight, model, tokenizer, trie, loaded, output_dir: Path,
                      exclude_history: bool, seed: int, state=None, users: int = SWEEP_USERS,
                      num_beams: int = SWEEP_BEAMS, lookahead: str = "sum", decoder: str = "beam") -> AssistantSetup:
    """Set ``setup.prior_weight`` and ``setup.prior_lookahead``: the given number and ``lookahead`` (``"sum"`` or
    ``"max"``), or (``"auto"``) the sweep's choice, computed once on the main process (decoding as ``decoder`` does;
    under both lookaheads where ``lookahead`` is ``"auto"``) and saved in ``OUTPUT_DIR/assistant/prior_weight.json``
    (a resumed run reads it back)."""
    if prior_weight != "auto":
        if lookahead == "auto":
            raise ValueError(f"prior lookahead 'auto' is chosen by the weight sweep, which prior_weight={prior_weight!r} "
                             "skips; pass prior_weight='auto', or lookahead 'sum' or 'max'")
        setup.prior_weight, setup.prior_lookahead = float(prior_weight), lookahead
        return setup
    path = Path(output_dir) / ASSISTANT_FOLDER / PRIOR_WEIGHT_FILE
    if (state is None or state.is_main_process) and not path.is_file():
        sweep = sweep_prior_weight(setup.assistant, model, tokenizer, trie, loaded, exclude_history, seed,
                                   users=users, num_beams=num_beams, tokens=setup.tokens,
                                   lookaheads=LOOKAHEAD_ARMS if lookahead == "auto" else (lookahead,), decoder=decoder)
        path.write_text(json.dumps(sweep, indent=1) + "\n")
    _wait(state)
    setup.sweep = json.loads(path.read_text())
    setup.fallback = bool(setup.sweep.get("fallback", False))
    setup.prior_weight = None if setup.fallback else float(setup.sweep["chosen"])
    setup.prior_lookahead = setup.sweep.get("chosen_lookahead", "sum")  # a sweep written before the option: "sum"
    return setup


def sweep_prior_weight(assistant, model, tokenizer, trie, loaded, exclude_history: bool, seed: int,
                       users: int = SWEEP_USERS, num_beams: int = SWEEP_BEAMS,
                       grid: Sequence[float] = WEIGHT_GRID, name: str | None = None, confidence: float = 0.95,
                       num_resamples: int = 1000, tokens=None, lookaheads: Sequence[str] = ("sum",),
                       decoder: str = "beam") -> dict:
    """Choose ``w`` and the lookahead, or the assistant alone, on validation users (their second-to-last item; test
    targets unseen).

    A seeded sample of ``users`` validation samples is decoded as the run decodes its test users: LM + prior
    beam search (``num_beams``, consumed items excluded when ``exclude_history``) at every ``w`` of ``grid``
    (``w = 0``, if given, is the LM alone) under each of ``lookaheads``, each prompt prefilled once for all of
    these arms (:func:`constrained_rec.decoding.recommend.recommend_at_weights`); with ``decoder="exact"`` exact
    search instead, once per ``w`` (one lookahead: its bound). One more arm is the assistant alone, ranking the
    whole catalog as the run's assistant method does. The arm with the best validation NDCG@10 wins (the first
    in order on ties: the smaller ``w``, then the earlier lookahead), unless the assistant alone scores at least
    as well: then ``chosen`` is ``"assistant"`` and LM + prior falls back to it (the LM must beat the assistant).

    Returns the sweep, JSON-ready: per arm its ``grid`` weight, ``lookahead``, ``validation_ndcg@10`` and
    ``validation_ndcg@10_ci``, and ``versus_assistant`` (the paired difference from the assistant alone,
    :func:`constrained_rec.evaluation.paired.paired_difference`); ``assistant_ndcg@10`` (``{value, ci}``),
    ``chosen`` (the weight), ``chosen_lookahead``, ``fallback`` and settings; exact search adds per arm
    ``budget_exhausted`` (users whose top-K its node budget left unproven). With ``tokens``
    (``training.collab_tokens.CollabTokens``) the validation prompts carry each user's soft tokens.
    """
    from constrained_rec.collaborative import AssistantRecommender
    from constrained_rec.evaluation.evaluate import EvalConfig
    from constrained_rec.evaluation.metrics import bootstrap_interval
    from constrained_rec.evaluation.paired import paired_difference, per_user_ndcg

    started, cpu_started = time.perf_counter(), time.process_time()
    name = name or getattr(assistant, "name", "assistant")
    samples, histories, k = sweep_samples(trie, loaded, exclude_history, seed, users, tokens, tokenizer)
    log_prior = AssistantPrior(assistant, histories, trie)(samples)
    exclude = [s.exclude for s in samples] if exclude_history else None
    weights, arm_lookaheads, results = _decode_arms(model, tokenizer, [s.prompt for s in samples], trie, k, grid,
                                                    lookaheads, max(num_beams, k), exclude, log_prior, decoder)
    labels = [f"w={w:g}" + (f",{a}" if len(lookaheads) > 1 else "") for w, a in zip(weights, arm_lookaheads)]
    arms = {label: [_sweep_record(s, [i for r in recs for i in r.item_ids], label)
                    for s, recs in zip(samples, result.recommendations)] for label, result in zip(labels, results)}
    alone = AssistantRecommender(assistant, histories, loaded.data.titles,
                                 EvalConfig(ks=(k,), exclude_history=exclude_history), name=name)(samples)[name]
    records = [r for rows in arms.values() for r in rows] + [_sweep_record(s, r["item_ids"], name)
                                                             for s, r in zip(samples, alone)]

    def figure(method: str) -> dict:
        values = np.array(list(per_user_ndcg(records, method, SWEEP_K).values()))
        return {"value": float(values.mean()), "ci": list(bootstrap_interval(values, confidence, num_resamples, seed))}

    figures = [figure(arm) for arm in arms]
    best = int(np.argmax([f["value"] for f in figures]))  # the first maximum: the smallest w, then lookahead order
    assistant_figure = figure(name)
    fallback = assistant_figure["value"] >= figures[best]["value"]
    return {"chosen": "assistant" if fallback else float(weights[best]), "fallback": fallback,
            "chosen_lookahead": arm_lookaheads[best], "grid": [float(w) for w in weights], "lookahead": arm_lookaheads,
            **({"budget_exhausted": [sum(r.stats.budget_exhausted) for r in results]} if decoder == "exact" else {}),
            "decoder": decoder, "validation_ndcg@10": [f["value"] for f in figures],
            "validation_ndcg@10_ci": [f["ci"] for f in figures], "assistant": name,
            "assistant_ndcg@10": assistant_figure,
            "versus_assistant": [paired_difference(records, arm, name, SWEEP_K, confidence, num_resamples, seed)
                                 for arm in arms],
            "users": len(samples), "k": k, "num_beams": max(num_beams, k), "seed": seed, "confidence": confidence,
            **({"prefill": "once per validation prompt for all weights"} if decoder != "exact" else {}),
            "objective": f"validation NDCG@10 of LM + prior {'exact' if decoder == 'exact' else 'beam'} search at "
                         "each w (and lookahead), decoded as the test users are, and of the assistant alone",
            "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}


def _decode_arms(model, tokenizer, prompts, trie, k, grid, lookaheads, num_beams, exclude, log_prior, decoder):
    """``(weight, lookahead, DecodeResult)`` of every arm, as three lists: every ``w`` of ``grid`` under each of
    ``lookaheads``, by beam search with one prefill per prompt, or (``decoder="exact"``) by exact search per ``w``."""
    from constrained_rec.decoding.recommend import recommend, recommend_at_weights
    from constrained_rec.evaluation.recommenders import EXACT_NODE_BUDGET

    weights = [float(w) for w in grid for _ in lookaheads]
    arm_lookaheads = [a for _ in grid for a in lookaheads]
    if decoder != "exact":
        return weights, arm_lookaheads, recommend_at_weights(
            model, tokenizer, prompts, trie, k, weights, num_beams=num_beams, exclude=exclude, item_log_prior=log_prior,
            batch_size=SWEEP_BATCH, prior_lookahead=arm_lookaheads)
    if len(lookaheads) != 1:
        raise ValueError(f"exact search returns the same top-K under each lookahead: give one (its bound), not "
                         f"{list(lookaheads)}")
    return weights, arm_lookaheads, [
        recommend(model, tokenizer, prompts, trie, k, num_beams=num_beams, mode="exact", exclude=exclude,
                  item_log_prior=log_prior, prior_weight=w, prior_lookahead=a, batch_size=SWEEP_BATCH,
                  node_budget=EXACT_NODE_BUDGET) for w, a in zip(weights, arm_lookaheads)]


def sweep_samples(trie, loaded, exclude_history: bool, seed: int, users: int, tokens=None, tokenizer=None):
    """The sweep's seeded validation samples (with ``tokens``, their prompts hybrid), their full histories, and K:
    10, or fewer where a small catalog leaves a user fewer titles (NDCG@10 is then over what exists)."""
    from constrained_rec.decoding.constraints import ItemConstraints
    from constrained_rec.evaluation.evaluate import consumed_items, samples_from_split

    validation = loaded.splits["validation"] if "validation" in loaded.splits else []
    if len(validation) == 0:
        raise ValueError("--prior-weight auto chooses the weight on validation users, but this split has none "
                         "(a given split without valid/); pass a number instead, e.g. --prior-weight 1")
    rng = np.random.default_rng([int(seed), 11])
    chosen_rows = np.sort(rng.choice(len(validation), size=min(users, len(validation)), replace=False))
    rows = validation.select(chosen_rows.tolist())
    data = loaded.data
    samples = samples_from_split(rows, consumed_items(data.interactions, rows) if exclude_history else None)
    samples = samples if tokens is None else tokens.soft_samples(tokenizer, samples, rows)
    available = ItemConstraints.build(trie, num_prompts=len(samples),
                                      exclude=[s.exclude for s in samples] if exclude_history else None)
    k = min([SWEEP_K] + [available.titles_available(p) for p in range(len(samples))])
    return samples, full_histories(data, rows), k


def _sweep_record(sample, item_ids, method: str) -> dict:
    return {"method": method, "sample": sample.index, "item_ids": list(item_ids),
            "target_item_id": sample.target_item_id}
