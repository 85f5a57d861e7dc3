"""LoRA instruction tuning: teach a causal LM to write the title of the next item (BIGRec's first step).

Each sample is ``prompt ids + title ids + EOS`` from :func:`constrained_rec.tokenization.example_token_ids`,
the function the trie is built with, so the model learns exactly the token sequences that constrained
decoding lets it write. The loss covers the response (title + EOS) by default, as in D3; BIGRec's
``train_on_inputs`` adds the prompt tokens.

What makes a step cheap on a CPU:

- batches are grouped by length (shuffled, then sorted inside groups of ``length_group_batches`` batches),
  and a batch is padded only to its own longest sample;
- the LM head is applied only where a target is predicted. With SmolLM2's 49,152-token vocabulary, the
  full ``(batch, length, vocab)`` logits of a naive step (and their log-softmax and gradient) cost as much
  as a large part of the network, almost all of it at prompt positions that carry no loss;
- the token prefix that all prompts of a batch share (a template's instruction: 73 of ~190 tokens of a
  BIGRec ml-100k prompt) runs once per batch, and the rows continue from its key/value cache.

Together about 1.8x the samples/s of a plain transformers step on SmolLM2 (``experiments/bench_train.py``).

Training is resumable: ``output_dir/checkpoint/`` holds the LoRA weights, optimizer, schedule, random
state and the position in the epoch. The order of samples is a function of ``seed`` and the epoch
only, so a run killed mid-epoch and started again with the same arguments continues after the last
optimizer step of the checkpoint, without repeating or skipping a sample, and ends with the same
weights as a run that was never interrupted.

Data-parallel, unchanged, through accelerate: each process takes every ``world``-th batch of the same
global order (the last step of an epoch repeats up to ``world - 1`` batches so that every process has
one) and DDP averages gradients, normalised so that a step equals a single-process step with ``world``
times the gradient accumulation (bit for bit, checked with 2 CPU processes)::

    torchrun --nproc_per_node 4 experiments/train.py --output-dir runs/ml-100k
    accelerate launch --multi_gpu --num_processes 4 experiments/train.py --output-dir runs/ml-100k
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from constrained_rec.tokenization import example_token_ids

LR_SCHEDULES = ("cosine", "linear", "constant")
# Fields that may change between a run and its resumption: they affect neither the samples nor the updates.
RESUMABLE_CHANGES = ("eval_every", "checkpoint_every", "log_every")


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Defaults are BIGRec's LoRA settings with a shorter schedule.

    Args:
        lora_r, lora_alpha, lora_dropout, lora_target_modules:
            The LoRA adapter (BIGRec: r=8, alpha=16, dropout 0.05 on ``q_proj`` and ``v_proj``).
        train_on_inputs (`bool`, defaults to `False`):
            Also learn to predict the prompt tokens (BIGRec's option); by default only the response
            (title + EOS) is in the loss.
        batch_size (`int`, defaults to 8):
            Samples per forward pass on each process.
        gradient_accumulation_steps (`int`, defaults to 1):
            Forward passes per optimizer step. The loss is the mean over all target tokens of the step.
        length_group_batches (`int`, defaults to 64):
            Batches per group of similar-length samples; 1 turns length grouping off.
        share_prompt_prefix (`bool`, defaults to `True`):
            Run the token prefix that all samples of a batch share once per batch (see :class:`ResponseLoss`).
        learning_rate, weight_decay, max_grad_norm:
            AdamW and gradient clipping (``max_grad_norm=None`` disables clipping).
        epochs (`int`, defaults to 1), max_steps (`int`, *optional*):
            Length of training; ``max_steps`` (optimizer steps) stops earlier when set.
        lr_schedule (`str`, defaults to `"cosine"`), warmup_steps (`int`, defaults to 20):
            ``"cosine"``, ``"linear"`` or ``"constant"`` after a linear warm-up.
        seed (`int`, defaults to 0):
            Seeds the LoRA initialisation, the sample order and dropout.
        eval_every (`int`, *optional*):
            Validation loss every this many optimizer steps; by default at the end of each epoch.
        early_stopping_patience (`int`, *optional*):
            Stop after this many validations without a new best. Whenever there is validation, the
            saved adapter is the one with the best validation loss.
        checkpoint_every (`int`, defaults to 50):
            Optimizer steps between resumable checkpoints (one is also written at the end of each epoch).
        log_every (`int`, defaults to 1):
            Optimizer steps between lines of ``train_log.jsonl``.
        catalog_fingerprint (`str`, *optional*):
            Fingerprint of the catalog/trie the model is trained for (``TitleTrie.fingerprint()``),
            stored in ``train_config.json`` so a mismatched trie can be detected later.
    """

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    train_on_inputs: bool = False
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    length_group_batches: int = 64
    share_prompt_prefix: bool = True
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    epochs: int = 1
    max_steps: int | None = None
    lr_schedule: str = "cosine"
    warmup_steps: int = 20
    seed: int = 0
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    checkpoint_every: int = 50
    log_every: int = 1
    catalog_fingerprint: str | None = None

    def __post_init__(self):
        self.lora_target_modules = tuple(self.lora_target_modules)
        positive = ["lora_r", "batch_size", "gradient_accumulation_steps", "length_group_batches", "epochs",
                    "checkpoint_every", "log_every"]
        positive += [name for name in ("max_steps", "eval_every", "early_stopping_patience")
                     if getattr(self, name) is not None]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"TrainConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not self.lora_target_modules:
            raise ValueError("TrainConfig.lora_target_modules is empty; name at least one module, e.g. 'q_proj'")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["lora_target_modules"] = list(self.lora_target_modules)
        return values


