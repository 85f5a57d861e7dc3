"""Training alone (``experiments/train.py``): :class:`TrainJob`, the options, and :func:`train_job`, which trains an
adapter on a data set for the same catalog trie the main job checks it against."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from constrained_rec.experiment.run_config import DATA_FILE_OPTIONS, DEFAULT_MODEL, TRAINING_OPTIONS, RunConfig
from constrained_rec.experiment.skeleton import ADAPTER_RESULTS, TrainingPolicy, run_training
from constrained_rec.experiment.steps import Adapter, LoadedData
from constrained_rec.options import OPTION, check_least, option, option_of
from constrained_rec.validation import check_int, is_int

# the training options of RunConfig beside TRAINING_OPTIONS
RUN_TRAINING = ("epochs", "batch_size", "learning_rate", "history_loss_weight", "seed")


def train_windows(value) -> int | None:
    """``--train-samples`` of ``experiments/train.py``: a number of training windows >= 1 (drawn, seeded), or
    ``"all"`` / ``None`` for every window (``None``). ``0``, which meant every window before, is refused naming
    ``all``: 0 training samples is run.py's zero-shot, which trains nothing."""
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"--train-samples takes a number of training windows >= 1 or all, got {value!r}") from None
    if is_int(value) and value == 0:
        raise ValueError("--train-samples 0 no longer means every training window in experiments/train.py (in "
                         "run.py 0 trains nothing: zero-shot); pass --train-samples all for every window")
    return check_int(value, "--train-samples (training windows; all: every one)", least=1)


@dataclass
class TrainJob:
    """The options of ``experiments/train.py`` beside :class:`~constrained_rec.training.config.TrainConfig`'s (``train``)
    and the data-file options (``data_options``: ``items``, ``user_column``, ``sep``, ...; see ``DATA_FILE_OPTIONS``,
    for an interactions CSV/TSV or an Amazon reviews file); each field with a flag carries its help text.
    ``train_samples`` ``None`` keeps every training window; the catalog fingerprint of ``train`` is filled in by
    :func:`train_job`."""

    output_dir: str = option(help="receives the adapter, train_config.json and the checkpoint")
    model: str = option(DEFAULT_MODEL, "embedded name, local folder or cached HF id")
    data: str = option("ml-100k", "a name or path accepted by load_interactions")
    data_options: dict = dataclasses.field(default_factory=dict)
    train_samples: int | None = option(1024, "training windows drawn (seeded); all keeps every sliding window",
                                       parse=train_windows, metavar="N|all")
    eval_samples: int = option_of(RunConfig, "eval_samples", default=200,
                                  help="validation samples for the loss (drawn, seeded)")
    template: str = option_of(RunConfig, "template")
    train: object = None  # TrainConfig
    resume: bool = option(True, "ignore a checkpoint in --output-dir", flag="--no-resume", action="store_false")

    def __post_init__(self):
        from constrained_rec.training.config import TrainConfig

        self.train = self.train if self.train is not None else TrainConfig()
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"TrainJob.train must be a TrainConfig, got {type(self.train).__name__}")
        if not (isinstance(self.output_dir, (str, os.PathLike)) and str(self.output_dir)):
            raise ValueError(f"TrainJob.output_dir must name a folder, got {self.output_dir!r}")
        unknown = sorted(set(self.data_options) - set(DATA_FILE_OPTIONS))
        if unknown:
            raise ValueError(f"TrainJob.data_options takes {list(DATA_FILE_OPTIONS)}, got {unknown}")
        self.train_samples = train_windows(self.train_samples)
        check_least(self, ("eval_samples",))

    def run_config(self) -> RunConfig:
        """The job as the main job's options (the data set, model and training): its identity in ``run.json``,
        with :meth:`identity`."""
        train = self.train
        return RunConfig(dataset=self.data, model=self.model, assistant="none", train_samples=self.train_samples,
                         template=self.template,
                         **{k: v for k, v in self.data_options.items() if v is not None},
                         **{name: getattr(train, name) for name in (*RUN_TRAINING, *TRAINING_OPTIONS)},
                         output_dir=str(self.output_dir),
                         command=f"train_job(data={self.data!r}, output_dir={str(self.output_dir)!r})")

    def identity(self) -> dict:
        """What ``run.json`` records beside :meth:`run_config`'s identity: the windows (``None``: all), validation
        samples and template, and the training settings without a flag where they differ from their defaults."""
        from constrained_rec.training.config import TrainConfig

        defaults, unrecorded = TrainConfig(), {"catalog_fingerprint", "log_every", "checkpoint_every"}
        other = {spec.name: getattr(self.train, spec.name) for spec in dataclasses.fields(TrainConfig)
                 if spec.name not in unrecorded and OPTION not in spec.metadata
                 and getattr(self.train, spec.name) != getattr(defaults, spec.name)}
        return {"train_samples": self.train_samples, "validation_samples": self.eval_samples,
                "template": self.template, **other}


def train_job(job: TrainJob):
    """Train an adapter for the catalog trie of ``job.data`` (:func:`constrained_rec.experiment.catalog.catalog_trie`, the
    trie :func:`constrained_rec.experiment.pipeline.run` checks it against) through the run skeleton's steps up to
    the adapter (:func:`~constrained_rec.experiment.skeleton.run_training`: the folder's lock and ``run.json``, the
    model, the data, the trie, the adapter); returns :class:`constrained_rec.training.train.TrainResult`.

    A folder holding an adapter or a checkpoint is resumed only with the same options (``run.json``); with
    ``resume=False`` its earlier options do not bind (the training starts over and records the new ones)."""
    return run_training(job.run_config(), train_policy(job))


def train_policy(job: TrainJob) -> TrainingPolicy:
    """train.py's steps: its data set and splits (``train_samples`` windows, ``eval_samples`` validation samples,
    its template), the adapter trained in ``output_dir`` (resumed from a checkpoint unless ``resume`` is off)."""
    from constrained_rec.training.train import train

    def data(run) -> LoadedData:
        from constrained_rec.data import SplitConfig, load_interactions, make_splits

        interactions = load_interactions(job.data, **{k: v for k, v in job.data_options.items() if v is not None})
        split = SplitConfig(train_samples=job.train_samples, eval_samples=job.eval_samples, seed=job.train.seed,
                            template=job.template)
        return LoadedData(interactions, split, make_splits(interactions, split, tokenizer=run.tokenizer))

    def adapter(run) -> Adapter:
        config = dataclasses.replace(job.train, catalog_fingerprint=run.trie.fingerprint())
        splits = run.loaded.splits
        result = train(run.model, run.tokenizer, splits["train"], config, eval_dataset=splits["validation"],
                       output_dir=job.output_dir, resume=job.resume)
        return Adapter(result.model, run.output_dir, None, trained=result)

    return TrainingPolicy(data=data, adapter=adapter, finish=lambda run: run.adapter.trained,
                          identity=job.identity(), results=ADAPTER_RESULTS if job.resume else ())
