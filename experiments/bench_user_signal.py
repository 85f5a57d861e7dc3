"""Benchmark: seconds per user of the user-signal control on the embedded model and real ml-100k (not a test).

    python experiments/bench_user_signal.py                         # 12 users, N = 20 and 50, one thread
    python experiments/bench_user_signal.py --users 24 --candidates 10,20 --batch-size 16

For each N, :func:`constrained_rec.evaluation.user_signal.user_signal` on the first `--users` seeded ml-100k test users
(leave-one-out, history excluded), as ``experiments/run.py`` builds them: wall seconds and process CPU seconds
per user, and the scored titles per user. The generic prompt scores each distinct candidate once, so its cost
per user falls as users are added (candidates repeat); a run over more users costs at most what this reports.
The model is the embedded SmolLM2-135M without an adapter: the cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from constrained_rec import TitleTrie
from constrained_rec.data import SplitConfig, load_interactions, make_splits
from constrained_rec.evaluation.evaluate import consumed_items, samples_from_split
from constrained_rec.evaluation.user_signal import user_signal
from constrained_rec.model import load_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--candidates", default="20,50", help="comma-separated N values")
    parser.add_argument("--batch-size", type=int, default=32, help="titles per forward")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_interactions("ml-100k")
    test = make_splits(data, SplitConfig(eval_samples=args.users, seed=0))["test"]
    samples = samples_from_split(test, consumed_items(data.interactions, test))
    model, tokenizer = load_model("smollm2-135m")
    model.eval()
    item_ids = list(data.titles)
    trie = TitleTrie.from_titles([data.titles[i] for i in item_ids], tokenizer, item_ids=item_ids)
    user_signal(model, tokenizer, samples[:2], trie, num_candidates=2, batch_size=args.batch_size)  # warm-up

    print("| N | users | s/user (wall) | s/user (CPU) | own AUC | other AUC | generic AUC |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(part) for part in args.candidates.split(",")):
        wall, cpu = time.perf_counter(), time.process_time()
        signal = user_signal(model, tokenizer, samples, trie, num_candidates=n, batch_size=args.batch_size)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        aucs = [f"{signal['conditions'][c]['auc']['value']:.3f}" for c in ("own", "other", "generic")]
        print(f"| {n} | {len(samples)} | {wall / len(samples):.2f} | {cpu / len(samples):.2f} | " + " | ".join(aucs) + " |",
              flush=True)


if __name__ == "__main__":
    main()
