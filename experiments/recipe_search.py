"""Recipe search at CPU scale: which LoRA recipe makes the LM read the user's history?

    python experiments/recipe_search.py --list                                            # the recipes
    python experiments/recipe_search.py --recipe qv-r8-lr1e-3                             # train + control, one recipe
    python experiments/recipe_search.py --recipe all-r16-lr1e-3 --recipe all-r16-no-year  # several, one after another
    python experiments/recipe_search.py --table-only                                      # rebuild table.md

Each recipe trains a LoRA adapter on seeded ml-100k windows and runs the user-signal control on seeded test
users (own / another user's / generic prompt, AUC differences with 95% bootstrap intervals); see
:mod:`constrained_rec.experiment.recipes` for the recipes and the measurement, and experiments/RECIPES.md for the results.

Writes ``RESULTS/NAME.json`` (recipe, command, training summary, control) and ``RESULTS/table.md`` (every
recipe with a JSON in ``RESULTS``, with its exact command); adapters go to ``--output-dir/NAME``.

Everything below is argparse; the search itself is :func:`constrained_rec.experiment.recipes.run_search`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from constrained_rec.experiment.recipes import RECIPES, SearchSettings, run_search


def build_parser() -> argparse.ArgumentParser:
    defaults = SearchSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", default=[], choices=list(RECIPES), metavar="NAME",
                        help=f"one of {list(RECIPES)}; repeatable")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--table-only", action="store_true", help="rebuild RESULTS/table.md from the JSONs")
    parser.add_argument("--train-samples", type=int, default=None, help="override the recipe's training windows")
    parser.add_argument("--users", type=int, default=defaults.users, help="test users of the control")
    parser.add_argument("--candidates", type=int, default=defaults.candidates, help="N, other candidates per user")
    parser.add_argument("--eval-samples", type=int, default=defaults.eval_samples, help="validation users for the loss")
    parser.add_argument("--model", default=defaults.model, help="embedded name or local model folder")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--output-dir", default=defaults.output_dir, help="adapters go to OUTPUT_DIR/NAME")
    parser.add_argument("--results", default="/work/notes/recipes", help="NAME.json and table.md go here")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = SearchSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SearchSettings)})
    except ValueError as error:
        parser.error(str(error))
    if args.list:
        for recipe in RECIPES.values():
            print(recipe)
        return
    if not (args.recipe or args.table_only):
        parser.error("nothing to do: pass --recipe NAME (repeatable), --table-only or --list")
    table = run_search(args.recipe, settings, args.results, echo=lambda line: print(line, flush=True))
    print(table.read_text())


if __name__ == "__main__":
    sys.exit(main())