# ----------------------------------------------------------------------------------------------------
# Samples and batches


@dataclass
class Example:
    """One tokenized sample: ``ids = prompt ids + title ids + EOS``; the first ``prompt_length`` are the prompt."""

    ids: list[int]
    prompt_length: int


def tokenize_examples(tokenizer, dataset) -> list[Example]:
    """Tokenize the ``prompt`` and ``target_title`` columns of ``dataset`` with ``example_token_ids``."""
    missing = [c for c in ("prompt", "target_title") if c not in getattr(dataset, "column_names", dataset)]
    if missing:
        raise ValueError(
            f"the data set lacks the column(s) {missing}; training needs 'prompt' (str) and 'target_title' (str) "
            "as built by constrained_rec.data.make_splits"
        )
    prompts, titles = dataset["prompt"], dataset["target_title"]
    if len(prompts) == 0:
        raise ValueError("the data set is empty; training needs at least one sample")
    return [Example(*example_token_ids(tokenizer, p, t)) for p, t in zip(prompts, titles)]


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  length_group_batches: int = 64) -> list[list[int]]:
    """The batches of one epoch, as sample indices: a function of ``(lengths, batch_size, seed, epoch)`` only.

    Samples are shuffled, cut into groups of ``batch_size * length_group_batches``, sorted by length
    (longest first) inside each group and cut into batches; then the batches are shuffled. Every
    sample appears in exactly one batch.

    Example:

    ```python
    >>> from constrained_rec.train import epoch_batches
    >>> batches = epoch_batches([5, 9, 3, 7, 4], batch_size=2, seed=0, epoch=0)
    >>> sorted(i for b in batches for i in b)
    [0, 1, 2, 3, 4]

    ```
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    group = batch_size * length_group_batches
    batches = []
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclass
class Batch:
    """Right-padded ids, the flat positions (into ``batch * length``) whose hidden state predicts a target,
    and the length of the token prefix that all rows share (computed once, see :class:`ResponseLoss`)."""

    input_ids: torch.Tensor  # (batch, length)
    attention_mask: torch.Tensor  # (batch, length)
    positions: torch.Tensor  # (targets,) flat index b * length + t: the token at t + 1 is the target
    targets: torch.Tensor  # (targets,)
    shared_prefix_length: int = 0

    def tensors(self) -> tuple:
        """The arguments of :class:`ResponseLoss`."""
        return self.input_ids, self.attention_mask, self.positions, self.targets, self.shared_prefix_length

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in self.tensors()[:4]), self.shared_prefix_length)

    def labels(self) -> torch.Tensor:
        """transformers-style labels (-100 where there is no target), for the full-logits reference loss."""
        labels = torch.full_like(self.input_ids, -100)
        labels.view(-1)[self.positions + 1] = self.targets
        return labels


# Below this many shared tokens a second decoder call costs more than it saves.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens that all ``sequences`` start with, leaving every one at least one token of its own;
    0 for a single sequence or when fewer than ``MIN_SHARED_PREFIX`` would be shared."""
    if len(sequences) < 2:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def collate(examples: Sequence[Example], pad_token_id: int, train_on_inputs: bool = False,
            share_prefix: bool = True) -> Batch:
    """Pad ``examples`` on the right to the longest of them and list their target positions.

    The targets of a sample are its response tokens (title + EOS), or all tokens after the first with
    ``train_on_inputs``. They are chosen by the sample's prompt length and length, never by comparing
    ids with ``pad_token_id`` (which may equal EOS). With ``share_prefix``, the batch records how many
    leading tokens all samples share (the instruction of a prompt template), so they are run once.
    """
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    positions, targets = [], []
    for row, example in enumerate(examples):
        n = len(example.ids)
        if not 0 < example.prompt_length < n:
            raise ValueError(f"a sample needs a prompt and a response, got prompt length "
                             f"{example.prompt_length} of {n} tokens")
        input_ids[row, :n] = torch.tensor(example.ids)
        attention_mask[row, :n] = 1
        first = 0 if train_on_inputs else example.prompt_length - 1
        positions.append(torch.arange(first, n - 1) + row * width)
        targets += example.ids[first + 1:]
    prefix = shared_prefix_length([e.ids for e in examples]) if share_prefix else 0
    return Batch(input_ids, attention_mask, torch.cat(positions), torch.tensor(targets, dtype=torch.long), prefix)


