"""Fit the text-free assistants on ml-100k leave-one-out and score them on all test users.

    python experiments/bench_assistants.py --threads 1

Each assistant is fitted on the training interactions only (validation targets choose EASE's lambda and
temperature and SASRec's stopping epoch), then ranks the whole catalog for every test user with the user's
history excluded, exactly as ``experiments/run.py`` evaluates (HR@10 / NDCG@10, 95% bootstrap intervals over
users). The most-popular row of ``constrained_rec.evaluation.evaluate`` is printed as a cross-check of Popularity.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from constrained_rec.collaborative import AssistantRecommender, fit_assistant, histories_before
from constrained_rec.data import SplitConfig, load_interactions, split_positions
from constrained_rec.evaluation import metrics
from constrained_rec.evaluation.evaluate import EvalConfig, EvalSample, training_item_counts
from constrained_rec.evaluation.recommenders import MostPopularRecommender

K = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--assistants", nargs="+", default=["popularity", "ease", "sasrec"])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sasrec-epochs", type=int, default=200, help="upper bound on SASRec epochs")
    parser.add_argument("--sasrec-patience", type=int, default=5, help="epochs without a better validation NDCG@10")
    parser.add_argument("--sasrec-minutes", type=float, default=None, help="wall-clock budget of SASRec training")
    parser.add_argument("--save-dir", default=None, help="save each fitted assistant to SAVE_DIR/<name>")
    return parser.parse_args(argv)


def figure(per_user: np.ndarray, seed: int) -> str:
    low, high = metrics.bootstrap_interval(per_user, seed=seed)
    return f"{per_user.mean():.4f} [{low:.4f}, {high:.4f}]"


def evaluate_records(records: list[dict], seed: int) -> tuple[str, str]:
    ranks = np.array([metrics.target_rank(r["item_ids"], r["target_item_id"]) for r in records], dtype=float)
    return figure(metrics.hit_rate(ranks, K), seed), figure(metrics.ndcg(ranks, K), seed)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_interactions(args.dataset)
    split = SplitConfig()
    test_rows = split_positions(data, split)["test"]
    histories = histories_before(data, test_rows)
    frame = data.interactions
    samples = [
        EvalSample(index, int(frame["user_id"].iat[row]), "", int(frame["item_id"].iat[row]),
                   data.titles[int(frame["item_id"].iat[row])], frozenset(history.tolist()))
        for index, (row, history) in enumerate(zip(test_rows.tolist(), histories))
    ]
    config = EvalConfig(ks=(K,))
    print(f"{args.dataset}: {len(data.titles)} items, {len(samples)} test users, leave-one-out, history excluded; "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"(shared); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"| method | HR@{K} [95% CI] | NDCG@{K} [95% CI] | fit wall s | fit CPU s | notes |")
    print("| --- | --- | --- | --- | --- | --- |")
    held_out = np.r_[split_positions(data, split)["validation"], test_rows]
    popular = MostPopularRecommender(training_item_counts(frame, held_out), data.titles, config)(samples)
    print(f"| most-popular (evaluate.py) | {' | '.join(evaluate_records(popular['most-popular'], args.seed))} | "
          "0 | 0 | cross-check |")
    for name in args.assistants:
        options = {}
        if name == "sasrec":
            options = {"max_epochs": args.sasrec_epochs, "patience": args.sasrec_patience,
                       "max_minutes": args.sasrec_minutes,
                       "log": lambda line: print(f"  {line}", flush=True)}
        started, cpu_started = time.perf_counter(), time.process_time()
        assistant = fit_assistant(name, data, split, seed=args.seed, **options)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        if args.save_dir:
            assistant.save(os.path.join(args.save_dir, name))
        records = AssistantRecommender(assistant, histories, data.titles, config)(samples)[name]
        info = getattr(assistant, "fit_info", {})
        notes = ""
        if name == "ease":
            notes = (f"lambda {assistant.l2:g} (validation NDCG@10 by lambda: "
                     + ", ".join(f"{k:g}: {v:.4f}" for k, v in info["validation_ndcg@10_by_l2"].items())
                     + f"), temperature {assistant.temperature:.4f}")
        elif name == "sasrec":
            notes = (f"{info['epochs']} epochs, best {info['best_epoch']} (validation NDCG@10 "
                     f"{info['validation_ndcg@10']:.4f}), stopped by {info['stopped_by']}")
        figures = " | ".join(evaluate_records(records, args.seed))
        print(f"| {name} | {figures} | {seconds:.1f} | {cpu_seconds:.1f} | {notes} |", flush=True)


if __name__ == "__main__":
    main()
