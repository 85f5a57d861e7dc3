"""Benchmark: the cost of one masking step, the trie build, and its memory (not a test).

    python experiments/bench_mask.py                 # 10k, 100k, 1M sequences
    python experiments/bench_mask.py --sizes 10000   # quicker

Synthetic catalogs: Zipf-distributed token ids, 4-20 tokens a sequence. 80 rows (8 prompts x 10 beams),
49,152 score columns, rows at depths 0, 2 and 6 along real paths. Per step it times TitleTrieProcessor
(each call on its own fresh copy of the scores, the copy not timed), the floor `scores.clone()` (one pass over
the same tensor; the best of its timings before and after the processors), and transformers'
PrefixConstrainedLogitsProcessor over a nested-dict trie (the GENRE / D3 approach; only up to 100k
sequences and at depth 0 and 2, where it is already slow). Also: build time and peak memory of the build
(tracemalloc: numpy and Python allocations) and the size of the built arrays, with and without `exclude`
holding 100 items per prompt, and the build of 100k sequences plus one 5,000-token title (`--long-title`).

With a prior: TitleTrieProcessor with `item_log_prior` (a random log-softmax per prompt over every item,
`exclude` as above), and its peer, D3's approach (``D3PrefixDictProcessor`` below, our own re-implementation
of the idea of SAI990323/DecodingMatters ``code/LogitProcesser.py``): a per-beam Python loop over a
prefix -> {token: items} dict, summing the assistant's item probabilities per allowed token. D3 runs only
up to 100k sequences and at depth 0 and 2, like the nested-dict baseline.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from transformers import PrefixConstrainedLogitsProcessor

from constrained_rec import TitleTrie, TitleTrieProcessor

VOCAB = 49_152
EOS = 2
PROMPTS, BEAMS = 8, 10


def synthetic_catalog(num_seqs: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 21, size=num_seqs)
    ids = rng.zipf(1.2, size=int(lengths.sum())) % (VOCAB - 3) + 3  # never EOS (2), pad (0) or BOS (1)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [ids[bounds[i] : bounds[i + 1]].tolist() for i in range(num_seqs)]


def nested_dict_trie(seqs):
    root: dict = {}
    for seq in seqs:
        node = root
        for tok in seq + [EOS]:
            node = node.setdefault(tok, {})
    return root


class D3PrefixDictProcessor:
    """D3-style constrained decoding with a text-free assistant (our own code, written from the paper's description).

    A dict maps every generated prefix (a tuple) to {next token: indices of the items below prefix + token}.
    Per step and per row (a Python loop): look the row's prefix up, sum the assistant's probabilities of the
    items below each allowed token and below the prefix, and write ``score + w * (log M(child) - log M(prefix))``
    into an all -inf row.
    """

    def __init__(self, seqs, item_log_prior: np.ndarray, prompt_length: int, rows_per_prompt: int, weight=1.0):
        self.children: dict[tuple, dict[int, list[int]]] = {}
        for item, seq in enumerate(seqs):
            full = list(seq) + [EOS]
            for depth in range(len(full)):
                self.children.setdefault(tuple(full[:depth]), {}).setdefault(full[depth], []).append(item)
        self.children = {prefix: {t: np.array(items) for t, items in tokens.items()}
                         for prefix, tokens in self.children.items()}
        self.prior = np.exp(item_log_prior.astype(np.float64))
        self.prompt_length, self.rows_per_prompt, self.weight = prompt_length, rows_per_prompt, weight

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            prior = self.prior[row // self.rows_per_prompt]
            tokens = self.children[tuple(input_ids[row, self.prompt_length:].tolist())]
            masses = {t: prior[items].sum() for t, items in tokens.items()}
            parent = sum(masses.values())
            allowed = [t for t, m in masses.items() if m > 0]
            increments = torch.tensor([self.weight * np.log(masses[t] / parent) for t in allowed], dtype=scores.dtype)
            out[row, allowed] = scores[row, allowed] + increments
        return out


def timed(fn, repeats: int, setup=None) -> float:
    """Best of `repeats`, in ms of the process's CPU time (one thread: the same as wall time on an idle machine,
    and steadier than it on a shared one). With `setup`, each call gets a fresh `setup()` (untimed): the
    processors get their own copy of the scores, so the copy is not timed with them."""
    def call():
        if setup is None:
            return fn()
        made = setup()
        start = time.process_time()
        fn(made)
        return time.process_time() - start

    call()  # warm-up (and JIT)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        inner = call()
        best = min(best, inner if setup is not None else time.process_time() - start)
    return best * 1e3


def measured_build(seqs) -> tuple[TitleTrie, float, int]:
    """The trie, its build time in seconds and the build's peak traced memory in bytes."""
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    build_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return trie, build_s, peak


