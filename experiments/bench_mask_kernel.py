"""Benchmark: the Numba mask kernel alone (not a test), against a one-thread copy of the scores.

    python experiments/bench_mask_kernel.py --sizes 100000,1000000
    python experiments/bench_mask_kernel.py --baseline ../main/kernels/trie_walk.py   # another checkout's kernel too

``experiments/bench_mask.py``'s catalogs, rows and constraints (none, 100 excluded items per prompt, a prior plus
the exclusions), but only ``trie_walk.mask_scores`` is timed, on a preallocated copy of the scores refreshed by
``np.copyto`` before each call (untimed), against that ``np.copyto`` itself: no processor overhead and no fresh
allocation, so it moves less with the machine's load than the processor's figures. With ``--baseline`` the given
``trie_walk.py`` (e.g. the main checkout's) is timed too, interleaved with ours in rounds (best of each over all
rounds), and both must produce the same bits and row statuses. Process CPU time, one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from constrained_rec import TitleTrie
from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.kernels import trie_walk


def load_module(name: str, path: str | Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# bench_mask.py's catalogs and shapes (a script beside this one, not a package: loaded by path).
_BENCH_MASK = load_module("bench_mask", Path(__file__).with_name("bench_mask.py"))
BEAMS, EOS, PROMPTS, VOCAB = _BENCH_MASK.BEAMS, _BENCH_MASK.EOS, _BENCH_MASK.PROMPTS, _BENCH_MASK.VOCAB
synthetic_catalog = _BENCH_MASK.synthetic_catalog


def bench_size(size: int, depths: list[int], repeats: int, rounds: int, kernels: dict) -> None:
    seqs = synthetic_catalog(size)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    rng = np.random.default_rng(1)
    row_items = rng.integers(0, size, size=(3, PROMPTS * BEAMS))
    exclude = [set(rng.choice(np.setdiff1d(np.arange(size), row_items), size=100, replace=False).tolist())
               for _ in range(PROMPTS)]
    logits = rng.standard_normal((PROMPTS, size)).astype(np.float32)
    log_prior = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True)).astype(np.float32)
    constraints = {"none": ItemConstraints.build(trie, num_prompts=PROMPTS),
                   "exclude": ItemConstraints.build(trie, num_prompts=PROMPTS, exclude=exclude),
                   "prior": ItemConstraints.build(trie, num_prompts=PROMPTS, exclude=exclude, item_log_prior=log_prior)}
    source = np.random.default_rng(2).standard_normal((PROMPTS * BEAMS, VOCAB)).astype(np.float32)
    scores = np.empty_like(source)
    status, depth_out = np.empty(PROMPTS * BEAMS, dtype=np.int64), np.empty(PROMPTS * BEAMS, dtype=np.int64)

    def best(fn):
        fn()
        shortest = float("inf")
        for _ in range(repeats):
            np.copyto(scores, source)
            start = time.process_time()
            fn()
            shortest = min(shortest, time.process_time() - start)
        return shortest

    floor = min(best(lambda: np.copyto(scores, source)) for _ in range(rounds))
    line = []
    for depth, items in zip((0, 2, 6), row_items):
        if depth not in depths:
            continue
        generated = np.array([(seqs[i] + [EOS] * depth)[:depth] for i in items], dtype=np.int64).reshape(len(items), depth)
        for name, built in constraints.items():
            if name == "prior":
                view, neg_inf, limit = scores, np.float32(-np.inf), float(np.finfo(np.float32).max)
            else:  # masking moves bits: the int32 view, as decoding.masking calls it
                view, neg_inf, limit = scores.view(np.int32), np.float32(-np.inf).view(np.int32), 0.0
            times, outputs = {}, {}
            for _ in range(rounds):
                for label, kernel in kernels.items():
                    def call(kernel=kernel):
                        kernel.mask_scores(view, generated, trie.arrays(), built.kernel_arrays, BEAMS, -1, neg_inf,
                                           limit, status, depth_out)
                    times[label] = min(times.get(label, float("inf")), best(call))
                    np.copyto(scores, source)
                    call()
                    outputs[label] = (scores.view(np.int32).copy(), status.copy())
            first = next(iter(outputs.values()))
            if any(not (np.array_equal(out[0], first[0]) and np.array_equal(out[1], first[1])) for out in outputs.values()):
                raise AssertionError(f"the kernels disagree at depth {depth}, {name}")
            line.append(f"depth {depth} {name}: " + " -> ".join(f"{times[k] / floor:.2f}" for k in kernels))
    print(f"{size:,} sequences, copy {floor * 1e3:.2f} ms; kernel / copy ({' -> '.join(kernels)}): " + "; ".join(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated catalog sizes")
    parser.add_argument("--depths", default="0,2,6", help="of 0, 2, 6")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="another checkout's kernels/trie_walk.py, timed first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernels = ({"baseline": load_module("baseline_trie_walk", args.baseline)} if args.baseline else {}) | {"ours": trie_walk}
    for size in (int(s) for s in args.sizes.split(",")):
        bench_size(size, [int(d) for d in args.depths.split(",")], args.repeats, args.rounds, kernels)


if __name__ == "__main__":
    main()
