"""LoRA instruction tuning: teach a causal LM to write the title of the next item (BIGRec's first step).

Each sample is ``prompt ids + title ids + EOS`` from :func:`constrained_rec.trie.tokenization.example_token_ids`,
the function the trie is built with, so the model learns exactly the token sequences that constrained
decoding lets it write. The loss covers the response (title + EOS) by default, as in D3; BIGRec's
``train_on_inputs`` adds the prompt tokens; ``history_loss_weight`` adds, weighted, the history titles of the prompt
(:func:`constrained_rec.training.batching.history_targets`).

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

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from constrained_rec.hf import base_model_name, check_positions, has_accelerator, process_state
from constrained_rec.training.batching import Batch, collate, epoch_batches, tokenize_examples
from constrained_rec.training.checkpoint import (
    Checkpoint,
    TrainState,
    data_fingerprint,
    load_trainable_state,
    plot_losses,
    trainable_state,
)
from constrained_rec.training.config import TrainConfig
from constrained_rec.training.loss import ResponseLoss


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



def lr_scheduler(optimizer, config: TrainConfig, total_steps: int):
    """The learning-rate schedule of ``config`` (linear warm-up, then ``config.lr_schedule``) over ``total_steps``
    optimizer steps; shared by :func:`train` and :class:`constrained_rec.lightning.BigRecModule`."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(config.lr_schedule, config.lr_schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps)


def with_lora(model, config: TrainConfig):
    """``model`` with a new LoRA adapter of ``config``, initialised under ``config.seed``; a ``peft.PeftModel``
    is returned as it is. The one place LoRA layers are inserted, for :func:`train` and the Lightning module."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(config.seed)  # LoRA initialisation (seeded for a PeftModel too, as train always did)
    if isinstance(model, PeftModel):
        return model
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def write_train_config(folder: Path, config: TrainConfig, model, **progress) -> dict:
    """Write ``folder/train_config.json`` beside an adapter: the settings, the base model's name and ``progress``
    (samples, steps, ...). :func:`constrained_rec.model.check_adapter` reads it back (base model, catalog)."""
    summary = {**config.to_dict(), "base_model": base_model_name(model), **progress}
    (Path(folder) / "train_config.json").write_text(json.dumps(summary, indent=1))
    return summary


def train(model, tokenizer, train_dataset, config: TrainConfig | None = None, eval_dataset=None,
          output_dir: str | Path = "runs/train", resume: bool = True,
          callback: Callable[[dict], None] | None = None, collab=None) -> TrainResult:
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
        collab (`CollabTokens`, *optional*):
            Collaborative tokens (:mod:`constrained_rec.training.collab_tokens`): every prompt gets a soft position
            after each history title (rows need ``history_titles`` and ``history_item_ids``), the projector trains
            with the adapter (the model's ``collab_tokens`` module, so checkpoints hold it) and is saved beside it.

    Returns:
        `TrainResult` with the trained ``model`` (a ``peft.PeftModel``, in eval mode) and the log.

    Example:

    ```python
    >>> from constrained_rec.data import SplitConfig, load_interactions, make_splits
    >>> from constrained_rec.model import load_model
    >>> from constrained_rec.training.train import TrainConfig, train
    >>> splits = make_splits(load_interactions("ml-100k"), SplitConfig(train_samples=1024, eval_samples=200))
    >>> model, tokenizer = load_model()
    >>> result = train(model, tokenizer, splits["train"], TrainConfig(epochs=1),  # doctest: +SKIP
    ...                eval_dataset=splits["validation"], output_dir="runs/ml-100k")

    ```
    """
    from accelerate import Accelerator

    config = config or TrainConfig()
    if collab is not None and config.train_on_inputs:
        raise ValueError("train_on_inputs=True would teach the placeholder ids of collaborative tokens; "
                         "train with collab tokens on the response (and history-title) loss only")
    process_state()  # the one process state every module shares (gloo under torchrun on CPUs)
    accelerator = Accelerator(cpu=not has_accelerator())
    run = _TrainingRun(model, tokenizer, train_dataset, eval_dataset, config, Path(output_dir), accelerator, collab)
    run.start(resume)
    run.train_epochs(callback)
    return run.finish()


