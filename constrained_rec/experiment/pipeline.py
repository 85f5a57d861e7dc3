"""The main job as a library: LoRA-tune a causal LM on next-title prompts, recommend top-K items, evaluate, report.

``experiments/run.py`` is its command line (argparse -> :class:`RunConfig` -> :func:`run`); tests and other
code call :func:`run` directly. Each step is its own function, in the order :func:`run` calls them:

1. :func:`resolve_device`, the folder's lock (:func:`constrained_rec.experiment.run_folder.folder_lock`) and
   :func:`check_run_identity`: validate before anything is loaded;
2. :func:`load_data`: the data set and its leave-one-out splits, then
   :func:`constrained_rec.experiment.run_folder.check_data_files` (a resume only on the same data files);
3. :func:`load_base_model` and :func:`constrained_rec.experiment.catalog.catalog_trie`: the model and the catalog trie;
4. :func:`prepare_adapter`: train an adapter, or load and check a given or finished one (with ``--collab-tokens
   items`` the assistant is fit first and the adapter trains with its tokens, :mod:`constrained_rec.experiment.collab_run`);
5. :func:`evaluation_samples`: the test samples with their exclusions, item counts and popularity;
6. :func:`fit_assistant_step` (``--assistant``): the collaborative assistant, fit on the training split only,
   and the prior's weight (:mod:`constrained_rec.experiment.assistant_prior`);
7. :func:`build_recommenders`: the methods to compare;
8. :func:`constrained_rec.evaluation.evaluate.evaluate`, then :func:`run_controls` (the search error of LM + prior and
   the user-signal control, :mod:`constrained_rec.evaluation.user_signal`), :func:`assemble_results` and the report.

A run folder can be resumed (finished training and finished users are not redone) only by a run with the
same identity (:func:`run_identity`: data, split, model, adapter, training, decoding and seed); any other
run is refused with the options that differ.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from constrained_rec.data import GROUPLENS_FOLDERS, draw_samples

# The options and the checks before loading live in run_config.
from constrained_rec.experiment.run_config import (
    DATA_FILE_OPTIONS,
    RUN_IDENTITY,
    RunConfig,
    check_run_identity,
    check_signal_candidates,
    check_splits,
    model_name,
    output_folder,
    resolve_device,
)

logger = logging.getLogger("constrained_rec.experiment.pipeline")


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class LoadedData:
    """The data set, its split settings and splits."""

    data: object  # InteractionData
    split_config: object  # SplitConfig
    splits: object  # datasets.DatasetDict with train / validation / test


def load_data(config: RunConfig) -> LoadedData:
    """The data set (``--dataset`` with ``--items`` and the column options) and its samples under ``--split``
    with ``--max-history`` and the prompt's noun: ``train_samples`` training samples and ``eval_users`` test
    samples, seeded, at most as many as the test split holds (all with ``--all-users``).

    ``split_config`` comes back resolved (its ``protocol`` and ``item_noun`` made concrete). A split the run needs
    without samples (test; train and validation for training; validation for EASE, SASRec or ``--prior-weight
    auto``), e.g. a D3 layout's missing or header-only CSV, fails here, before the model is loaded, naming the CSV
    and what to pass instead (:func:`~constrained_rec.experiment.run_config.check_splits`).
    """
    from constrained_rec.data import SplitConfig, load_interactions, make_splits, split_positions

    size = config.size
    data = load_interactions(config.dataset, data_dir=config.data_dir, **_data_file_options(config))
    split_config = SplitConfig(max_history=config.max_history, protocol=config.split, item_noun=config.item_noun,
                               seed=config.seed).resolve(data)
    train_samples = size.train_samples or None
    positions = split_positions(data, split_config)
    available = {split: len(rows) for split, rows in positions.items()}
    check_splits(config, data, split_config, available)  # a missing or empty CSV is named before the model loads
    if not available["train"]:
        train_samples = None  # not trained on (zero-shot, --adapter): the split stays empty
    eval_samples = None if config.all_users else min(size.eval_users, available["test"])
    if eval_samples is not None and eval_samples < size.eval_users:
        logger.warning("%s: evaluating all %d test samples of the %s split (--eval-users %d asked for more)",
                       data.name, eval_samples, split_config.protocol, size.eval_users)
    if eval_samples is None or eval_samples <= available["validation"]:
        split_config = dataclasses.replace(split_config, train_samples=train_samples, eval_samples=eval_samples)
        return LoadedData(data, split_config, make_splits(data, split_config))
    # Fewer validation samples than test samples asked for (a given split without valid/, or a short one):
    # keep all validation samples and draw the test samples alone.
    split_config = dataclasses.replace(split_config, train_samples=train_samples, eval_samples=None)
    splits = make_splits(data, split_config)
    splits["test"] = splits["test"].select(draw_samples(np.arange(available["test"]), eval_samples, config.seed, "test").tolist())
    return LoadedData(data, dataclasses.replace(split_config, eval_samples=eval_samples), splits)


def _data_file_options(config: RunConfig) -> dict:
    """The file and column options for ``load_interactions``; an error where the source has no use for them."""
    options = {name: getattr(config, name) for name in DATA_FILE_OPTIONS if getattr(config, name) is not None}
    columns = sorted(name for name in options if name != "items")
    flags = ", ".join("--" + name.replace("_", "-") for name in sorted(options))
    source = Path(config.dataset)
    if options and (config.dataset in GROUPLENS_FOLDERS or source.is_dir()):
        raise ValueError(f"{flags} describe an interactions file and its items file, but --dataset "
                         f"{config.dataset!r} is a {'folder' if source.is_dir() else 'named data set'} whose layout "
                         "fixes its files and columns; drop them, or pass the interactions CSV/TSV as --dataset")
    if columns and {".json", ".jsonl"} & set(source.suffixes):
        raise ValueError(f"{flags} describe CSV/TSV columns, but --dataset {config.dataset!r} is an Amazon reviews "
                         "file whose fields are fixed; pass only --items (its metadata file)")
    return options


def load_base_model(config: RunConfig):
    """``(model name, model, tokenizer)`` of the base model (see :func:`model_name`)."""
    from constrained_rec.model import load_model

    name = model_name(config)
    model, tokenizer = load_model(name)
    return name, model, tokenizer


def eval_config(config: RunConfig, device: torch.device):
    """The evaluation settings of a run."""
    from constrained_rec.evaluation.evaluate import EvalConfig

    return EvalConfig(ks=config.ks, num_beams=config.num_beams, length_penalty=config.length_penalty,
                      exclude_history=config.exclude_history, seed=config.seed, decoder=config.decoder,
                      batch_size=config.eval_batch_size or (8 if device.type == "cuda" else 4))


@dataclass
class Adapter:
    """The model to evaluate and where it comes from."""

    model: object
    folder: Path | None  # None: the base model, zero-shot
    train_summary: dict | None
    collab: object = None  # its CollabTokens with --collab-tokens items (constrained_rec.experiment.collab_run)


def prepare_adapter(config: RunConfig, model, tokenizer, trie, loaded: LoadedData, output_dir: Path,
                    timings: dict, collab=None) -> Adapter:
    """Load ``--adapter``, or the adapter an earlier run of this folder finished, or train one; zero-shot
    with ``--train-samples 0``. Every adapter is checked against the base model and the catalog trie."""
    from constrained_rec.experiment.collab_run import adapter_tokens
    from constrained_rec.model import check_adapter, load_adapter

    folder = Path(config.adapter) if config.adapter else output_dir / "adapter"
    if not config.adapter and config.size.train_samples == 0:
        return Adapter(model, None, None)
    if config.adapter or (folder / "train_config.json").is_file():  # given, or finished by an interrupted run
        summary = check_adapter(folder, model_name(config), trie)
        model, _ = load_adapter(folder, base_model=model)
        return Adapter(model, folder, summary, adapter_tokens(folder, collab))
    tick = time.perf_counter()
    model = train_adapter(config, model, tokenizer, trie, loaded, folder, collab)
    timings["train_s"] = time.perf_counter() - tick
    return Adapter(model, folder, check_adapter(folder, model_name(config), trie), collab)


def train_adapter(config: RunConfig, model, tokenizer, trie, loaded: LoadedData, folder: Path, collab=None):
    """LoRA-tune ``model`` on the training split into ``folder``; the trained model."""
    from constrained_rec.training.train import TrainConfig, train

    size = config.size
    validation = loaded.splits["validation"]
    validation = validation.select(range(min(size.validation_samples, len(validation))))
    train_config = TrainConfig(epochs=size.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                               history_loss_weight=config.history_loss_weight,
                               seed=config.seed, catalog_fingerprint=trie.fingerprint(),
                               warmup_steps=min(20, max(1, size.train_samples // config.batch_size // 10)))
    return train(model, tokenizer, loaded.splits["train"], train_config, eval_dataset=validation,
                 output_dir=folder, collab=collab).model


@dataclass
class EvaluationInputs:
    """What every recommender sees: the test samples, training counts and popularity, and notes for the report."""

    samples: list
    counts: dict
    popularity: dict
    notes: list[str]


def evaluation_samples(config: RunConfig, loaded: LoadedData) -> EvaluationInputs:
    """Test samples with each user's consumed items (when history is excluded), and training-split popularity."""
    from constrained_rec.data import split_positions
    from constrained_rec.evaluation.evaluate import consumed_items, samples_from_split, training_item_counts
    from constrained_rec.evaluation.metrics import popularity_percentiles

    data, test = loaded.data, loaded.splits["test"]
    exclude = consumed_items(data.interactions, test) if config.exclude_history else None
    samples = samples_from_split(test, exclude)
    positions = split_positions(data, loaded.split_config)
    counts = training_item_counts(data.interactions, list(positions["validation"]) + list(positions["test"]))
    notes = []
    repeated = sum(s.target_item_id in s.exclude for s in samples)
    if repeated:
        notes.append(f"{repeated} of {len(samples)} users consumed their target item before: with history "
                     "exclusion no method can recommend it to them")
    return EvaluationInputs(samples, counts, popularity_percentiles(counts, data.titles), notes)