def bench_size(num_seqs: int, repeats: int, with_baseline: bool) -> list[dict]:
    seqs = synthetic_catalog(num_seqs)
    trie, build_s, peak = measured_build(seqs)
    with tempfile.TemporaryDirectory() as folder:
        trie.save(folder)
        size_mib = sum(path.stat().st_size for path in Path(folder).glob("*.npy")) / 2**20
        print(f"\n{num_seqs:,} sequences: built in {build_s:.2f} s, peak build memory {peak / 2**20:.0f} MiB, "
              f"arrays {size_mib:.0f} MiB, {trie.num_nodes:,} branching nodes")
        start = time.perf_counter()
        loaded = TitleTrie.load(folder)
        opened = time.perf_counter()
        loaded.next_tokens(seqs[0][:3])
        print(f"  load (memory-mapped): {(opened - start) * 1e3:.1f} ms, then a first lookup "
              f"{(time.perf_counter() - opened) * 1e3:.0f} ms (includes loading the cached kernel)")
        del loaded
    rng = np.random.default_rng(1)
    row_items = rng.integers(0, num_seqs, size=(3, PROMPTS * BEAMS))
    # 100 excluded items per prompt, none of them an item some row is writing (that row would have no title).
    candidates = np.setdiff1d(np.arange(num_seqs), row_items)
    exclude = [set(rng.choice(candidates, size=100, replace=False).tolist()) for _ in range(PROMPTS)]
    nested = nested_dict_trie(seqs) if with_baseline else None
    logits = rng.standard_normal((PROMPTS, num_seqs)).astype(np.float32)
    log_prior = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True)).astype(np.float32)
    d3_prior = log_prior.copy()
    for p, items in enumerate(exclude):
        d3_prior[p, list(items)] = -np.inf
    d3 = D3PrefixDictProcessor(seqs, d3_prior, 5, BEAMS) if with_baseline else None
    rows = []
    for depth, items in zip((0, 2, 6), row_items):
        paths = [seqs[i] for i in items]
        generated = torch.tensor([(p + [EOS] * depth)[:depth] for p in paths], dtype=torch.long)
        generated = generated.reshape(PROMPTS * BEAMS, depth)
        prompt = torch.ones(PROMPTS * BEAMS, 5, dtype=torch.long)
        input_ids = torch.cat([prompt, generated], dim=1)
        scores = torch.randn(PROMPTS * BEAMS, VOCAB)
        floor = timed(lambda: scores.clone(), repeats)
        row = {"sequences": num_seqs, "depth": depth}
        for name, exc, backend, prior in (("ours_ms", None, "numba", None), ("ours_exclude_ms", exclude, "numba", None),
                                          ("ours_prior_ms", exclude, "numba", log_prior),
                                          ("torch_kernel_ms", None, "torch", None)):
            proc = TitleTrieProcessor(trie, prompt_length=5, exclude=exc, backend=backend, item_log_prior=prior)
            row[name] = timed(lambda copy: proc(input_ids, copy), repeats, setup=scores.clone)
        if nested is not None and depth <= 2:
            def allowed(batch_id, ids, _root=nested):
                node = _root
                for tok in ids[5:].tolist():
                    node = node.get(tok, {})
                return list(node.keys())

            baseline = PrefixConstrainedLogitsProcessor(allowed, num_beams=BEAMS)
            row["prefix_constrained_ms"] = timed(lambda copy: baseline(input_ids, copy), max(1, repeats // 5),
                                                  setup=scores.clone)
            row["d3_prior_ms"] = timed(lambda copy: d3(input_ids, copy), max(1, repeats // 5), setup=scores.clone)
        floor = row["floor_ms"] = min(floor, timed(lambda: scores.clone(), repeats))  # before and after: the best
        rows.append(row)
        ratio = row["ours_ms"] / floor
        print(f"  depth {depth}: ours {row['ours_ms']:.2f} ms, with exclude {row['ours_exclude_ms']:.2f} ms, "
              f"with prior (+exclude) {row['ours_prior_ms']:.2f} ms, "
              f"floor (clone) {floor:.2f} ms, ours/floor {ratio:.2f}, exclude/floor {row['ours_exclude_ms'] / floor:.2f}, "
              f"prior/floor {row['ours_prior_ms'] / floor:.2f}, torch kernel on CPU {row['torch_kernel_ms']:.2f} ms"
              + (f", PrefixConstrained {row['prefix_constrained_ms']:.1f} ms" if "prefix_constrained_ms" in row else "")
              + (f", D3 prefix-dict + prior {row['d3_prior_ms']:.1f} ms" if "d3_prior_ms" in row else ""))
    return rows


def bench_long_title(num_seqs: int, long_length: int) -> None:
    """Build cost with one very long title: it must scale with the tokens, not rows x longest title."""
    trie, build_s, peak = measured_build(synthetic_catalog(num_seqs) + [list(range(3, 3 + long_length))])
    print(f"\n{num_seqs:,} sequences + one of {long_length:,} tokens: built in {build_s:.2f} s, "
          f"peak build memory {peak / 2**20:.0f} MiB, max_length {trie.max_length:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated catalog sizes")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="largest catalog for the nested-dict baseline (it needs gigabytes at 1M)")
    parser.add_argument("--long-title", type=int, default=5000,
                        help="also build 100k sequences plus one title this long (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, scores ({PROMPTS * BEAMS}, {VOCAB}) float32")
    for size in (int(s) for s in args.sizes.split(",")):
        bench_size(size, args.repeats, with_baseline=size <= args.baseline_max)
    if args.long_title:
        bench_long_title(100_000, args.long_title)


if __name__ == "__main__":
    main()
