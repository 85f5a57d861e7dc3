"""The steps of a run, each a function of what the steps before it made, in the order
:func:`constrained_rec.experiment.skeleton.run_experiment` calls them: :func:`load_data`, :func:`load_base_model`,
(the catalog trie, the assistant), :func:`prepare_adapter`, :func:`evaluation_samples`, :func:`build_recommenders`
and :func:`prediction_identity` (what makes two evaluations the same).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from constrained_rec.data import GROUPLENS_FOLDERS, draw_samples
from constrained_rec.experiment.run_checks import check_splits
from constrained_rec.experiment.run_config import DATA_FILE_OPTIONS, RUN_IDENTITY, RunConfig

logger = logging.getLogger("constrained_rec.experiment.steps")


@dataclass
class LoadedData:
    """The data set, its split settings and splits; ``positions`` are the splits' target rows
    (:func:`constrained_rec.data.split_positions`), computed once by :meth:`target_rows`."""

    data: object  # InteractionData
    split_config: object  # SplitConfig
    splits: object  # datasets.DatasetDict with train / validation / test
    positions: dict | None = None

    def target_rows(self) -> dict:
        """``split_positions(data, split_config)``, computed on the first call only."""
        from constrained_rec.data import split_positions

        if self.positions is None:
            self.positions = split_positions(self.data, self.split_config)
        return self.positions


def load_data(config: RunConfig, tokenizer=None) -> LoadedData:
    """The data set (``--dataset`` with ``--items`` and the column options) and its samples under ``--split``
    with ``--max-history``, the prompt's noun and ``--template`` (``chat`` renders with ``tokenizer``'s chat
    template): ``train_samples`` training samples (every window with ``all``) and ``eval_users`` test samples, seeded,
    at most as many as the test split holds (all with ``--all-users``); as many validation samples.

    ``split_config`` comes back resolved (its ``protocol`` and ``item_noun`` made concrete). A split the run needs
    without samples (test; train and validation for training; validation for EASE, SASRec or ``--prior-weight
    auto``), e.g. a D3 layout's missing or header-only CSV, fails here, before the model is loaded, naming the CSV
    and what to pass instead (:func:`~constrained_rec.experiment.run_checks.check_splits`).
    """
    from constrained_rec.data import SplitConfig, load_interactions, make_splits, split_positions

    size = config.size
    data = load_interactions(config.dataset, data_dir=config.data_dir, **_data_file_options(config))
    split_config = SplitConfig(max_history=config.max_history, protocol=config.split, item_noun=config.item_noun,
                               template=config.template, seed=config.seed).resolve(data)
    train_samples = None if size.train_samples == "all" else size.train_samples or None
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
        splits = make_splits(data, split_config, tokenizer=tokenizer, positions=positions)
        return LoadedData(data, split_config, _check_eval_samples(config, splits), positions)
    # Fewer validation samples than test samples asked for (a given split without valid/, or a short one):
    # keep all validation samples and draw the test samples alone.
    split_config = dataclasses.replace(split_config, train_samples=train_samples, eval_samples=None)
    splits = make_splits(data, split_config, tokenizer=tokenizer, positions=positions)
    splits["test"] = splits["test"].select(draw_samples(np.arange(available["test"]), eval_samples, config.seed, "test").tolist())
    return LoadedData(data, dataclasses.replace(split_config, eval_samples=eval_samples),
                      _check_eval_samples(config, splits), positions)


def _check_eval_samples(config: RunConfig, splits):
    """``splits``, once ``--eval-samples`` (given) is at most the validation samples drawn; else an error naming
    both and what to pass (without it, the loss takes up to its default from what there is)."""
    drawn = len(splits["validation"])
    if config.eval_samples is not None and config.eval_samples > drawn:
        raise ValueError(f"--eval-samples {config.eval_samples} asks for more validation samples than the run draws "
                         f"({drawn}: as many as the test users, --eval-users, at most the validation split's); pass "
                         f"--eval-samples {drawn} or less, or more --eval-users (--all-users)")
    return splits


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


def load_base_model(name: str):
    """``(model, tokenizer)`` of the base model ``name`` (:func:`~constrained_rec.experiment.run_config.model_name`)."""
    from constrained_rec.model import load_model

    return load_model(name)


def eval_config(config: RunConfig, device):
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
    trained: object = None  # the TrainResult where the run trained it (train.py, a recipe)


def prepare_adapter(config: RunConfig, name: str, model, tokenizer, trie, loaded: LoadedData, output_dir: Path,
                    timings: dict, collab=None) -> Adapter:
    """Load ``--adapter``, or the adapter an earlier run of this folder finished, or train one; zero-shot
    with ``--train-samples 0``. Every adapter is checked against the base model ``name`` and the catalog trie;
    with ``collab`` (``--collab-tokens items``) it trains with those tokens, or a loaded one is checked against them
    (:func:`constrained_rec.experiment.collab_run.adapter_tokens`)."""
    from constrained_rec.experiment.collab_run import adapter_tokens
    from constrained_rec.model import check_adapter, load_adapter

    folder = Path(config.adapter) if config.adapter else output_dir / "adapter"
    if not config.adapter and config.size.train_samples == 0:
        return Adapter(model, None, None)
    if config.adapter or (folder / "train_config.json").is_file():  # given, or finished by an interrupted run
        summary = check_adapter(folder, name, trie)
        check_adapter_template(config, folder)
        model, _ = load_adapter(folder, base_model=model)
        return Adapter(model, folder, summary, adapter_tokens(folder, collab))
    tick = time.perf_counter()
    model = train_adapter(config, model, tokenizer, trie, loaded, folder, collab)
    timings["train_s"] = time.perf_counter() - tick
    return Adapter(model, folder, check_adapter(folder, name, trie), collab)


def check_adapter_template(config: RunConfig, folder: Path) -> None:
    """An adapter is evaluated with the prompt template it was trained with, where ``run.json`` records it: in the
    adapter's folder (train.py, a recipe) or, for run.py's ``OUTPUT_DIR/adapter``, in the folder above (no
    ``template`` there: alpaca). An error names both templates otherwise."""
    candidates = [folder / RUN_IDENTITY] + ([folder.parent / RUN_IDENTITY] if folder.name == "adapter" else [])
    for path in candidates:
        if path.is_file():
            trained = json.loads(path.read_text()).get("template", "alpaca")
            if trained != config.template:
                raise ValueError(f"the adapter {folder} was trained on prompts of the {trained!r} template ({path}), "
                                 f"but this run renders them with --template {config.template}; pass --template "
                                 f"{trained}")
            return


def train_adapter(config: RunConfig, model, tokenizer, trie, loaded: LoadedData, folder: Path, collab=None):
    """LoRA-tune ``model`` on the training split into ``folder`` (with ``collab``, the tokens' projector too); the
    trained model."""
    from constrained_rec.training.train import train

    size = config.size
    validation = loaded.splits["validation"]
    validation = validation.select(range(min(size.validation_samples, len(validation))))
    train_config = config.train_config(catalog_fingerprint=trie.fingerprint(), windows=len(loaded.splits["train"]))
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
    from constrained_rec.evaluation.evaluate import consumed_items, samples_from_split, training_item_counts
    from constrained_rec.evaluation.metrics import popularity_percentiles

    data, test = loaded.data, loaded.splits["test"]
    exclude = consumed_items(data.interactions, test) if config.exclude_history else None
    samples = samples_from_split(test, exclude)
    positions = loaded.target_rows()
    counts = training_item_counts(data.interactions, list(positions["validation"]) + list(positions["test"]))
    notes = []
    repeated = sum(s.target_item_id in s.exclude for s in samples)
    if repeated:
        notes.append(f"{repeated} of {len(samples)} users consumed their target item before: with history "
                     "exclusion no method can recommend it to them")
    return EvaluationInputs(samples, counts, popularity_percentiles(counts, data.titles), notes)


def build_recommenders(config: RunConfig, model, tokenizer, trie, data, inputs: EvaluationInputs,
                       evaluation, assisted=None) -> list:
    """The methods of a run, in report order: most-popular, constrained, unconstrained (BIGRec), zero-shot;
    with an assistant (``assisted``, an :class:`~constrained_rec.experiment.assistant_step.AssistantSetup`):
    most-popular, the assistant alone, the LM alone (unless ``--no-lm-alone``) and LM + prior (e.g.
    "constrained+sasrec").

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

        recommenders.append(AssistantRecommender(assisted.assistant, assisted.histories, data.titles, evaluation,
                                                 name=assisted.name))
        if assisted.fallback:  # the sweep found the LM adds nothing: LM + prior recommends as the assistant
            fused = AssistantRecommender(assisted.assistant, assisted.histories, data.titles, evaluation,
                                         name=assisted.fused_name)
        else:
            fused = ConstrainedRecommender(model, tokenizer, trie, evaluation, name=assisted.fused_name,
                                           prior=assisted.prior(trie), prior_weight=assisted.prior_weight,
                                           prior_lookahead=assisted.prior_lookahead)
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


def prediction_identity(evaluation, model, adapter: Adapter, trie, data, assisted) -> dict:
    """What makes two evaluations the same (stored beside the predictions, ``evaluation.json``): the decoding
    settings (the decoding batch size left out: it changes speed only), the assistant, its weight and lookahead
    (where not ``"sum"``), the model's weights with the adapter, the adapter folder, the catalog and the data set."""
    from constrained_rec.evaluation.evaluate import config_dict
    from constrained_rec.evaluation.grounding import model_fingerprint

    return {"eval": {k: v for k, v in config_dict(evaluation).items() if k != "batch_size"},
            "assistant": assisted.name if assisted else None,
            "prior_weight": assisted.prior_weight if assisted else None,
            **({"prior_lookahead": assisted.prior_lookahead} if assisted and assisted.prior_lookahead != "sum" else {}),
            "model": model_fingerprint(model, include_adapter=True),
            "adapter": str(adapter.folder) if adapter.folder else None,
            "catalog": trie.fingerprint(), "dataset": data.name}
