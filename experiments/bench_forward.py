"""Benchmark: what one forward of the embedded model costs per token, against this CPU's matrix-multiply rate (not a test).

    python experiments/bench_forward.py                 # one thread, best of 3 per row
    python experiments/bench_forward.py --threads 2 --repeats 5

Decoding is bounded by the model's own work once every token it feeds is needed (README, "Throughput of
`recommend`"). This asks how far that work is from the machine's: it times the forward shapes decoding uses (a
prefill of 8 prompts x 138 tokens, all positions' logits; a riding forward of 22 rows x 31 tokens) for the model
as loaded, with a LoRA adapter of the defaults' shape (q,v r=8) and of the preset's (every linear layer, r=16),
each unmerged (as decoding runs it, a `peft.PeftModel`) and merged into a copy of the weights, and converts each
to GFLOP/s (2 x the parameters a token multiplies through, lm_head included). Beside them, the rate of a bare
`torch.nn.Linear` of each of the model's matrix shapes at the same rows: the ceiling a forward could reach on this
machine. Times are the process's CPU time (steadier than wall clock on a shared machine), best of `--repeats`.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from constrained_rec.experiment.recipes import ALL_LINEAR
from constrained_rec.model import load_model

SHAPES = {"prefill 8 x 138": (8, 138), "riding 22 x 31": (22, 31)}


def cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def flops_per_token(model) -> float:
    """2 x the weights one token multiplies through: every linear layer's, the lm_head's (tied or not) once."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * weights


def variants(model):
    """(name, model) pairs: as loaded, and each LoRA shape unmerged and merged (random nonzero adapters: the
    cost of a forward does not depend on the values)."""
    from peft import LoraConfig, get_peft_model

    yield "no adapter", model
    for name, targets, rank in (("LoRA q,v r=8", ["q_proj", "v_proj"], 8), ("LoRA all linear r=16", list(ALL_LINEAR), 16)):
        torch.manual_seed(0)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
        adapted = get_peft_model(copy.deepcopy(model), config).eval()
        yield f"{name}, unmerged", adapted
        yield f"{name}, merged", copy.deepcopy(adapted).merge_and_unload().eval()


def gemm_rates(model, rows: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of a bare Linear for each distinct (in, out) shape of the model's linear layers, at `rows` rows."""
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)})
    rates = {}
    for fan_in, fan_out in shapes:
        layer, x = torch.nn.Linear(fan_in, fan_out, bias=False), torch.randn(rows, fan_in)
        seconds = cpu_seconds(lambda: layer(x), repeats)
        rates[f"{fan_in} x {fan_out}"] = 2.0 * rows * fan_in * fan_out / seconds / 1e9
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row (the best is kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = load_model()
    flops = flops_per_token(model)
    print(f"{flops / 2e6:.0f}M weights a token multiplies through; torch threads {torch.get_num_threads()}")
    print("| model | " + " | ".join(f"{s}: ms/token (GFLOP/s)" for s in SHAPES) + " |")
    print("|---|" + "---|" * len(SHAPES))
    generator = torch.Generator().manual_seed(0)
    inputs = {s: torch.randint(100, model.config.vocab_size, shape, generator=generator) for s, shape in SHAPES.items()}
    with torch.inference_mode():
        for name, variant in variants(model):
            cells = []
            for shape, ids in inputs.items():
                seconds = cpu_seconds(lambda: variant(input_ids=ids), args.repeats)
                tokens = ids.numel()
                cells.append(f"{1e3 * seconds / tokens:.2f} ({flops * tokens / seconds / 1e9:.0f})")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        for shape, (rows, length) in SHAPES.items():
            rates = gemm_rates(model, rows * length, args.repeats)
            print(f"bare Linear at {rows * length} rows ({shape}), GFLOP/s: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
