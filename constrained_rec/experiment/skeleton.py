"""One run, whatever the entry point: :func:`run_experiment` takes the steps in order over one
:class:`~constrained_rec.experiment.run_config.RunConfig`, and the entry point's :class:`Policy` supplies what
differs (how the adapter is made, which controls run, threads, precision, what the results add).

The steps, as RecBole's ``run_recbole`` takes its own, in a straight line:

1. validate before anything is loaded: the device, the folder's lock
   (:func:`constrained_rec.experiment.run_folder.folder_lock`) and its options (``run.json``,
   :func:`~constrained_rec.experiment.run_config.check_run_identity`);
2. load: the data and its splits (:func:`~constrained_rec.experiment.steps.load_data`; then the data files of
   ``run.json`` and the control's candidates are checked), the base model and the catalog trie (K and the prompts'
   positions checked against them);
3. the assistant (:func:`~constrained_rec.experiment.assistant_step.fit_assistant_step`), fit on the training
   split before the adapter (with ``--collab-tokens items``, its collaborative tokens,
   :mod:`constrained_rec.experiment.collab_run`);
4. the adapter (``Policy.adapter``: train, load or the base model; the main job's trains with the tokens);
5. the prior's weight (:func:`~constrained_rec.experiment.assistant_step.prior_weight_step`), the evaluation
   samples (with tokens, each test prompt carries its user's) and the recommenders
   (:func:`~constrained_rec.experiment.steps.build_recommenders`);
6. evaluate (:func:`constrained_rec.evaluation.evaluate.evaluate`, sharded over processes);
7. the controls (main process, :func:`constrained_rec.experiment.controls.run_controls`);
8. the results (:func:`~constrained_rec.experiment.results.build_results`) and the report.

Each derived value (the split positions, the model name, the assistant's prior) is computed once and kept on the
:class:`Run`.

The entry points that stop after the adapter (``experiments/train.py``, the recipe search) take steps 1 to 4 through
:func:`run_training` with a :class:`TrainingPolicy`; every entry point opens its folder through :func:`run_folder`.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from constrained_rec.experiment.controls import CONTROLS, run_controls
from constrained_rec.experiment.run_checks import check_signal_candidates, output_folder, resolve_device
from constrained_rec.experiment.run_config import (
    RUN_IDENTITY,
    RunConfig,
    check_run_identity,
    model_name,
)


def _half_the_cores(config: RunConfig, device) -> int:
    return config.threads or max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class Policy:
    """What an entry point supplies to :func:`run_experiment`.

    Args:
        adapter: ``adapter(run) -> Adapter``: the model to evaluate (trained, loaded, or the base model).
        controls: names in :data:`constrained_rec.experiment.controls.CONTROLS`, run after the evaluation.
        signal_candidates: the user-signal control's candidate kinds: ``"uniform"``, and ``"assistant"`` (its
            top-N); with more than uniform the results key the controls by kind.
        signal_batch_size: ``signal_batch_size(device)``: titles per forward of the control.
        identity: options beyond the ``RunConfig``'s that change the results, recorded in ``run.json``.
        threads: ``threads(config, device)``: torch CPU threads.
        precision: ``precision(run)``: the context the evaluation and the controls run in (bf16 autocast).
        predictions: the folder of the prediction files, under the output folder.
        describe: ``describe(run) -> {"dataset": {...}, "config": {...}}``: entries the results add.
        summary: ``summary(run) -> str``: the line printed after the report.
    """

    adapter: Callable
    controls: tuple[str, ...] = ("search_error", "user_signal")
    signal_candidates: tuple[str, ...] = ("uniform",)
    signal_batch_size: Callable = lambda device: 32
    identity: dict = field(default_factory=dict)
    threads: Callable = _half_the_cores
    precision: Callable = lambda run: nullcontext()
    predictions: str = ""
    describe: Callable = lambda run: {}
    summary: Callable = lambda run: f"results in {run.output_dir} ({run.timings['total_s']:.0f} s)"

    def __post_init__(self):
        unknown = sorted(set(self.controls) - set(CONTROLS))
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; registered: {list(CONTROLS)}")
        kinds = sorted(set(self.signal_candidates) - {"uniform", "assistant"})
        if kinds or "uniform" not in self.signal_candidates:
            raise ValueError(f"signal_candidates takes 'uniform' and optionally 'assistant', got "
                             f"{self.signal_candidates!r}")


@dataclass
class Run:
    """A run as :func:`run_experiment` builds it, step by step (``None`` until the step that makes it)."""

    config: RunConfig
    policy: Policy
    state: object  # accelerate's process state
    device: object  # torch.device
    output_dir: Path
    model_name: str
    started: float = field(default_factory=time.perf_counter)
    timings: dict = field(default_factory=dict)
    evaluation: object = None  # EvalConfig
    loaded: object = None  # steps.LoadedData
    model: object = None
    tokenizer: object = None
    trie: object = None
    assisted: object = None  # assistant_step.AssistantSetup, None without an assistant
    adapter: object = None  # steps.Adapter
    inputs: object = None  # steps.EvaluationInputs
    recommenders: list = field(default_factory=list)
    records: list = field(default_factory=list)
    controls: dict = field(default_factory=dict)


@contextmanager
def timed(run: Run, key: str):
    """Adds the block's wall-clock seconds to ``run.timings[key]``."""
    tick = time.perf_counter()
    yield
    run.timings[key] = time.perf_counter() - tick