class _TrainingRun:
    """The state of one :func:`train` call: model, optimizer, schedule, progress and log, with one method per phase."""

    def __init__(self, model, tokenizer, train_dataset, eval_dataset, config: TrainConfig, output_dir: Path,
                 accelerator, collab=None):
        self.config, self.output_dir, self.accelerator, self.tokenizer = config, output_dir, accelerator, tokenizer
        self.world, self.rank, self.collab = accelerator.num_processes, accelerator.process_index, collab
        self.history = config.history_loss_weight > 0
        self.examples = tokenize_examples(tokenizer, train_dataset, history=self.history, collab=collab)
        self.eval_examples = (tokenize_examples(tokenizer, eval_dataset, collab=collab) if eval_dataset is not None
                              else None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.lengths = [len(e.ids) for e in self.examples]
        for name, examples in (("training", self.examples), ("validation", self.eval_examples or [])):
            if examples:  # before any step: a learned position table would fail mid-epoch
                longest = max(len(e.ids) for e in examples)
                check_positions(model, longest, f"the longest {name} example (prompt, title and EOS: {longest} tokens)")
        batches_per_epoch = math.ceil(len(self.examples) / config.batch_size)
        batches_per_epoch += -batches_per_epoch % self.world  # every process gets a batch in every step
        self.batches_per_step = self.world * config.gradient_accumulation_steps
        self.total_steps = config.epochs * math.ceil(batches_per_epoch / self.batches_per_step)
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)

        self.model = model = with_lora(model, config)
        if collab is not None:  # a module of the model: its projector trains, checkpoints and restores with LoRA
            model.collab_tokens = collab.to(model.get_input_embeddings().weight.device)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = lr_scheduler(optimizer, config, self.total_steps)
        self.loss_module, self.optimizer = accelerator.prepare(ResponseLoss(model, collab), optimizer)
        self.state, self.log, self.best_weights = TrainState(), [], None
        identity = {"config": config.to_dict(), "data": data_fingerprint(self.examples), "world_size": self.world,
                    **({"collab_tokens": collab.describe()} if collab is not None else {})}
        self.checkpoint = Checkpoint(output_dir, identity, accelerator)

    def start(self, resume: bool) -> None:
        resumed = self.checkpoint.load(self.model, self.optimizer, self.scheduler) if resume else None
        if resumed is not None:
            self.state, self.log, self.best_weights = resumed.state, resumed.log, resumed.best_weights
        else:
            torch.manual_seed(self.config.seed + 1 + self.rank)  # dropout: distinct per process, reproducible
        if self.accelerator.is_main_process:  # the log as of the checkpoint: steps after it are done again
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.log))

    def _batch(self, examples, indices, history: bool = False) -> Batch:
        return collate([examples[i] for i in indices], self.pad_id, self.config.train_on_inputs,
                       self.config.share_prompt_prefix, history).to(self.accelerator.device)

    def _sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values, "sum") if self.world > 1 else values

    def validation_loss(self) -> float:
        # without DDP's wrapper: its forward may sync buffers, and processes can have unequal eval batches
        plain_loss = self.accelerator.unwrap_model(self.loss_module)
        examples, device = self.eval_examples, self.accelerator.device
        self.model.eval()
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
        chunks = [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for chunk in chunks[self.rank::self.world]:
                batch = self._batch(examples, chunk)
                loss_sum += torch.stack([plain_loss(*batch.tensors()).double(),
                                         torch.tensor(float(len(batch.targets)), dtype=torch.float64, device=device)])
        loss_sum = self._sum_over_processes(loss_sum)
        self.model.train()
        return (loss_sum[0] / loss_sum[1]).item()

    def add_to_log(self, record: dict) -> None:
        self.log.append(record)
        if self.accelerator.is_main_process:
            with open(self.output_dir / "train_log.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")

    def validate_and_maybe_stop(self) -> None:
        state = self.state
        eval_loss = self.validation_loss()
        self.add_to_log({"step": state.global_step, "epoch": state.epoch, "eval_loss": eval_loss})
        if state.best_eval_loss is None or eval_loss < state.best_eval_loss:
            state.best_eval_loss, state.evals_without_improvement = eval_loss, 0
            self.best_weights = trainable_state(self.model)
        else:
            state.evals_without_improvement += 1
            patience = self.config.early_stopping_patience
            state.stopped_early = patience is not None and state.evals_without_improvement >= patience

    def save_checkpoint(self) -> None:
        self.checkpoint.save(self.model, self.optimizer, self.scheduler, self.state, self.log, self.best_weights)
        if self.accelerator.is_main_process:
            plot_losses(self.log, self.output_dir / "loss.png")

    def optimizer_step(self, step_batches: list[list[int]]) -> tuple[float, float | None]:
        """One optimizer step over this process's share of ``step_batches``: ``(mean loss, gradient norm)``."""
        accelerator, world, device = self.accelerator, self.world, self.accelerator.device
        mine = [self._batch(self.examples, b, self.history) for b in step_batches[self.rank::world]]
        if self.history:
            return self._history_step(mine)
        # normalise by the target tokens of the whole step, over all processes: DDP averages gradients
        counts = torch.tensor([float(sum(len(b.targets) for b in mine))], device=device)
        step_targets = self._sum_over_processes(counts).item()
        loss_sum = 0.0
        for k, batch in enumerate(mine):
            sync = nullcontext() if k == len(mine) - 1 else accelerator.no_sync(self.loss_module)
            with sync:
                loss = self.loss_module(*batch.tensors()) * (world / step_targets)
                accelerator.backward(loss)
            loss_sum += loss.item() / world
        if world > 1:
            loss_sum = self._sum_over_processes(torch.tensor([loss_sum], device=device)).item()
        return loss_sum, self._update()

    def _history_step(self, mine: list[Batch]) -> tuple[float, float | None]:
        """:meth:`optimizer_step` with the history-title loss: response mean + weight x history mean, each a mean
        over its target tokens of the whole step (all processes); the parts go to ``self.last_parts``."""
        accelerator, world, device = self.accelerator, self.world, self.accelerator.device
        counts = torch.tensor([float(sum(len(b.targets) for b in mine)),
                               float(sum(len(b.history_targets) for b in mine))], device=device)
        step_targets, step_history = self._sum_over_processes(counts).tolist()
        # a step whose histories all hold a single title has no history target: its history term is 0
        scale = torch.tensor([world / step_targets, world / step_history if step_history else 0.0], device=device)
        parts = torch.zeros(2, dtype=torch.float64)
        for k, batch in enumerate(mine):
            sync = nullcontext() if k == len(mine) - 1 else accelerator.no_sync(self.loss_module)
            with sync:
                means = self.loss_module(*batch.tensors()) * scale
                accelerator.backward(means[0] + self.config.history_loss_weight * means[1])
            parts += means.detach().double().cpu() / world
        if world > 1:
            parts = self._sum_over_processes(parts.to(device)).cpu()
        response, history = parts.tolist()
        self.last_parts = {"response_loss": response, "history_loss": history, "history_targets": int(step_history)}
        return response + self.config.history_loss_weight * history, self._update()

    def _update(self) -> float | None:
        """Clip, step the optimizer and the schedule, zero the gradients; the gradient norm before clipping."""
        grad_norm = None
        if self.config.max_grad_norm is not None:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.trainable, self.config.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _running(self) -> bool:
        return (self.state.epoch < self.config.epochs and self.state.global_step < self.total_steps
                and not self.state.stopped_early)

    def train_epochs(self, callback: Callable[[dict], None] | None) -> None:
        from tqdm.auto import tqdm

        config, state, world = self.config, self.state, self.world
        self.model.train()
        progress = tqdm(total=self.total_steps, initial=state.global_step, unit="step",
                        disable=not self.accelerator.is_main_process)
        recent_losses: list[float] = []
        while self._running():
            batches = epoch_batches(self.lengths, config.batch_size, config.seed, state.epoch,
                                    config.length_group_batches)
            batches += batches[:len(batches) % world and world - len(batches) % world]
            while state.batches_done < len(batches) and state.global_step < self.total_steps and not state.stopped_early:
                started = time.perf_counter()
                step_batches = batches[state.batches_done:state.batches_done + self.batches_per_step]
                loss, grad_norm = self.optimizer_step(step_batches)
                samples = sum(len(b) for b in step_batches)
                state.global_step += 1
                state.batches_done += len(step_batches)
                state.samples_seen += samples
                seconds = time.perf_counter() - started
                record = {"step": state.global_step, "epoch": state.epoch, "loss": loss,
                          "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "samples_per_s": samples / seconds, "samples_seen": state.samples_seen,
                          **(self.last_parts if self.history else {})}
                recent_losses = (recent_losses + [loss])[-20:]
                progress.update(1)
                progress.set_postfix(loss=f"{sum(recent_losses) / len(recent_losses):.4f}",
                                     samples_s=f"{samples / seconds:.1f}")
                self._after_step(record, step_batches, callback)
            if state.batches_done >= len(batches):
                state.epoch, state.batches_done = state.epoch + 1, 0
                if self.eval_examples is not None and config.eval_every is None:
                    self.validate_and_maybe_stop()
                self.save_checkpoint()
        progress.close()

    def _after_step(self, record: dict, step_batches: list[list[int]], callback) -> None:
        config, step = self.config, self.state.global_step
        if step % config.log_every == 0 or step == self.total_steps:
            self.add_to_log(record)
        if self.eval_examples is not None and config.eval_every and step % config.eval_every == 0:
            self.validate_and_maybe_stop()
        if step % config.checkpoint_every == 0:
            self.save_checkpoint()
        if callback is not None:
            callback({**record, "sample_indices": [i for b in step_batches[self.rank::self.world] for i in b]})

    def finish(self) -> TrainResult:
        """Validate if training stopped before any validation, checkpoint, keep the best weights, save the adapter."""
        state, model = self.state, self.model
        if self.eval_examples is not None and state.best_eval_loss is None:
            self.validate_and_maybe_stop()  # stopped by max_steps before any validation
        self.save_checkpoint()
        if self.best_weights is not None:
            load_trainable_state(model, self.best_weights)
        model.eval()
        if self.accelerator.is_main_process:
            model.save_pretrained(self.output_dir)
            self.tokenizer.save_pretrained(self.output_dir)
            collab = {} if self.collab is None else {"collab_tokens": self.collab.save(self.output_dir)}
            write_train_config(self.output_dir, self.config, model, train_samples=len(self.examples),
                               global_step=state.global_step, best_eval_loss=state.best_eval_loss,
                               stopped_early=state.stopped_early, **collab)
        self.accelerator.wait_for_everyone()
        train_losses = [r["loss"] for r in self.log if "loss" in r]
        return TrainResult(model, self.output_dir, state.global_step, train_losses[-1] if train_losses else None,
                           state.best_eval_loss, state.stopped_early, self.log)
