"""Recipe search at CPU scale: which LoRA recipe makes the LM read the user's history?

    python experiments/recipe_search.py --list                                            # the recipes
    python experiments/recipe_search.py --recipe qv-r8-lr1e-3                             # train + control, one recipe
    python experiments/recipe_search.py --recipe all-r16-lr1e-3 --recipe all-r16-no-year  # several, one after another
    python experiments/recipe_search.py --table-only                                      # rebuild table.md

Each recipe trains a LoRA adapter on seeded ml-100k windows and runs the user-signal control on seeded test
users (own / another user's / generic prompt, AUC differences with 95% bootstrap intervals); see
:mod:`constrained_rec.experiment.recipes` for the recipes and the measurement, and experiments/RECIPES.md for the results.

Writes ``RESULTS/NAME.json`` (recipe, command, training summary, control) and ``RESULTS/table.md`` (every
recipe with a JSON in ``RESULTS``, with its exact command); adapters go to ``--output-dir/NAME``, whose ``run.json``
records the recipe's options: a rerun there with other options (``--users``, ``--seed``, ...) is refused.

Every flag is a field of :class:`SearchCommand` or :class:`~constrained_rec.experiment.recipes.SearchSettings`
(default and help text live there); ``--config FILE.yaml`` sets any of them by name (``recipe: [qv-r8-lr1e-3]``,
``users: 50``), flags given on the command line win. The search itself is
:func:`constrained_rec.experiment.recipes.run_search`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from constrained_rec.experiment.recipes import RECIPES, SearchSettings, run_search
from constrained_rec.options import OptionParser, add_options, option, option_fields


@dataclass
class SearchCommand:
    """The options of this script beside :class:`SearchSettings`' (what to run and where the results go)."""

    recipe: tuple[str, ...] = option((), f"one of {list(RECIPES)}; repeatable", action="append",
                                     choices=list(RECIPES), metavar="NAME")
    list: bool = option(False, "print the recipes and exit")
    table_only: bool = option(False, "rebuild RESULTS/table.md from the JSONs")
    results: str = option("/work/notes/recipes", "NAME.json and table.md go here")


def build_parser() -> OptionParser:
    """The flags of :class:`SearchCommand` and :class:`SearchSettings` (defaults and help live on their fields) and
    ``--config``."""
    parser = OptionParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_config_option()
    add_options(parser, SearchCommand)
    add_options(parser, SearchSettings)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = SearchSettings(**{spec.name: getattr(args, spec.name) for spec in option_fields(SearchSettings)})
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