def run_experiment(config: RunConfig, policy: Policy):
    """The steps of the module docstring over ``config``, with ``policy``'s choices.

    Returns:
        The :class:`~constrained_rec.experiment.results.RunResults` written to ``metrics.json`` (main process;
        ``None`` on the others).
    """
    from constrained_rec.evaluation.evaluate import evaluate
    from constrained_rec.experiment.results import build_results
    from constrained_rec.experiment.steps import prediction_identity
    from constrained_rec.hf import process_state

    started, state = time.perf_counter(), process_state()
    device = resolve_device(config.device, state)  # before anything is loaded
    output_dir = output_folder(config, state)
    name = model_name(config)
    with run_folder(output_dir, config, state, policy.identity, name, predictions=policy.predictions):
        run = Run(config, policy, state, device, output_dir, name, started)
        _load(run)
        run.assisted = _fit_assistant(run)
        run.adapter = policy.adapter(run)
        run.model = run.adapter.model.to(device).eval()
        _methods(run)
        with timed(run, "evaluate_s"), policy.precision(run):
            identity = prediction_identity(run.evaluation, run.model, run.adapter, run.trie, run.loaded.data,
                                           run.assisted)
            run.records = evaluate(run.recommenders, run.inputs.samples, output_dir / policy.predictions,
                                   identity=identity)
        if not state.is_main_process:
            return None
        with policy.precision(run):
            run.controls = run_controls(run)
        run.timings["total_s"] = time.perf_counter() - started
        results = build_results(run)
        _report(run, results)
        return results


@contextmanager
def run_folder(output_dir: Path, config: RunConfig, state, identity: dict, name: str, predictions: str = "",
               results: tuple[str, ...] | None = None):
    """Step 1 of every entry point: one run per folder (its lock, a second run is refused) and the folder's options
    (``run.json``, :func:`~constrained_rec.experiment.run_config.check_run_identity`: written the first time, a
    resume with other options refused)."""
    from constrained_rec.experiment.run_folder import folder_lock

    with folder_lock(output_dir, state, config.command_line()):
        check_run_identity(output_dir, config, state, identity, name, predictions, results)
        yield


# the files of a folder that is itself the adapter (train.py, a recipe): they bind its options
ADAPTER_RESULTS = ("train_config.json", "checkpoint", "checkpoint.old")


@dataclass(frozen=True)
class TrainingPolicy:
    """What an entry point that stops after the adapter (train.py, the recipe search) supplies to
    :func:`run_training`.

    Args:
        data: ``data(run) -> LoadedData``: the data and its splits (the tokenizer is loaded: a template may need it).
        adapter: ``adapter(run) -> Adapter``: the trained adapter, in the output folder.
        finish: ``finish(run)``: the entry point's result, made from the run (the recipe search's control).
        assistant: ``assistant(run)``: the collaborative tokens the adapter trains with, or ``None``.
        identity: options beyond the ``RunConfig``'s that change the adapter, recorded in ``run.json``.
        results: the files of the output folder that bind its options (:data:`ADAPTER_RESULTS`; ``()``: none).
    """

    data: Callable
    adapter: Callable
    finish: Callable = lambda run: run.adapter
    assistant: Callable = lambda run: None
    identity: dict = field(default_factory=dict)
    results: tuple[str, ...] = ADAPTER_RESULTS


def run_training(config: RunConfig, policy: TrainingPolicy):
    """The steps of :func:`run_experiment` up to the adapter, for the entry points that do not evaluate: the
    output folder (its lock and ``run.json``, :func:`run_folder`), the base model, the data (its files recorded in
    ``run.json``; after the model, whose tokenizer a prompt template may need), the catalog trie, the assistant's
    tokens and the adapter; then ``policy.finish(run)``, returned."""
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.experiment.run_folder import check_data_files
    from constrained_rec.experiment.steps import load_base_model
    from constrained_rec.hf import process_state

    started, state, output_dir = time.perf_counter(), process_state(), Path(config.output_dir)
    name = model_name(config)
    with run_folder(output_dir, config, state, policy.identity, name, results=policy.results):
        run = Run(config, policy, state, None, output_dir, name, started)
        with timed(run, "model_load_s"):
            run.model, run.tokenizer = load_base_model(name)
        with timed(run, "data_s"):
            run.loaded = policy.data(run)
            check_data_files(output_dir, RUN_IDENTITY, run.loaded.data, state)
        run.trie = catalog_trie(run.loaded.data, run.tokenizer)
        with timed(run, "assistant_s"):
            run.assisted = policy.assistant(run)
        run.adapter = policy.adapter(run)
        return policy.finish(run)