def fit_assistant_step(config: RunConfig, model, tokenizer, trie, loaded: LoadedData, output_dir: Path, state,
                       timings: dict, collab=None):
    """The assistant fit on the training split (saved in ``OUTPUT_DIR/assistant``, reloaded on resume) with
    its prior weight (given, or chosen on validation users); ``None`` with ``--assistant none``."""
    from constrained_rec.experiment.assistant_prior import fit_assistant_step as fit
    from constrained_rec.experiment.assistant_prior import prior_weight_step

    tick = time.perf_counter()
    setup = fit(config.assistant_name, loaded, output_dir, config.seed, state)
    if setup is None:
        return None
    timings["assistant_s"] = time.perf_counter() - tick
    setup.tokens = collab  # the sweep's validation prompts carry them too
    tick = time.perf_counter()
    prior_weight_step(setup, config.prior_weight, model, tokenizer, trie, loaded, output_dir, config.exclude_history,
                      config.seed, state)
    timings["prior_weight_s"] = time.perf_counter() - tick
    return setup


def build_recommenders(config: RunConfig, model, tokenizer, trie, data, inputs: EvaluationInputs,
                       evaluation, assisted=None) -> list:
    """The methods of a run, in report order: most-popular, constrained, unconstrained (BIGRec), zero-shot;
    with an assistant (``assisted``, :func:`fit_assistant_step`): most-popular, the assistant alone, the LM
    alone (unless ``--no-lm-alone``) and LM + prior (e.g. "constrained+sasrec").

    New methods plug in here: anything with ``names`` and ``__call__(samples)``
    (:class:`constrained_rec.evaluation.evaluate.Recommender`), appended under the flag that asks for it.
    """
    from constrained_rec.evaluation.grounding import TitleGrounder
    from constrained_rec.evaluation.recommenders import (
        ConstrainedRecommender,
        MostPopularRecommender,
        UnconstrainedRecommender,
    )
    from constrained_rec.hf import is_peft_model

    recommenders = []
    if config.baselines or assisted is not None:  # with an assistant most-popular is the floor, always listed
        recommenders.append(MostPopularRecommender(inputs.counts, data.titles, evaluation))
    if assisted is not None:
        from constrained_rec.collaborative import AssistantRecommender
        from constrained_rec.experiment.assistant_prior import AssistantPrior

        recommenders.append(AssistantRecommender(assisted.assistant, assisted.histories, data.titles, evaluation,
                                                 name=assisted.name))
        if assisted.fallback:  # the sweep found the LM adds nothing: LM + prior recommends as the assistant
            fused = AssistantRecommender(assisted.assistant, assisted.histories, data.titles, evaluation,
                                         name=assisted.fused_name)
        else:
            fused = ConstrainedRecommender(model, tokenizer, trie, evaluation, name=assisted.fused_name,
                                           prior=AssistantPrior(assisted.assistant, assisted.histories, trie),
                                           prior_weight=assisted.prior_weight)
        if not config.lm_alone:
            return recommenders + [fused]
    if config.constrained or config.baselines:
        recommenders.append(ConstrainedRecommender(model, tokenizer, trie, evaluation))
    if not config.constrained or config.baselines:
        grounder = TitleGrounder.build(model, tokenizer, data.titles)
        recommenders.append(UnconstrainedRecommender(model, tokenizer, trie, grounder, evaluation))
    if config.baselines:
        if is_peft_model(model):
            recommenders.append(ConstrainedRecommender(model, tokenizer, trie, evaluation, use_adapter=False))
        else:
            inputs.notes.append("zero-shot-constrained is not listed separately: the evaluated model has no adapter, "
                                "so 'constrained' already is the zero-shot base model")
    return recommenders + ([fused] if assisted is not None else [])


