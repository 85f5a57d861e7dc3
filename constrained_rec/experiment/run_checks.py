"""Checks of a run before the model loads: the device exists (:func:`resolve_device`), the output folder; once the
data is loaded, every split the run needs holds samples, and every test user has the user-signal control's candidates
to draw (errors name what to pass instead)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from constrained_rec.experiment.run_config import RunConfig, parse_device

if TYPE_CHECKING:
    import torch


def resolve_device(text: str, state=None) -> torch.device:
    """The device to compute on, checked to exist before anything is loaded.

    ``auto`` is CUDA when available, else the CPU; under ``torchrun`` / ``accelerate launch`` on GPUs each
    process takes its own GPU (``state.device``).
    """
    import torch
    device = parse_device(text) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise ValueError(f"--device {text!r} asks for a CUDA GPU, but this torch ({torch.__version__}, {built}) "
                             "sees none; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text!r}: there are only {torch.cuda.device_count()} CUDA GPU(s), "
                             f"indices 0 to {torch.cuda.device_count() - 1}")
        if state is not None and state.num_processes > 1:
            device = state.device
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text!r}: MPS is not available on this machine; use --device cpu (or auto)")
    elif device.type not in ("cpu", "mps"):
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as error:
            raise ValueError(f"--device {text!r} is not usable here ({error}); use --device cpu (or auto)") from None
    return device


def output_folder(config: RunConfig, state) -> Path:
    """``--output-dir``, or ``runs/<timestamp>`` in a single process (sharded processes must share a folder)."""
    if config.output_dir is not None:
        return Path(config.output_dir)
    if state.num_processes > 1:
        raise ValueError("a sharded run (torchrun / accelerate launch with several processes) needs --output-dir: "
                         "every process must write into the same folder")
    return Path(f"runs/{datetime.now():%Y%m%d-%H%M%S}")


def check_splits(config: RunConfig, data, split_config, available: dict[str, int]) -> None:
    """Before the model loads: every split this run needs holds samples, or an error naming the missing or empty
    CSV (D3 / MiniOneRec layouts) or split, who needs it and what to pass instead.

    ``available`` is the number of samples of each split (``train``, ``validation``, ``test``).
    """
    training = bool(config.size.train_samples) and not config.adapter
    needs = {"test": [("the evaluation", "")]}
    if training:
        needs["train"] = [(f"training (--train-samples {config.size.train_samples} without --adapter)",
                           "--train-samples 0 to evaluate the base model zero-shot, or --adapter DIR")]
    validation = []
    if training:
        validation.append(("training (its validation loss picks the saved adapter)",
                           "--train-samples 0 or --adapter DIR"))
    if config.assistant_name in ("ease", "sasrec"):
        validation.append((f"the {config.assistant_name} assistant (it chooses its settings on validation samples)",
                           "--assistant popularity or none"))
    if config.assistant_name != "none" and config.prior_weight == "auto":
        validation.append(("--prior-weight auto (it weighs the prior on validation users)", "--prior-weight 1"))
    needs["validation"] = validation
    for split, purposes in needs.items():
        if purposes and not available[split]:
            raise _empty_split(data, split_config, split, purposes)


def check_signal_candidates(config: RunConfig, data, test_split) -> None:
    """Before the model loads: every test user has ``--signal-candidates`` items to draw for the user-signal
    control (the catalog less the user's consumed items and the items titled like the target), or an error
    naming the flag, the user and the largest value that works (it used to fail after the whole evaluation)."""
    if not config.user_signal or len(test_split) < 2:  # with fewer than 2 users the control is not run
        return
    from collections import Counter

    from constrained_rec.evaluation.evaluate import consumed_items

    same_title = Counter(data.titles.values())
    fewest = None
    for row, consumed in zip(test_split, consumed_items(data.interactions, test_split)):
        title = data.titles[int(row["target_item_id"])]
        banned = same_title[title] + sum(data.titles[i] != title for i in consumed if i in data.titles)
        left = len(data.titles) - banned
        if fewest is None or left < fewest[0]:
            fewest = (left, int(row["user_id"]))
    if fewest[0] < config.signal_candidates:
        raise ValueError(f"--signal-candidates {config.signal_candidates} is more than test user {fewest[1]} has to "
                         f"draw: {fewest[0]} items of the catalog's {len(data.titles)} remain once the user's consumed "
                         f"items and the target's title are left out; pass --signal-candidates {max(1, fewest[0])} or "
                         "less, or --no-user-signal")


def _empty_split(data, split_config, split: str, purposes: list[tuple[str, str]]) -> Exception:
    """The error for a split without samples that ``purposes`` (``(who needs it, what to pass instead)``) need."""
    from constrained_rec.data import SPLIT_FOLDERS

    who = " and ".join(purpose for purpose, _ in purposes)
    instead = "; or pass " + ", or ".join(alternative for _, alternative in purposes if alternative)
    instead = instead if any(alternative for _, alternative in purposes) else ""
    given = getattr(data, "given", None)
    if split_config.protocol == "given" and given is not None:
        if split not in given.files:
            try:
                given.require(split, who)
            except FileNotFoundError as error:
                return FileNotFoundError(f"{error}{instead}")
        return ValueError(f"{given.files[split]} holds no samples (only its header): {who} needs "
                          f"{SPLIT_FOLDERS[split]} samples; add its rows{instead}")
    return ValueError(f"{data.name}: the {split_config.protocol} split leaves no {split} samples (too few "
                      f"interactions per user or in time): {who} needs them{instead}")
