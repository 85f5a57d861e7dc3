"""The controls that end a run (main process, after the evaluation), registered by name in :data:`CONTROLS`:
``search_error`` (beam against exact search of LM + prior, :mod:`constrained_rec.experiment.search_error`) and
``user_signal`` (:mod:`constrained_rec.evaluation.user_signal`, once per candidate kind of the policy: uniform
draws, or the assistant's top-N as hard negatives). A new control is one function ``control(run) -> dict | None``
added to :data:`CONTROLS`; a policy (:class:`constrained_rec.experiment.skeleton.Policy`) lists the ones it runs.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def assistant_proposer(assisted):
    """The user-signal proposer of an :class:`~constrained_rec.experiment.assistant_step.AssistantSetup`: the
    assistant's best ``N`` items outside ``banned`` (hard negatives), ties by item id."""
    from constrained_rec.collaborative import rank_columns

    item_ids = np.asarray(assisted.assistant.item_ids, dtype=np.int64)

    def proposer(sample, n, banned):
        log_probs = assisted.assistant.item_log_probs([assisted.histories[sample.index]])
        excluded = np.isin(item_ids, np.fromiter(banned, dtype=np.int64, count=len(banned)))[None, :]
        return item_ids[rank_columns(log_probs, excluded, n)[0]].tolist()
    proposer.__name__ = f"{assisted.name} top-N"
    return proposer


def search_error_control(run) -> dict | None:
    """The search error of LM + prior on ``--search-error-users`` test users; ``None`` (with a note where it
    cannot be measured) without an assistant, with the option at 0, after a fallback or with a length penalty."""
    from constrained_rec.experiment.search_error import search_error

    config, assisted, evaluation, notes = run.config, run.assisted, run.evaluation, run.inputs.notes
    if assisted is None or not config.search_error_count:
        return None
    tick = time.perf_counter()
    result = None
    if assisted.fallback:
        notes.append(f"search error not measured: {assisted.fused_name} fell back to {assisted.name} "
                     "alone (no search)")
    elif evaluation.length_penalty != 0.0:
        notes.append("search error not measured: exact search ranks by total log-probability and "
                     "needs --length-penalty 0")
    else:
        result = search_error(run.model, run.tokenizer, run.trie, run.inputs.samples, assisted.prior(run.trie),
                              assisted.prior_weight, evaluation.max_k, evaluation.num_beams,
                              config.exclude_history, config.search_error_count, config.seed,
                              prior_lookahead=assisted.prior_lookahead)
    run.timings["search_error_s"] = time.perf_counter() - tick
    return result


def user_signal_control(run) -> dict | None:
    """The user-signal control with each of the policy's candidate kinds (``"uniform"``; ``"assistant"``: the
    assistant's top-N, where there is one): one control, or several keyed by kind (``"uniform"``, the
    assistant's name) when the policy asks for more than uniform candidates."""
    from constrained_rec.evaluation.evaluate import consumed_items
    from constrained_rec.evaluation.user_signal import user_signal

    config, loaded, samples = run.config, run.loaded, run.inputs.samples
    if not config.user_signal:
        return None
    if len(samples) < 2:
        run.inputs.notes.append("user-signal control not run: it pairs users and needs at least 2")
        return None
    tick = time.perf_counter()
    split_config = loaded.split_config
    options = dict(num_candidates=config.signal_candidates, seed=config.seed,
                   batch_size=run.policy.signal_batch_size(run.device),
                   # consumed items stay out of the candidates even with --no-exclude-history
                   exclude=consumed_items(loaded.data.interactions, loaded.splits["test"]),
                   item_noun=getattr(split_config, "item_noun", None) or getattr(loaded.data, "item_noun", "movies"),
                   template=getattr(split_config, "template", "alpaca"))
    proposers = {"uniform": None}
    if "assistant" in run.policy.signal_candidates and run.assisted is not None:
        proposers[run.assisted.name] = assistant_proposer(run.assisted)
    signals = {kind: user_signal(run.model, run.tokenizer, samples, run.trie, proposer=proposer, **options)
               for kind, proposer in proposers.items()}
    run.timings["user_signal_s"] = time.perf_counter() - tick
    return signals["uniform"] if run.policy.signal_candidates == ("uniform",) else signals


# name -> control(run): every control a policy can list, in the order they run
CONTROLS: dict[str, Callable] = {"search_error": search_error_control, "user_signal": user_signal_control}


def run_controls(run) -> dict:
    """The policy's controls (:data:`CONTROLS`, checked when the policy is made) on the evaluated run, keyed by
    name; a control that did not run is left out."""
    results = {}
    for name in CONTROLS:
        if name in run.policy.controls:
            value = CONTROLS[name](run)
            if value is not None:
                results[name] = value
    return results