def run_controls(config: RunConfig, model, tokenizer, trie, loaded: LoadedData, inputs: EvaluationInputs,
                 evaluation, assisted, timings: dict) -> dict:
    """After the evaluation (main process): the search error of LM + prior and the user-signal control."""
    controls = {}
    if assisted is not None and config.search_error_count:
        from constrained_rec.experiment.assistant_prior import AssistantPrior, search_error

        tick = time.perf_counter()
        if assisted.fallback:
            inputs.notes.append(f"search error not measured: {assisted.fused_name} fell back to {assisted.name} "
                                "alone (no search)")
        elif evaluation.length_penalty != 0.0:
            inputs.notes.append("search error not measured: exact search ranks by total log-probability and "
                                "needs --length-penalty 0")
        else:
            controls["search_error"] = search_error(
                model, tokenizer, trie, inputs.samples, AssistantPrior(assisted.assistant, assisted.histories, trie),
                assisted.prior_weight, evaluation.max_k, evaluation.num_beams, config.exclude_history,
                config.search_error_count, config.seed)
        timings["search_error_s"] = time.perf_counter() - tick
    if config.user_signal:
        from constrained_rec.evaluation.evaluate import consumed_items
        from constrained_rec.evaluation.user_signal import user_signal

        if len(inputs.samples) < 2:
            inputs.notes.append("user-signal control not run: it pairs users and needs at least 2")
            return controls
        tick = time.perf_counter()
        split_config = loaded.split_config
        controls["user_signal"] = user_signal(
            model, tokenizer, inputs.samples, trie, num_candidates=config.signal_candidates, seed=config.seed,
            # consumed items stay out of the candidates even with --no-exclude-history
            exclude=consumed_items(loaded.data.interactions, loaded.splits["test"]),
            item_noun=getattr(split_config, "item_noun", None) or getattr(loaded.data, "item_noun", "movies"),
            template=getattr(split_config, "template", "alpaca"))
        timings["user_signal_s"] = time.perf_counter() - tick
    return controls


