"""The GPU-scale run: train on ALL ml-100k training windows, evaluate all 943 test users.

``experiments/gpu_run.py`` is its command line (argparse -> :class:`ScaleRunConfig` -> :func:`run_at_scale`).

The steps are the run skeleton's (:func:`constrained_rec.experiment.skeleton.run_experiment`, as
``experiments/run.py``'s): ml-100k leave-one-out with every training window, the base model and the catalog trie,
the assistant fit on the training split (``assistant="none"`` turns it off), the adapter, the methods (most-popular,
the assistant, the LM alone, LM + prior), the evaluation, the controls and the report. The scale run's policy
(:func:`scale_policy`) trains the adapter within a wall-clock budget (:func:`train_within_budget`, bf16 autocast on
CUDA) and runs the user-signal control twice (uniform candidates and the assistant's top-N as hard negatives);
``metrics.json``, ``report.md``, ``metrics.png`` and, for the two controls, ``user_signal.png`` land in the output
folder, whose ``run.json`` records the options as ``experiments/run.py``'s does (a resume with other options is
refused).

Sizing. Training gets a wall-clock budget (``train_budget_s``, default 180 s): runs of 2 and 8 calibration
steps measure seconds per step on this machine, and ``max_steps`` is cut so that ``epochs`` over all windows
stops inside the budget (the log says how far it got). On the project's CPU one thread trains about 0.5
samples/s and decodes about 0.45 users/s (README), so 3 epochs of the ~97k windows (290k samples) are out of
reach there; on an H200 a 135M-parameter model at batch 64 does a few hundred to a thousand samples/s, which
the budget turns into one to three epochs. Decoding 943 users at 32 prompts a batch and the control (N = 50
candidates) take one to two minutes; loading the embedded model the first time (GGUF -> safetensors) about 30 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from constrained_rec.experiment.run_config import (
    ASSISTANT_CHOICES,
    DEFAULT_MODEL,
    RunConfig,
    parse_device,
    parse_ks,
    parse_prior_weight,
)
from constrained_rec.experiment.skeleton import Policy, run_experiment
from constrained_rec.experiment.steps import Adapter
from constrained_rec.options import option
from constrained_rec.validation import check_int, check_number, is_int

# The sizes whose default depends on ``tiny``: the GPU run, and the CPU smoke size where every step runs in a
# couple of minutes. ``None`` in SCALE means "all" (training windows, test users).
SCALE = {"epochs": 3, "batch_size": 64, "train_budget_s": 180.0, "train_samples": None, "eval_users": None,
         "validation_samples": 256, "k": (1, 5, 10, 20), "eval_batch_size": 32, "signal_candidates": 50,
         "assistant": "ease"}
TINY = {"epochs": 1, "batch_size": 8, "train_budget_s": 0.0, "train_samples": 16, "eval_users": 2,
        "validation_samples": 8, "k": (1, 5), "eval_batch_size": 2, "signal_candidates": 3,
        "assistant": "popularity"}


def sized(name: str, what: str = "") -> str:
    """Help text ending in the option's default and its ``tiny`` default."""
    show = {k: ",".join(map(str, v)) if isinstance(v, tuple) else (what or "all") if v is None else v
            for k, v in (("scale", SCALE[name]), ("tiny", TINY[name]))}
    return f"[default {show['scale']}, --tiny {show['tiny']}]"


