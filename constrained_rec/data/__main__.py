"""``python -m constrained_rec.data stats|preview DATASET``."""

from __future__ import annotations

import argparse
import logging

from constrained_rec.data import __doc__ as package_doc
from constrained_rec.data.sources import DATA_ENV_VAR, load_interactions
from constrained_rec.data.splits import PROTOCOLS, SplitConfig, make_splits
from constrained_rec.prompts import TEMPLATES

def _print_stats(stats: dict, indent: str = "") -> None:
    for key, value in stats.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_stats(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key}: {value:.6g}")
        else:
            print(f"{indent}{key}: {value}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m constrained_rec.data", description=package_doc.split("\n")[0])
    parser.add_argument("command", choices=["stats", "preview"])
    parser.add_argument("dataset", help="a data set name (ml-100k, ml-latest-small, ...) or path")
    parser.add_argument("--items", help="items / metadata file of a CSV or Amazon source")
    parser.add_argument("--data-dir", help=f"folder of GroupLens data sets (default ${DATA_ENV_VAR})")
    parser.add_argument("--move-articles", action="store_true", help='"Matrix, The" -> "The Matrix"')
    parser.add_argument("--no-tokenizer", action="store_true", help="stats: skip title lengths in tokens")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="leave_one_out")
    parser.add_argument("--template", choices=TEMPLATES, default="alpaca")
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_interactions(args.dataset, items=args.items, data_dir=args.data_dir, move_articles=args.move_articles)
    tokenizer = None
    if (args.command == "stats" and not args.no_tokenizer) or args.template == "chat":
        from constrained_rec.model import load_tokenizer

        tokenizer = load_tokenizer()
    if args.command == "stats":
        _print_stats(data.stats(tokenizer))
        return
    config = SplitConfig(
        max_history=args.max_history, eval_samples=1, train_samples=1, seed=args.seed,
        protocol=args.protocol, template=args.template,
    )
    for split, dataset in make_splits(data, config, tokenizer).items():
        sample = dataset[0]
        print(f"===== {split} sample (user {sample['user_id']}, target item {sample['target_item_id']}) =====")
        print(sample["prompt"] + sample["response"])
        print()


if __name__ == "__main__":
    main()
