"""``python -m constrained_rec.data stats|preview DATASET``."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from constrained_rec.data import __doc__ as package_doc
from constrained_rec.data.given import SPLIT_FOLDERS
from constrained_rec.data.sources import DATA_ENV_VAR, load_interactions
from constrained_rec.data.splits import PROTOCOL_ALIASES, SplitConfig, make_splits, split_positions
from constrained_rec.prompts import ITEM_NOUNS, TEMPLATES


def _print_stats(stats: dict, indent: str = "") -> None:
    for key, value in stats.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_stats(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key}: {value:.6g}")
        else:
            print(f"{indent}{key}: {value}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m constrained_rec.data", description=package_doc.split("\n")[0])
    parser.add_argument("command", choices=["stats", "preview"])
    parser.add_argument("dataset", help="a data set name (ml-100k, ml-latest-small, ...) or path (file or folder)")
    parser.add_argument("--items", help="items / metadata file of a CSV or Amazon source")
    parser.add_argument("--user-column", help="generic CSV: interactions column of the user id (user_id)")
    parser.add_argument("--item-column", help="generic CSV: interactions column of the item id (item_id)")
    parser.add_argument("--time-column", help="generic CSV: interactions column of the time (timestamp)")
    parser.add_argument("--title-column", help="generic CSV: items-file column of the title (title)")
    parser.add_argument("--items-item-column", help="generic CSV: items-file column of the item id (--item-column)")
    parser.add_argument("--sep", help="generic CSV: field separator (tab for .tsv, comma otherwise)")
    parser.add_argument("--item-noun", choices=sorted(ITEM_NOUNS), help="the prompts' noun (default: the data set's)")
    parser.add_argument("--data-dir", help=f"folder of GroupLens data sets (default ${DATA_ENV_VAR})")
    parser.add_argument("--move-articles", action="store_true", help='"Matrix, The" -> "The Matrix"')
    parser.add_argument("--no-tokenizer", action="store_true", help="stats: skip title lengths in tokens")
    parser.add_argument("--split", "--protocol", dest="protocol", choices=["auto", *PROTOCOL_ALIASES],
                        default="auto",
                        help="leave-one-out, temporal (global time 8:1:1) or given (the layout's own split); "
                             "default: given where the data set has one, else leave-one-out")
    parser.add_argument("--template", choices=TEMPLATES, default="alpaca")
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_interactions(
        args.dataset, items=args.items, data_dir=args.data_dir, move_articles=args.move_articles,
        user_column=args.user_column, item_column=args.item_column, time_column=args.time_column,
        title_column=args.title_column, items_item_column=args.items_item_column, sep=args.sep,
        item_noun=args.item_noun,
    )
    tokenizer = None
    if (args.command == "stats" and not args.no_tokenizer) or args.template == "chat":
        from constrained_rec.model import load_tokenizer

        tokenizer = load_tokenizer()
    if args.command == "stats":
        _print_stats(data.stats(tokenizer))
        return
    config = SplitConfig(max_history=args.max_history, seed=args.seed, protocol=args.protocol,
                         template=args.template).resolve(data)
    missing = data.given.missing if config.protocol == "given" else ()
    # One sample per split; an empty split (a layout without its CSV, users too short) is shown as empty.
    sizes = {split: len(rows) for split, rows in split_positions(data, config).items()}
    config = dataclasses.replace(config, train_samples=1 if sizes["train"] else None,
                                 eval_samples=1 if sizes["validation"] and sizes["test"] else None)
    for split, dataset in make_splits(data, config, tokenizer).items():
        if len(dataset) == 0:
            why = (f"{data.given.folder} has no {SPLIT_FOLDERS[split]}/*.csv" if split in missing
                   else f"the {config.protocol} protocol leaves it empty")
            print(f"===== {split}: no samples ({why}) =====\n")
            continue
        sample = dataset[0]
        print(f"===== {split} sample (user {sample['user_id']}, target item {sample['target_item_id']}) =====")
        print(sample["prompt"] + sample["response"])
        print()


if __name__ == "__main__":
    main()