def _load(run: Run) -> None:
    """Threads, evaluation settings and seed; the data (its files and the control's candidates checked), the
    base model and the catalog trie (K and the prompts' positions checked against them). With ``--template chat``
    the model comes before the data: its tokenizer renders the prompts."""
    import torch
    from transformers import set_seed

    from constrained_rec.decoding.recommend import check_prompt_positions
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.experiment.run_folder import check_data_files
    from constrained_rec.experiment.steps import eval_config, load_data

    config = run.config
    torch.set_num_threads(run.policy.threads(config, run.device))
    run.evaluation = eval_config(config, run.device)
    set_seed(config.seed)
    chat = config.template == "chat"  # its prompts are rendered by the model's tokenizer: the model first
    if chat:
        _load_model(run)
    with timed(run, "data_s"):
        run.loaded = load_data(config, run.tokenizer)
        check_data_files(run.output_dir, RUN_IDENTITY, run.loaded.data, run.state)  # before the folder is reused
        check_signal_candidates(config, run.loaded.data, run.loaded.splits["test"])
    if not chat:
        _load_model(run)
    run.trie = catalog_trie(run.loaded.data, run.tokenizer)
    if run.evaluation.max_k > len(run.trie):
        raise ValueError(f"K = {run.evaluation.max_k} is larger than the catalog of {run.loaded.data.name}: "
                         f"{len(run.trie)} distinct titles; use smaller --k values")
    prompts = [p for split in run.loaded.splits.values() for p in split["prompt"]]
    check_prompt_positions(run.model, run.tokenizer, prompts, run.trie,
                           "the run's prompts")  # before training and evaluation, not in their middle


def _load_model(run: Run) -> None:
    """The base model and its tokenizer (:func:`~constrained_rec.experiment.steps.load_base_model`)."""
    from constrained_rec.experiment.steps import load_base_model

    with timed(run, "model_load_s"):
        run.model, run.tokenizer = load_base_model(run.model_name)


def _fit_assistant(run: Run):
    """The assistant fit on the training split (``None`` with ``--assistant none``), before the adapter; with
    ``--collab-tokens items`` its collaborative tokens (``setup.tokens``)."""
    from constrained_rec.experiment.assistant_step import fit_assistant_step
    from constrained_rec.experiment.collab_run import collab_tokens

    tick = time.perf_counter()
    setup = fit_assistant_step(run.config.assistant_name, run.loaded, run.output_dir, run.config.seed, run.state)
    if setup is not None:
        run.timings["assistant_s"] = time.perf_counter() - tick
        setup.prior(run.trie)  # built once, shared by LM + prior and the search-error check
        # ---- collaborative tokens (issue 23, --collab-tokens items; constrained_rec.experiment.collab_run): the
        # adapter trains (or is checked) with them, the sweep's and the test prompts carry them
        setup.tokens = collab_tokens(run.config, setup, run.model)
    return setup


def _methods(run: Run) -> None:
    """The prior's weight (given, or chosen on validation users with the adapter), the evaluation samples and
    the recommenders."""
    from constrained_rec.experiment.assistant_step import prior_weight_step
    from constrained_rec.experiment.collab_run import soft_samples
    from constrained_rec.experiment.search_options import lookahead
    from constrained_rec.experiment.steps import build_recommenders, evaluation_samples

    config = run.config
    with timed(run, "eval_setup_s"):
        run.inputs = evaluation_samples(config, run.loaded)
        soft_samples(run.adapter.collab, run.tokenizer, run.inputs, run.loaded)  # ---- collaborative tokens
        if run.assisted is not None:
            with timed(run, "prior_weight_s"):
                prior_weight_step(run.assisted, config.prior_weight, run.model, run.tokenizer, run.trie, run.loaded,
                                  run.output_dir, config.exclude_history, config.seed, run.state,
                                  lookahead=lookahead(config), decoder=config.decoder)
        run.recommenders = build_recommenders(config, run.model, run.tokenizer, run.trie, run.loaded.data,
                                              run.inputs, run.evaluation, run.assisted)


def _report(run: Run, results) -> None:
    """``metrics.json``, ``report.md`` and the plots; the report and the policy's summary line printed."""
    from constrained_rec.experiment.report import write_report

    write_report(run.output_dir, results)
    print((run.output_dir / "report.md").read_text())
    print(run.policy.summary(run))
