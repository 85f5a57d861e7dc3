"""Hugging Face plumbing in one place: PEFT unwrapping, the KV-cache keyword, left padding, the model's position
limit, the cache folder, and the accelerate process state.

These helpers exist once so that every module agrees on them (the adapter that grounding switches off is
the one decoding keeps on; the process that writes a run's files is the one all others wait for). Importing
this module is cheap (torch is imported where it is used), so the data modules can take the cache folder here.

Example:

```python
>>> import torch
>>> from constrained_rec.hf import left_pad
>>> input_ids, attention_mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
>>> input_ids.tolist(), attention_mask.tolist()
([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])

```
"""

from __future__ import annotations

import inspect
import os
import warnings
import weakref
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from constrained_rec.validation import is_int

if TYPE_CHECKING:
    import torch

CACHE_ENV_VAR = "CONSTRAINED_REC_CACHE"


def cache_dir() -> Path:
    """The library's cache folder: ``$CONSTRAINED_REC_CACHE`` or ``~/.cache/constrained-rec``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "constrained-rec")


def is_peft_model(model) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (an adapter that can be switched off)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def causal_lm(model):
    """The transformers causal LM inside ``model``: the base model of a ``peft.PeftModel`` (its LoRA layers
    stay in place and active), else ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def adapter_disabled(model) -> AbstractContextManager:
    """A context in which ``model``'s peft adapter is switched off; ``ValueError`` for a model without one."""
    if not is_peft_model(model):
        raise ValueError(f"{type(model).__name__} has no peft adapter to switch off")
    return model.disable_adapter()


def base_causal_lm(model) -> tuple[object, AbstractContextManager]:
    """``(causal LM, context)``: inside the context the causal LM computes as the base model (adapter off)."""
    if is_peft_model(model):
        return model.get_base_model(), model.disable_adapter()
    return model, nullcontext()


def base_model_name(model) -> str | None:
    """The base model's name as peft records it in ``adapter_config.json`` (the one ``load_adapter`` loads)."""
    lm = causal_lm(model)
    return lm.__dict__.get("name_or_path") or lm.config._name_or_path or None


def cache_keyword(module) -> str:
    """The keyword ``module.forward`` takes its key/value cache by: transformers 5 calls it ``cache``,
    earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token-id lists padded on the left to the longest."""
    import torch

    if not sequences or any(len(ids) == 0 for ids in sequences):
        raise ValueError("left_pad needs a non-empty list of non-empty token-id lists")
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


# Models already warned about (their causal LM, the same with or without a peft wrapper): a rotary model's
# warning comes once per model, not once per batch.
_WARNED_POSITIONS: "weakref.WeakSet" = weakref.WeakSet()


def position_limit(model) -> tuple[int | None, bool]:
    """``(max_position_embeddings, learned)``: the positions ``model`` was trained on (``None``: no limit in its
    config) and whether they are a learned absolute table (GPT-2's ``wpe``, OPT's ``embed_positions``), which has
    no row past the limit; rotary (Llama) and other schemes compute any position but were not trained past it."""
    import torch

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not (is_int(limit) and limit >= 1):
        return None, False
    learned = any(isinstance(module, torch.nn.Embedding) and _is_position_table(name)
                  for name, module in causal_lm(model).named_modules())
    return limit, learned


def _is_position_table(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1].lower()
    return leaf == "wpe" or "position" in leaf or leaf.startswith("pos_")


def check_positions(model, needed: int, what: str) -> None:
    """Before any forward: ``needed`` positions (``what`` says whose) must fit ``model``'s position limit.

    Past a learned absolute table the model raises a bare ``IndexError`` (a device-side assert on a GPU) in
    the middle of the work, so that is an error here; a rotary model runs on untrained positions, so that is a
    warning naming the limit, once per model.
    """
    limit, learned = position_limit(model)
    if limit is None or needed <= limit:
        return
    message = f"{what}: {needed} positions, but {type(causal_lm(model)).__name__} has max_position_embeddings={limit}"
    if learned:
        raise ValueError(f"{message}, the end of its learned position embeddings; shorten the prompts (fewer "
                         "history items: max_history / --max-history) or use a model with more positions")
    lm = causal_lm(model)
    if lm not in _WARNED_POSITIONS:
        _WARNED_POSITIONS.add(lm)
        warnings.warn(f"{message}: positions past {limit} were never trained, so its recommendations may degrade; "
                      "shorten the prompts (max_history / --max-history) to stay within them", stacklevel=3)


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) to compute on."""
    import torch

    present = getattr(torch, "accelerator", None) is not None and torch.accelerator.is_available()
    return bool(present or torch.cuda.is_available())


def check_launcher() -> None:
    """Refuse the one launch that silently runs a single process: ``accelerate launch --cpu --num_processes N``.

    accelerate's ``--cpu`` launcher starts one process (more need ``--mpirun_hostfile``) and only leaves
    ``MASTER_ADDR`` behind; the run would then evaluate everything in one process while the user asked for N.
    """
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes")
    if asked_cpu and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ:
        raise RuntimeError(
            "accelerate launch --cpu --num_processes N starts a single process (accelerate needs --mpirun_hostfile "
            "for more on CPUs); to shard over N CPU processes use `torchrun --nproc_per_node N ...` or "
            "`accelerate launch --multi_gpu --num_processes N ...` (gloo on a machine without GPUs)"
        )


def process_state():
    """accelerate's ``PartialState`` for this process, the same for every caller.

    On a machine without an accelerator, accelerate recognises ``torchrun`` / ``accelerate launch`` only when
    told it runs on CPUs (then it joins the gloo group); without that every process would act as the main one.
    The state is a singleton: the first call decides, so every module must get it here.
    """
    from accelerate import PartialState

    check_launcher()
    return PartialState(cpu=not has_accelerator())