def assemble_results(config: RunConfig, loaded: LoadedData, name: str, adapter: Adapter, evaluation,
                     inputs: EvaluationInputs, records: list[dict], device, state, timings: dict,
                     method_order: list[str] | None = None, assisted=None, controls: dict | None = None) -> dict:
    """The ``metrics.json`` of a run; ``methods`` in ``method_order`` (the recommenders' order)."""
    from constrained_rec.evaluation.evaluate import config_dict, method_metrics
    from constrained_rec.evaluation.paired import paired_comparisons, run_pairs
    from constrained_rec.experiment.report import library_versions, machine_description

    data, split_config = loaded.data, loaded.split_config
    resolved = split_config.resolve(data) if hasattr(split_config, "resolve") else split_config
    methods = method_metrics(records, evaluation, catalog_size=len(data.titles), popularity=inputs.popularity)
    order = [m for m in method_order or [] if m in methods] + [m for m in methods if m not in (method_order or [])]
    extra = {"assistant": None if assisted is None else {
        "name": assisted.name, "method": assisted.fused_name, "prior_weight": assisted.prior_weight,
        "falls_back": assisted.fallback,
        "prior_weight_option": config.prior_weight, "prior_weight_sweep": assisted.sweep,
        "fit_seconds": assisted.fit_seconds, "fit_info": getattr(assisted.assistant, "fit_info", None),
        "search_error": (controls or {}).get("search_error")}}
    if controls and "user_signal" in controls:
        extra["user_signal"] = controls["user_signal"]
    pairs = run_pairs(order, assisted and assisted.name, assisted and assisted.fused_name)
    extra["paired"] = paired_comparisons(records, pairs, evaluation.confidence, evaluation.bootstrap_resamples,
                                         evaluation.seed)
    return {
        "command": config.command_line(),
        "dataset": {"name": data.name, "users": data.num_users, "items": len(data.titles),
                    "interactions": len(data.interactions), "eval_users": len(inputs.samples),
                    "split": {"protocol": resolved.protocol, "max_history": split_config.max_history,
                              "item_noun": resolved.item_noun}},
        "model": name,
        "adapter": str(adapter.folder) if adapter.folder else None,
        "train": adapter.train_summary,
        "config": {**config_dict(evaluation), "constrained": config.constrained, "baselines": config.baselines,
                   "assistant": config.assistant_name, "lm_alone": config.lm_alone,
                   "train_samples": config.size.train_samples, "epochs": config.size.epochs, "device": str(device),
                   "processes": state.num_processes, "threads": torch.get_num_threads()},
        "seed": config.seed,
        "versions": library_versions(),
        "machine": machine_description(),
        "timings": timings,
        "notes": inputs.notes,
        "methods": {m: methods[m] for m in order},
        **extra,
    }