@dataclass
class ScaleRunConfig:
    """Every option of ``experiments/gpu_run.py``: each field with a flag carries its default and help text.

    ``None`` in a field of :data:`SCALE` means "the default for this size": ``SCALE``'s value, or ``TINY``'s
    with ``tiny=True`` (16 windows, 1 epoch at batch 8, no training budget, 2 users, K = 1,5, N = 3, the
    popularity assistant). Options given explicitly are kept under ``tiny`` too. ``__post_init__`` resolves
    them in place, so a constructed config holds the values the run uses. ``train_samples`` / ``eval_users``
    ``None`` after resolution: every training window / every test user. ``bf16`` ``None``: on CUDA only.
    ``prior_weight``: the assistant's weight as decoding prior, a number >= 0 or ``"auto"`` (chosen on
    validation users, :func:`constrained_rec.experiment.assistant_prior.sweep_prior_weight`). ``command`` is recorded
    in ``metrics.json`` (by default the Python call that gives this config).
    """

    output_dir: str = option(help="receives metrics.json, report.md, the plots and the adapter")
    model: str = option(DEFAULT_MODEL, "embedded name, local folder or cached HF id")
    epochs: int | None = option(None, f"training epochs {sized('epochs')}")
    batch_size: int | None = option(None, f"training samples per step {sized('batch_size')}")
    learning_rate: float = option(1e-3, "peak learning rate")
    train_budget_s: float | None = option(None, "wall-clock cap of training, enforced through a calibrated "
                                          f"max_steps; 0: no cap {sized('train_budget_s')}")
    train_samples: int | None = option(None, f"draw this many windows {sized('train_samples')}")
    eval_users: int | None = option(None, f"seeded test users {sized('eval_users', 'all 943')}")
    validation_samples: int | None = option(None, sized("validation_samples"))
    k: tuple[int, ...] | str | None = option(None, f"cut-offs K {sized('k')}", parse=parse_ks)
    eval_batch_size: int | None = option(None, f"prompts decoded together {sized('eval_batch_size')}")
    signal_candidates: int | None = option(None, f"N of the user-signal control {sized('signal_candidates')}")
    assistant: str | None = option(None, f"collaborative assistant, or none {sized('assistant')}",
                                   choices=ASSISTANT_CHOICES)
    prior_weight: float | str = option(1.0, "weight of the assistant as decoding prior (>= 0), or auto: chosen on "
                                       "validation users", parse=parse_prior_weight)
    bf16: bool | None = option(None, "bf16 autocast for training and evaluation [default: on CUDA]",
                               action=argparse.BooleanOptionalAction)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    seed: int = option(0, "seeds the split, the training and the controls")
    tiny: bool = option(False, "CPU smoke size for every option not given: 16 windows, 1 epoch, no budget, 2 users, "
                        "K=1,5, N=3, popularity assistant")
    command: str | None = None

    def __post_init__(self):
        if not isinstance(self.tiny, bool):
            raise ValueError(f"ScaleRunConfig.tiny (--tiny) must be True or False, got {self.tiny!r}")
        if self.command is None:
            given = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                              if f.name != "command" and getattr(self, f.name) != f.default)
            self.command = f"run_at_scale(ScaleRunConfig({given}))"
        for name, value in (TINY if self.tiny else SCALE).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, value in (("output_dir", self.output_dir), ("model", self.model), ("command", self.command)):
            if not (isinstance(value, (str, os.PathLike)) and str(value)):
                raise ValueError(f"ScaleRunConfig.{name} must be a non-empty string, got {value!r}")
        for name, least in (("epochs", 1), ("batch_size", 1), ("train_samples", 1), ("eval_users", 2),
                            ("validation_samples", 1), ("eval_batch_size", 1), ("signal_candidates", 1)):
            why = " (the user-signal control pairs users)" if name == "eval_users" else ""
            check_int(getattr(self, name), f"ScaleRunConfig.{name} (--{name.replace('_', '-')})", least=least,
                      none=True, note=why)
        check_number(self.learning_rate, "ScaleRunConfig.learning_rate (--learning-rate)", positive=True)
        check_number(self.train_budget_s, "ScaleRunConfig.train_budget_s (--train-budget-s, 0: no budget)", least=0)
        self.k = parse_ks(self.k) if isinstance(self.k, str) else tuple(self.k)
        if not self.k or not all(is_int(k) and k >= 1 for k in self.k):
            raise ValueError(f"ScaleRunConfig.k (--k) must be positive integers like (1, 5, 10, 20), got {self.k!r}")
        if self.assistant not in ASSISTANT_CHOICES:
            raise ValueError(f"ScaleRunConfig.assistant (--assistant) must be one of {list(ASSISTANT_CHOICES)}, "
                             f"got {self.assistant!r}")
        self.prior_weight = parse_prior_weight(self.prior_weight)
        if self.bf16 is not None and not isinstance(self.bf16, bool):
            raise ValueError(f"ScaleRunConfig.bf16 (--bf16) must be True, False or None (on CUDA), got {self.bf16!r}")
        check_int(self.seed, "ScaleRunConfig.seed (--seed)", least=0)
        parse_device(self.device)

    def pipeline_config(self) -> RunConfig:
        """The main job's options for the steps shared with :mod:`constrained_rec.experiment.pipeline`: ml-100k, the
        constrained LM with the assistant (no baselines), every test user where ``eval_users`` is ``None``.

        ``train_samples=0`` there asks :func:`~constrained_rec.experiment.pipeline.load_data` to draw no sample, which
        keeps every training window (``train_samples`` ``None`` here); training itself is
        :func:`train_within_budget`'s, not the pipeline's.
        """
        return RunConfig(constrained=True, model=self.model, train_samples=self.train_samples or 0,
                         epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                         eval_users=self.eval_users, all_users=self.eval_users is None, k=self.k,
                         eval_batch_size=self.eval_batch_size, seed=self.seed, device=self.device,
                         output_dir=str(self.output_dir), command=self.command, assistant=self.assistant,
                         prior_weight=self.prior_weight if self.assistant != "none" else "auto",
                         search_error_users=0,
                         signal_candidates=self.signal_candidates)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def calibrate(config: ScaleRunConfig, model, tokenizer, windows, train_config, output_dir: Path, device,
              bf16: bool) -> float:
    """Seconds per optimizer step on this machine: runs of 2 and 8 steps on a copy of the model and a few windows;
    their difference cancels the set-up (tokenizing, wrapping, the first CUDA kernels).
    ``train_config(max_steps, checkpoint_every)`` gives the run's :class:`~constrained_rec.training.train.TrainConfig`."""
    import copy

    from constrained_rec.training.train import train

    subset = windows.select(range(min(len(windows), 8 * config.batch_size)))
    elapsed = {}
    for steps in (2, 8):
        tick = time.perf_counter()
        with autocast(device, bf16):
            train(copy.deepcopy(model), tokenizer, subset, train_config(steps, 10 ** 6),
                  output_dir=output_dir / f"calibration-{steps}")
        elapsed[steps] = time.perf_counter() - tick
    per_step = (elapsed[8] - elapsed[2]) / 6
    return per_step if per_step > 0 else elapsed[8] / 8


