"""Resumable training state: ``output_dir/checkpoint/`` holds the LoRA weights, the best weights so far, the
optimizer, the schedule, each process's random state, the position in the epoch and the log.

:class:`Checkpoint` writes and reads that folder, and nothing else does. A checkpoint belongs to one run:
its identity (training settings that change samples or updates, the data, the number of processes) is
stored with it, and resuming with another identity is an error naming what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

# Fields that may change between a run and its resumption: they affect neither the samples nor the updates.
RESUMABLE_CHANGES = ("eval_every", "checkpoint_every", "log_every")
# Fields added to TrainConfig after checkpoints were written, with the value that trains as before they existed:
# a checkpoint without the field resumes under that value.
ADDED_FIELDS = {"history_loss_weight": 0.0}


@dataclass
class TrainState:
    """Where training is; written with each checkpoint."""

    epoch: int = 0
    batches_done: int = 0  # global batches of ``epoch`` already used (always at an optimizer-step boundary)
    global_step: int = 0
    samples_seen: int = 0
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


@dataclass
class Resumed:
    """What :meth:`Checkpoint.load` restores beside the model, optimizer, schedule and random state."""

    state: TrainState
    log: list[dict]
    best_weights: dict[str, torch.Tensor] | None


def data_fingerprint(examples: Sequence) -> str:
    """A hash of tokenized examples (``prompt_length`` and ``ids`` of each, in order, and their soft tokens where
    they have some)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(np.asarray([example.prompt_length, *example.ids], dtype=np.int64).tobytes())
        if getattr(example, "soft_positions", ()):
            digest.update(np.asarray([*example.soft_positions, *example.soft_items], dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A copy of the parameters that train (the LoRA weights)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def replace_folder(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` in for ``target`` so that a kill at any moment leaves one complete folder (a checkpoint, an
    assistant): ``target``, or ``target.old`` between the two renames."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


class Checkpoint:
    """The resumable state of one training run in ``output_dir/checkpoint/``.

    Args:
        output_dir (`Path`):
            The training output folder.
        identity (`dict`):
            ``{"config": TrainConfig.to_dict(), "data": data_fingerprint(examples), "world_size": processes}``.
        accelerator (`accelerate.Accelerator`):
            The run's accelerator: the main process writes the shared files, every process its random state.
    """

    def __init__(self, output_dir: Path, identity: dict, accelerator):
        self.output_dir = Path(output_dir)
        self.identity = identity
        self.accelerator = accelerator

    def folder(self) -> Path | None:
        """The complete checkpoint folder, if there is one."""
        for name in ("checkpoint", "checkpoint.old"):  # .old survives a kill between the two renames
            if (self.output_dir / name / "state.json").is_file():
                return self.output_dir / name
        return None

    def _check_identity(self, folder: Path, saved: dict) -> None:
        mine = self.identity
        differing = [k for k in mine["config"]
                     if k not in RESUMABLE_CHANGES and saved["config"].get(k, ADDED_FIELDS.get(k)) != mine["config"][k]]
        if differing or saved["data"] != mine["data"] or saved["world_size"] != mine["world_size"]:
            raise ValueError(
                f"{str(folder)!r} was written by a different run (config fields {differing}, data "
                f"{saved['data']} vs {mine['data']}, world size {saved['world_size']} vs {mine['world_size']}); "
                "use another output_dir or resume=False"
            )

    def load(self, model, optimizer, scheduler) -> Resumed | None:
        """Restore the weights, optimizer, schedule and this process's random state; ``None`` without a checkpoint."""
        from safetensors.torch import load_file

        folder = self.folder()
        if folder is None:
            return None
        saved = json.loads((folder / "state.json").read_text())
        self._check_identity(folder, saved)
        load_trainable_state(model, load_file(folder / "lora.safetensors"))
        best = folder / "best_lora.safetensors"
        best_weights = load_file(best) if best.is_file() else None
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        rng = torch.load(folder / f"rng_{self.accelerator.process_index}.pt", weights_only=True)
        torch.random.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.accelerator.device)
        return Resumed(TrainState(**saved["state"]), list(saved["log"]), best_weights)

    def save(self, model, optimizer, scheduler, state: TrainState, log: list[dict],
             best_weights: dict[str, torch.Tensor] | None) -> None:
        """Write a complete checkpoint next to the current one, then swap it in (all processes call this)."""
        accelerator = self.accelerator
        tmp = self.output_dir / "checkpoint.tmp"
        if accelerator.is_main_process:
            from safetensors.torch import save_file

            self.output_dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            save_file(trainable_state(model), tmp / "lora.safetensors")
            if best_weights is not None:
                save_file(best_weights, tmp / "best_lora.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps(
                {**self.identity, "state": dataclasses.asdict(state), "log": log}, indent=1))
        accelerator.wait_for_everyone()
        # each process keeps its own dropout stream; the main process makes the folder current last
        rng = {"cpu": torch.random.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(accelerator.device) if accelerator.device.type == "cuda" else None}
        torch.save(rng, tmp / f"rng_{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_folder(tmp, self.output_dir / "checkpoint")


def plot_losses(log: list[dict], path: Path) -> None:
    """The training and validation losses of ``log`` (``train_log.jsonl`` records) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    train_points = [(r["step"], r["loss"]) for r in log if "loss" in r]
    eval_points = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
    if train_points:
        axes.plot(*zip(*train_points), label="train loss", linewidth=1)
    if eval_points:
        axes.plot(*zip(*eval_points), "o-", label="validation loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy per target token")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