# ----------------------------------------------------------------------------------------------------
# Loss


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ResponseLoss(torch.nn.Module):
    """Summed cross-entropy at a batch's target positions, with the LM head applied only there.

    It runs the decoder stack for the hidden states, gathers the target positions and applies the LM
    head to those rows: the same loss as the full logits (:func:`full_logits_loss`) without the
    ``(batch, length, vocab)`` tensor. It is a module so that DDP sees its forward.

    When all rows start with the same ``shared_prefix_length`` tokens (BIGRec's instruction is about 70
    of the ~190 tokens of an ml-100k prompt), the prefix runs once, with batch size 1, and the rows
    continue from its key/value cache; gradients from every row flow back into the one prefix. The
    loss is the same; the only difference in training mode is that LoRA dropout draws one mask for the
    prefix instead of one per row.

    Args:
        model (`PreTrainedModel` or `peft.PeftModel`):
            A causal LM whose logits are ``lm_head(decoder(...))``: Llama, Qwen2, Mistral, SmolLM2.

    Example:

    ```python
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from constrained_rec.train import Example, ResponseLoss, collate, full_logits_loss
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32,
    ...                                      num_hidden_layers=1, num_attention_heads=2))
    >>> batch = collate([Example([1, 5, 6, 7, 2], 3), Example([1, 8, 9, 2], 2)], pad_token_id=0)
    >>> batch.targets.tolist()
    [7, 2, 9, 2]
    >>> mean = ResponseLoss(model)(*batch.tensors()) / len(batch.targets)  # (ids, mask, positions, targets, prefix)
    >>> bool(torch.isclose(mean, full_logits_loss(model, batch)))
    True

    ```
    """

    def __init__(self, model):
        super().__init__()
        config = _causal_lm(model).config
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, name, None) not in (None, 1.0):
                raise ValueError(
                    f"{type(_causal_lm(model)).__name__} transforms its logits ({name}={getattr(config, name)}), "
                    "so the LM head alone does not give them; models with a plain LM head are supported"
                )
        self.model = model

    def forward(self, input_ids, attention_mask, positions, targets, shared_prefix_length: int = 0) -> torch.Tensor:
        causal_lm = _causal_lm(self.model)
        decoder = causal_lm.get_decoder()
        if shared_prefix_length:
            prefix = decoder(input_ids=input_ids[:1, :shared_prefix_length], use_cache=True)
            # transformers 5 calls the key/value cache `cache`; earlier versions `past_key_values`
            keyword = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
            cache = getattr(prefix, keyword)
            cache.batch_repeat_interleave(input_ids.shape[0])
            rest = decoder(input_ids=input_ids[:, shared_prefix_length:], attention_mask=attention_mask,
                           use_cache=True, **{keyword: cache}).last_hidden_state
            hidden = torch.cat([prefix.last_hidden_state.expand(input_ids.shape[0], -1, -1), rest], dim=1)
        else:
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        logits = causal_lm.get_output_embeddings()(hidden)
        return F.cross_entropy(logits.float(), targets, reduction="sum")


