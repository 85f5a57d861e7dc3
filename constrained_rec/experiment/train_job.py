"""Training alone (``experiments/train.py``): :class:`TrainJob`, the options, and :func:`train_job`, which trains an
adapter on a data set for the same catalog trie the main job checks it against."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from constrained_rec.experiment.run_config import DATA_FILE_OPTIONS, DEFAULT_MODEL


@dataclass
class TrainJob:
    """The options of ``experiments/train.py``: what to train on; ``train`` holds the training settings.

    Args:
        output_dir: receives the adapter, ``train_config.json`` and the checkpoint.
        model: the base model (embedded name, local folder or cached Hugging Face id).
        data: a name or path accepted by :func:`constrained_rec.data.load_interactions`.
        data_options: its ``items`` file and column options (``user_column``, ``sep``, ...; see
            ``DATA_FILE_OPTIONS``), for an interactions CSV/TSV or an Amazon reviews file.
        train_samples: training windows drawn (seeded); ``None`` keeps all.
        eval_samples: validation samples for the loss.
        template: the prompt template.
        train: :class:`constrained_rec.training.train.TrainConfig` (its ``catalog_fingerprint`` is filled in here).
        resume: continue from a checkpoint in ``output_dir``.
    """

    output_dir: str
    model: str = DEFAULT_MODEL
    data: str = "ml-100k"
    data_options: dict = dataclasses.field(default_factory=dict)
    train_samples: int | None = 1024
    eval_samples: int = 200
    template: str = "alpaca"
    train: object = None  # TrainConfig
    resume: bool = True

    def __post_init__(self):
        from constrained_rec.training.train import TrainConfig

        self.train = self.train if self.train is not None else TrainConfig()
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"TrainJob.train must be a TrainConfig, got {type(self.train).__name__}")
        if not (isinstance(self.output_dir, (str, os.PathLike)) and str(self.output_dir)):
            raise ValueError(f"TrainJob.output_dir must name a folder, got {self.output_dir!r}")
        unknown = sorted(set(self.data_options) - set(DATA_FILE_OPTIONS))
        if unknown:
            raise ValueError(f"TrainJob.data_options takes {list(DATA_FILE_OPTIONS)}, got {unknown}")


def train_job(job: TrainJob):
    """Train an adapter for the catalog trie of ``job.data`` (:func:`constrained_rec.experiment.catalog.catalog_trie`, the
    trie :func:`constrained_rec.experiment.pipeline.run` checks it against); returns :class:`constrained_rec.training.train.TrainResult`."""
    from constrained_rec.experiment.run_folder import folder_lock
    from constrained_rec.hf import process_state

    command = f"train_job(data={job.data!r}, output_dir={str(job.output_dir)!r})"
    with folder_lock(job.output_dir, process_state(), command):  # one training per folder
        return _train_in_folder(job)


def _train_in_folder(job: TrainJob):
    from constrained_rec.data import SplitConfig, load_interactions, make_splits
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.model import load_model
    from constrained_rec.training.train import train

    model, tokenizer = load_model(job.model)
    data = load_interactions(job.data, **{k: v for k, v in job.data_options.items() if v is not None})
    split = SplitConfig(train_samples=job.train_samples, eval_samples=job.eval_samples, seed=job.train.seed,
                        template=job.template)
    splits = make_splits(data, split, tokenizer=tokenizer)
    config = dataclasses.replace(job.train, catalog_fingerprint=catalog_trie(data, tokenizer).fingerprint())
    return train(model, tokenizer, splits["train"], config, eval_dataset=splits["validation"],
                 output_dir=job.output_dir, resume=job.resume)