def train_within_budget(config: ScaleRunConfig, model, tokenizer, trie, splits, output_dir: Path, device,
                        bf16: bool) -> dict:
    """LoRA training for ``config.epochs`` over the windows into ``OUTPUT_DIR/adapter``, cut by ``max_steps``
    to fit ``config.train_budget_s`` (0: no cut); the trained model (``"model"``) and the training figures."""
    from constrained_rec.training.train import TrainConfig, train

    validation = splits["validation"].select(range(min(config.validation_samples, len(splits["validation"]))))
    steps_per_epoch = math.ceil(len(splits["train"]) / config.batch_size)
    wanted = steps_per_epoch * config.epochs

    def train_config(max_steps: int, checkpoint_every: int) -> TrainConfig:
        return TrainConfig(epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                           seed=config.seed, catalog_fingerprint=trie.fingerprint(), max_steps=max_steps,
                           warmup_steps=min(100, max(1, wanted // 20)), checkpoint_every=checkpoint_every,
                           log_every=10, eval_every=max(1, min(max_steps, steps_per_epoch)))

    seconds_per_step, max_steps = None, wanted
    if config.train_budget_s > 0:
        seconds_per_step = calibrate(config, model, tokenizer, splits["train"], train_config, output_dir, device,
                                     bf16)
        max_steps = min(wanted, max(1, int(config.train_budget_s / seconds_per_step)))
    print(f"training: {len(splits['train'])} windows, {steps_per_epoch} steps an epoch; calibrated "
          f"{seconds_per_step} s a step -> {max_steps} of {wanted} steps ({max_steps / steps_per_epoch:.2f} epochs)",
          flush=True)
    tick = time.perf_counter()
    with autocast(device, bf16):
        result = train(model, tokenizer, splits["train"], train_config(max_steps, max(50, max_steps // 4)),
                       eval_dataset=validation, output_dir=output_dir / "adapter")
    return {"model": result.model, "seconds": time.perf_counter() - tick, "train_samples": len(splits["train"]),
            "steps": result.global_step, "planned_steps": wanted, "steps_per_epoch": steps_per_epoch,
            "epochs_done": result.global_step / steps_per_epoch, "seconds_per_step_calibration": seconds_per_step,
            "train_loss": result.train_loss, "best_eval_loss": result.best_eval_loss}


def scale_policy(config: ScaleRunConfig) -> Policy:
    """The scale run's choices for :func:`~constrained_rec.experiment.skeleton.run_experiment`: the adapter trained
    within the budget (:func:`train_within_budget`), bf16 autocast, one CPU thread (up to 8 beside a GPU), the
    predictions in ``OUTPUT_DIR/evaluation``, the user-signal control with uniform and with the assistant's
    candidates, and its own options in ``run.json`` and the results."""

    def bf16(run) -> bool:
        return run.device.type == "cuda" if config.bf16 is None else config.bf16

    def adapter(run) -> Adapter:
        trained = train_within_budget(config, run.model.to(run.device), run.tokenizer, run.trie, run.loaded.splits,
                                      run.output_dir, run.device, bf16(run))
        model = trained.pop("model")
        run.timings["train_s"] = trained.pop("seconds")
        return Adapter(model, run.output_dir / "adapter", trained)

    def describe(run) -> dict:
        return {"dataset": {"train_windows": len(run.loaded.splits["train"])},
                "config": {"train_samples": config.train_samples, "batch_size": config.batch_size,
                           "learning_rate": config.learning_rate, "train_budget_s": config.train_budget_s,
                           "bf16": bf16(run)}}

    return Policy(adapter=adapter, controls=("user_signal",), signal_candidates=("uniform", "assistant"),
                  signal_batch_size=lambda device: 256 if device.type == "cuda" else 32,
                  identity={"train_samples": config.train_samples, "validation_samples": config.validation_samples,
                            "train_budget_s": config.train_budget_s, "bf16": config.bf16},
                  threads=lambda run_config, device: 1 if device.type == "cpu" else min(8, os.cpu_count() or 1),
                  precision=lambda run: autocast(run.device, bf16(run)), predictions="evaluation", describe=describe,
                  summary=lambda run: json.dumps(run.timings))


def run_at_scale(config: ScaleRunConfig):
    """Train within the budget, evaluate every method on the test users, run both controls, write the report.

    Returns:
        The :class:`~constrained_rec.experiment.results.RunResults` written to ``metrics.json``: the main job's
        plus the training figures (``train``), ``dataset.train_windows``, the training options in ``config`` and
        ``user_signal``, a dict of controls keyed by candidate kind (``"uniform"``, the assistant's name).
        ``None`` on the other processes of a sharded run.

    Example:

    ```python
    >>> from constrained_rec.experiment.scale_run import ScaleRunConfig, run_at_scale
    >>> results = run_at_scale(ScaleRunConfig(output_dir="/tmp/gpu-tiny", tiny=True))  # doctest: +SKIP
    >>> sorted(results.user_signal)  # doctest: +SKIP
    ['popularity', 'uniform']

    ```
    """
    return run_experiment(config.pipeline_config(), scale_policy(config))
