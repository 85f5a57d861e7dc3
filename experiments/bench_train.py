"""Benchmark: samples/s of our LoRA training step against a plain transformers step (not a test).

    python experiments/bench_train.py --threads 1          # batch 8, 1 warm-up + 3 timed steps each
    python experiments/bench_train.py --threads 1 --steps 5 --also-ungrouped

All steps train the same LoRA adapter (TrainConfig defaults) of the embedded SmolLM2-135M-Instruct on
the same real ml-100k training samples (BIGRec prompts over up to 10 watched titles, from
``constrained_rec.data``), from the same initial weights:

- ours: :class:`ResponseLoss` as ``train`` runs it, the LM head applied only at the response positions
  and the instruction prefix that all prompts of a batch share run once per batch;
- ours without prefix sharing: the response-only head alone;
- naive: ``model(input_ids, attention_mask, labels=...)``, transformers' own loss from the full
  ``(batch, length, 49152)`` logits;
- with ``--also-ungrouped``: naive on randomly drawn batches (no length grouping), the baseline of a
  training loop without any of our savings.

The first three use the same length-grouped batches. Steps alternate between methods (ours, naive,
ours, ...) so that load from other processes hits all alike. LoRA dropout is 0 by default so that all
methods take identical updates and their loss sequences must agree to float tolerance (with dropout,
prefix sharing draws one dropout mask for the shared prefix instead of one per row; pass
``--lora-dropout 0.05`` to time that).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from constrained_rec.data import SplitConfig, load_interactions, make_splits
from constrained_rec.model import load_model
from constrained_rec.training.batching import collate, epoch_batches, tokenize_examples
from constrained_rec.training.loss import ResponseLoss, full_logits_loss
from constrained_rec.training.train import TrainConfig


def ml100k_samples(n: int, seed: int = 0):
    """``n`` training samples (BIGRec prompts over up to 10 watched titles) of the embedded ml-100k."""
    split = SplitConfig(train_samples=n, eval_samples=1, seed=seed)
    return make_splits(load_interactions("ml-100k"), split)["train"]


def lora_model(name: str, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(name)
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    return model, tokenizer, optimizer


def step(loss_of, model, optimizer, batch) -> tuple[float, float, float]:
    """One optimizer step; returns (loss, wall seconds, CPU seconds of this process)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    loss = loss_of(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), time.perf_counter() - started, time.process_time() - cpu_started


def ours(model, batch):
    return ResponseLoss(model)(*batch.tensors()) / len(batch.targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--also-ungrouped", action="store_true", help="also time the naive step on random batches")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig(batch_size=args.batch_size, lora_dropout=args.lora_dropout)
    total = args.batch_size * (args.steps + 1)
    model, tokenizer, optimizer = lora_model(args.model, config)
    examples = tokenize_examples(tokenizer, ml100k_samples(total))
    pad_id = tokenizer.pad_token_id
    grouped = epoch_batches([len(e.ids) for e in examples], args.batch_size, seed=0, epoch=0)
    order = list(range(total))
    random.Random(0).shuffle(order)
    ungrouped = [order[k:k + args.batch_size] for k in range(0, total, args.batch_size)]

    def batches(indices, share_prefix=True):
        return [collate([examples[i] for i in b], pad_id, share_prefix=share_prefix) for b in indices]

    # name -> (loss function, batches, (model, tokenizer, optimizer))
    methods = {
        "ours": (ours, batches(grouped), (model, tokenizer, optimizer)),
        "ours without prefix sharing": (ours, batches(grouped, share_prefix=False), lora_model(args.model, config)),
        "naive (full logits)": (full_logits_loss, batches(grouped), lora_model(args.model, config)),
    }
    if args.also_ungrouped:
        methods["naive, ungrouped batches"] = (full_logits_loss, batches(ungrouped), lora_model(args.model, config))

    print(f"model {args.model}, {torch.get_num_threads()} torch threads, batch {args.batch_size}, "
          f"LoRA dropout {args.lora_dropout}, {args.steps} timed steps after 1 warm-up step")
    for name, (_, method_batches, _) in methods.items():
        for k, batch in enumerate(method_batches):
            real = int(batch.attention_mask.sum())
            print(f"  {name:28s} batch {k}: {tuple(batch.input_ids.shape)}, {real} real tokens "
                  f"({1 - real / batch.input_ids.numel():.0%} padding), {len(batch.targets)} targets, "
                  f"shared prefix {batch.shared_prefix_length}")
    results = {name: {"losses": [], "seconds": [], "cpu_seconds": []} for name in methods}
    for k in range(args.steps + 1):
        for name, (loss_of, method_batches, (model, _, optimizer)) in methods.items():
            torch.manual_seed(1000 + k)
            loss, seconds, cpu_seconds = step(loss_of, model, optimizer, method_batches[k])
            results[name]["losses"].append(loss)
            if k > 0:
                results[name]["seconds"].append(seconds)
                results[name]["cpu_seconds"].append(cpu_seconds)
            print(f"  step {k}{' (warm-up)' if k == 0 else ''}  {name:28s} loss {loss:.6f}  "
                  f"{seconds:6.2f} s wall  {cpu_seconds:6.2f} s CPU")

    # Wall time is what a user waits; CPU time of this process is the work done, and is less disturbed
    # when other processes share the cores (the two agree on an idle machine with --threads 1).
    timed_samples = args.batch_size * args.steps
    naive = results["naive (full logits)"]
    print()
    for name, r in results.items():
        wall, cpu = timed_samples / sum(r["seconds"]), timed_samples / sum(r["cpu_seconds"])
        print(f"{name:28s} {wall:6.2f} samples/s wall ({sum(naive['seconds']) / sum(r['seconds']):.2f}x naive), "
              f"{cpu:6.2f} samples per CPU-second ({sum(naive['cpu_seconds']) / sum(r['cpu_seconds']):.2f}x naive)")
    for name in ("ours", "ours without prefix sharing"):
        difference = max(abs(a - b) for a, b in zip(results[name]["losses"], naive["losses"]))
        print(f"max |loss difference| {name} vs naive over {args.steps + 1} steps: {difference:.2e}")


if __name__ == "__main__":
    main()