def full_logits_loss(model, batch: Batch) -> torch.Tensor:
    """The naive reference: transformers' own mean loss from the full logits at every position."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels()).loss


# ----------------------------------------------------------------------------------------------------
# Training loop


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
class TrainResult:
    """What :func:`train` returns: the trained ``peft`` model and how training went."""

    model: object
    output_dir: Path
    global_step: int
    train_loss: float | None
    best_eval_loss: float | None
    stopped_early: bool
    log: list[dict] = field(default_factory=list)


def _base_model_name(model) -> str | None:
    """The base model's name as peft records it in adapter_config.json (the one load_adapter loads)."""
    causal_lm = _causal_lm(model)
    return causal_lm.__dict__.get("name_or_path") or causal_lm.config._name_or_path or None


def _data_fingerprint(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(np.asarray([example.prompt_length, *example.ids], dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _replace_folder(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` in for ``target`` so that a kill at any moment leaves one complete checkpoint."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _checkpoint_folder(output_dir: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a kill between the two renames
        if (output_dir / name / "state.json").is_file():
            return output_dir / name
    return None


def _plot_losses(log: list[dict], path: Path) -> None:
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


def _schedule(optimizer, config: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(config.lr_schedule, config.lr_schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps)


def train(model, tokenizer, train_dataset, config: TrainConfig | None = None, eval_dataset=None,
          output_dir: str | Path = "runs/train", resume: bool = True,
          callback: Callable[[dict], None] | None = None) -> TrainResult:
    """LoRA-tune ``model`` to write ``target_title`` after ``prompt``; save the adapter in ``output_dir``.

    Args:
        model (`PreTrainedModel`):
            The base causal LM (e.g. from :func:`constrained_rec.model.load_model`). LoRA layers are
            inserted into it in place; a ``peft.PeftModel`` is trained as it is.
        tokenizer:
            Its tokenizer, with an EOS token (see :func:`constrained_rec.model.setup_tokenizer`).
        train_dataset (`datasets.Dataset`):
            Rows with ``prompt`` (str) and ``target_title`` (str).
        config (`TrainConfig`, *optional*):
            Settings; ``TrainConfig()`` by default.
        eval_dataset (`datasets.Dataset`, *optional*):
            Validation rows; the validation loss is logged, drives early stopping, and picks the saved adapter.
        output_dir (`str` or `Path`, defaults to `"runs/train"`):
            Receives the adapter (peft format), the tokenizer, ``train_config.json`` (config, base model,
            catalog fingerprint), ``train_log.jsonl``, ``loss.png`` and ``checkpoint/``.
        resume (`bool`, defaults to `True`):
            Continue from ``output_dir/checkpoint`` when there is one (same config and data required).
        callback (`Callable[[dict], None]`, *optional*):
            Called after every optimizer step with that step's record (including ``sample_indices``).

    Returns:
        `TrainResult` with the trained ``model`` (a ``peft.PeftModel``, in eval mode) and the log.

    Example:

    ```python
    >>> from constrained_rec.data import SplitConfig, load_interactions, make_splits
    >>> from constrained_rec.model import load_model
    >>> from constrained_rec.train import TrainConfig, train
    >>> splits = make_splits(load_interactions("ml-100k"), SplitConfig(train_samples=1024, eval_samples=200))
    >>> model, tokenizer = load_model()
    >>> result = train(model, tokenizer, splits["train"], TrainConfig(epochs=1),  # doctest: +SKIP
    ...                eval_dataset=splits["validation"], output_dir="runs/ml-100k")

    ```
    """
    from accelerate import Accelerator
    from peft import LoraConfig, PeftModel, get_peft_model
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    output_dir = Path(output_dir)
    # accelerate detects torchrun on GPUs by itself, but on a CPU-only machine only when told it is on CPU
    accelerator_present = getattr(torch, "accelerator", None) and torch.accelerator.is_available()
    accelerator = Accelerator(cpu=not (accelerator_present or torch.cuda.is_available()))
    world, rank = accelerator.num_processes, accelerator.process_index

    examples = tokenize_examples(tokenizer, train_dataset)
    eval_examples = tokenize_examples(tokenizer, eval_dataset) if eval_dataset is not None else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = [len(e.ids) for e in examples]
    batches_per_epoch = math.ceil(len(examples) / config.batch_size)
    batches_per_epoch += -batches_per_epoch % world  # every process gets a batch in every step
    batches_per_step = world * config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / batches_per_step)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    torch.manual_seed(config.seed)  # LoRA initialisation
    if not isinstance(model, PeftModel):
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config, total_steps)
    loss_module, optimizer = accelerator.prepare(ResponseLoss(model), optimizer)

    state, log, best_weights = TrainState(), [], None
    run_identity = {"config": config.to_dict(), "data": _data_fingerprint(examples), "world_size": world}
    checkpoint = _checkpoint_folder(output_dir) if resume else None
    if checkpoint is not None:
        saved = json.loads((checkpoint / "state.json").read_text())
        differing = [k for k in run_identity["config"]
                     if k not in RESUMABLE_CHANGES and saved["config"].get(k) != run_identity["config"][k]]
        if differing or saved["data"] != run_identity["data"] or saved["world_size"] != world:
            raise ValueError(
                f"{str(checkpoint)!r} was written by a different run (config fields {differing}, data "
                f"{saved['data']} vs {run_identity['data']}, world size {saved['world_size']} vs {world}); "
                "use another output_dir or resume=False"
            )
        from safetensors.torch import load_file

        _load_trainable_state(model, load_file(checkpoint / "lora.safetensors"))
        if (checkpoint / "best_lora.safetensors").is_file():
            best_weights = load_file(checkpoint / "best_lora.safetensors")
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        rng = torch.load(checkpoint / f"rng_{rank}.pt", weights_only=True)
        torch.random.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], accelerator.device)
        state = TrainState(**saved["state"])
        log = list(saved["log"])
    else:
        torch.manual_seed(config.seed + 1 + rank)  # dropout: distinct per process, reproducible

    def evaluate() -> float:
        # without DDP's wrapper: its forward may sync buffers, and processes can have unequal eval batches
        plain_loss = accelerator.unwrap_model(loss_module)
        model.eval()
        order = sorted(range(len(eval_examples)), key=lambda i: len(eval_examples[i].ids))
        chunks = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        loss_sum = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        with torch.no_grad():
            for chunk in chunks[rank::world]:
                batch = collate([eval_examples[i] for i in chunk], pad_id, config.train_on_inputs,
                                config.share_prompt_prefix).to(accelerator.device)
                loss_sum += torch.stack([plain_loss(*batch.tensors()).double(),
                                         torch.tensor(float(len(batch.targets)), dtype=torch.float64,
                                                      device=accelerator.device)])
        loss_sum = accelerator.reduce(loss_sum, "sum") if world > 1 else loss_sum
        model.train()
        return (loss_sum[0] / loss_sum[1]).item()

    def save_checkpoint() -> None:
        if accelerator.is_main_process:
            from safetensors.torch import save_file

            output_dir.mkdir(parents=True, exist_ok=True)
            tmp = output_dir / "checkpoint.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            save_file(_trainable_state(model), tmp / "lora.safetensors")
            if best_weights is not None:
                save_file(best_weights, tmp / "best_lora.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps(
                {**run_identity, "state": dataclasses.asdict(state), "log": log}, indent=1))
        accelerator.wait_for_everyone()
        # each process keeps its own dropout stream; the main process makes the folder current last
        rng = {"cpu": torch.random.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(accelerator.device) if accelerator.device.type == "cuda" else None}
        torch.save(rng, output_dir / "checkpoint.tmp" / f"rng_{rank}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _replace_folder(output_dir / "checkpoint.tmp", output_dir / "checkpoint")
            _plot_losses(log, output_dir / "loss.png")

    def add_to_log(record: dict) -> None:
        log.append(record)
        if accelerator.is_main_process:
            with open(output_dir / "train_log.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")

    def validate_and_maybe_stop() -> None:
        nonlocal best_weights
        eval_loss = evaluate()
        add_to_log({"step": state.global_step, "epoch": state.epoch, "eval_loss": eval_loss})
        if state.best_eval_loss is None or eval_loss < state.best_eval_loss:
            state.best_eval_loss, state.evals_without_improvement = eval_loss, 0
            best_weights = _trainable_state(model)
        else:
            state.evals_without_improvement += 1
            patience = config.early_stopping_patience
            state.stopped_early = patience is not None and state.evals_without_improvement >= patience

    if accelerator.is_main_process:  # the log as of the checkpoint: steps after it are done again
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    model.train()
    progress = tqdm(total=total_steps, initial=state.global_step, unit="step", disable=not accelerator.is_main_process)
    recent_losses: list[float] = []
    while state.epoch < config.epochs and state.global_step < total_steps and not state.stopped_early:
        batches = epoch_batches(lengths, config.batch_size, config.seed, state.epoch, config.length_group_batches)
        batches += batches[:len(batches) % world and world - len(batches) % world]
        while state.batches_done < len(batches) and state.global_step < total_steps and not state.stopped_early:
            started = time.perf_counter()
            step_batches = batches[state.batches_done:state.batches_done + batches_per_step]
            mine = [collate([examples[i] for i in b], pad_id, config.train_on_inputs, config.share_prompt_prefix)
                    .to(accelerator.device)
                    for b in step_batches[rank::world]]
            # normalise by the target tokens of the whole step, over all processes: DDP averages gradients
            counts = torch.tensor([float(sum(len(b.targets) for b in mine))], device=accelerator.device)
            step_targets = (accelerator.reduce(counts, "sum") if world > 1 else counts).item()
            loss_sum = 0.0
            for k, batch in enumerate(mine):
                sync = nullcontext() if k == len(mine) - 1 else accelerator.no_sync(loss_module)
                with sync:
                    loss = loss_module(*batch.tensors()) * (world / step_targets)
                    accelerator.backward(loss)
                loss_sum += loss.item() / world
            if world > 1:
                loss_sum = accelerator.reduce(torch.tensor([loss_sum], device=accelerator.device), "sum").item()
            grad_norm = None
            if config.max_grad_norm is not None:
                grad_norm = float(accelerator.clip_grad_norm_(trainable, config.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            samples = sum(len(b) for b in step_batches)
            state.global_step += 1
            state.batches_done += len(step_batches)
            state.samples_seen += samples
            seconds = time.perf_counter() - started
            record = {"step": state.global_step, "epoch": state.epoch, "loss": loss_sum,
                      "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                      "samples_per_s": samples / seconds, "samples_seen": state.samples_seen}
            recent_losses = (recent_losses + [loss_sum])[-20:]
            progress.update(1)
            progress.set_postfix(loss=f"{sum(recent_losses) / len(recent_losses):.4f}",
                                 samples_s=f"{samples / seconds:.1f}")
            if state.global_step % config.log_every == 0 or state.global_step == total_steps:
                add_to_log(record)
            if eval_examples is not None and config.eval_every and state.global_step % config.eval_every == 0:
                validate_and_maybe_stop()
            if state.global_step % config.checkpoint_every == 0:
                save_checkpoint()
            if callback is not None:
                callback({**record, "sample_indices": [i for b in step_batches[rank::world] for i in b]})
        if state.batches_done >= len(batches):
            state.epoch, state.batches_done = state.epoch + 1, 0
            if eval_examples is not None and config.eval_every is None:
                validate_and_maybe_stop()
            save_checkpoint()
    progress.close()

    if eval_examples is not None and state.best_eval_loss is None:
        validate_and_maybe_stop()  # stopped by max_steps before any validation
    save_checkpoint()
    if best_weights is not None:
        _load_trainable_state(model, best_weights)
    model.eval()
    if accelerator.is_main_process:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        summary = {**config.to_dict(), "base_model": _base_model_name(model),
                   "train_samples": len(examples), "global_step": state.global_step,
                   "best_eval_loss": state.best_eval_loss, "stopped_early": state.stopped_early}
        (output_dir / "train_config.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    train_losses = [r["loss"] for r in log if "loss" in r]
    return TrainResult(model, output_dir, state.global_step, train_losses[-1] if train_losses else None,
                       state.best_eval_loss, state.stopped_early, log)