def run(config: RunConfig) -> dict:
    """Train (or load) an adapter, recommend for the test users, evaluate, write the report.

    Returns:
        The results written to ``metrics.json`` (on the main process; ``{}`` on the others).

    Example:

    ```python
    >>> from constrained_rec.experiment.run_config import RunConfig
    >>> from constrained_rec.experiment.pipeline import run
    >>> results = run(RunConfig(constrained=True, quick=True, output_dir="runs/quick"))  # doctest: +SKIP
    >>> results["methods"]["constrained"]["ndcg@10"]["value"]  # doctest: +SKIP

    ```
    """
    from constrained_rec.experiment.run_folder import folder_lock
    from constrained_rec.hf import process_state

    started = time.perf_counter()
    state = process_state()
    device = resolve_device(config.device, state)  # before anything is loaded
    output_dir = output_folder(config, state)
    with folder_lock(output_dir, state, config.command_line()):  # one run per folder; a second is refused
        return _run_in_folder(config, state, device, output_dir, started)


def _run_in_folder(config: RunConfig, state, device, output_dir: Path, started: float) -> dict:
    """:func:`run` once the folder is locked."""
    from transformers import set_seed

    from constrained_rec.decoding.recommend import check_prompt_positions
    from constrained_rec.evaluation.evaluate import config_dict, evaluate
    from constrained_rec.evaluation.grounding import model_fingerprint
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.experiment.collab_run import collab_tokens_step, soft_samples
    from constrained_rec.experiment.report import write_report
    from constrained_rec.experiment.run_folder import check_data_files

    timings = {}
    check_run_identity(output_dir, config, state)
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 2) // 2))
    evaluation = eval_config(config, device)
    set_seed(config.seed)

    tick = time.perf_counter()
    loaded = load_data(config)
    check_data_files(output_dir, RUN_IDENTITY, loaded.data, state)  # before anything of the folder is reused
    check_signal_candidates(config, loaded.data, loaded.splits["test"])
    timings["data_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    name, model, tokenizer = load_base_model(config)
    timings["model_load_s"] = time.perf_counter() - tick
    trie = catalog_trie(loaded.data, tokenizer)
    if evaluation.max_k > len(trie):
        raise ValueError(f"K = {evaluation.max_k} is larger than the catalog of {loaded.data.name}: "
                         f"{len(trie)} distinct titles; use smaller --k values")
    check_prompt_positions(model, tokenizer, [p for split in loaded.splits.values() for p in split["prompt"]], trie,
                           "the run's prompts")  # before training and evaluation, not in their middle
    # ---- collaborative tokens (issue 23, --collab-tokens items; constrained_rec.experiment.collab_run): the assistant
    # is fit before the adapter, which trains (or is checked) with its tokens; every prompt below carries them
    collab = collab_tokens_step(config, model, loaded, output_dir, state, timings)
    adapter = prepare_adapter(config, model, tokenizer, trie, loaded, output_dir, timings, collab)
    model = adapter.model.to(device).eval()

    tick = time.perf_counter()
    inputs = evaluation_samples(config, loaded)
    soft_samples(adapter.collab, tokenizer, inputs, loaded)  # ---- collaborative tokens: the test prompts
    assisted = fit_assistant_step(config, model, tokenizer, trie, loaded, output_dir, state, timings, adapter.collab)
    recommenders = build_recommenders(config, model, tokenizer, trie, loaded.data, inputs, evaluation, assisted)
    timings["eval_setup_s"] = time.perf_counter() - tick
    identity = {"eval": {k: v for k, v in config_dict(evaluation).items() if k != "batch_size"},
                "assistant": assisted.name if assisted else None,
                "prior_weight": assisted.prior_weight if assisted else None,
                "model": model_fingerprint(model, include_adapter=True),
                "adapter": str(adapter.folder) if adapter.folder else None,
                "catalog": trie.fingerprint(), "dataset": loaded.data.name}
    tick = time.perf_counter()
    records = evaluate(recommenders, inputs.samples, output_dir, identity=identity)
    timings["evaluate_s"] = time.perf_counter() - tick
    if not state.is_main_process:
        return {}
    controls = run_controls(config, model, tokenizer, trie, loaded, inputs, evaluation, assisted, timings)
    timings["total_s"] = time.perf_counter() - started
    results = assemble_results(config, loaded, name, adapter, evaluation, inputs, records, device, state, timings,
                               [n for r in recommenders for n in r.names], assisted, controls)
    write_report(output_dir, results)
    print((output_dir / "report.md").read_text())
    print(f"results in {output_dir} ({timings['total_s']:.0f} s)")
    return results
