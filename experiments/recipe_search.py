"""Recipe search at CPU scale: which LoRA recipe makes the LM read the user's history? (issue 13, item 2)

    python experiments/recipe_search.py --list                                  # the recipes and their settings
    python experiments/recipe_search.py --recipe qv-r8-lr1e-3                   # train + control, one recipe
    python experiments/recipe_search.py --recipe all-r16-lr1e-3 --recipe no-year   # several, one after another
    python experiments/recipe_search.py --table-only                            # rebuild the table from the JSONs

For each named recipe (:data:`RECIPES`): draw ``train_samples`` training windows from ml-100k's leave-one-out
split (seeded), LoRA-tune the embedded SmolLM2-135M with the recipe's adapter and schedule
(:func:`constrained_rec.train.train`, validation loss on ``--eval-samples`` validation users), then run the
user-signal control (:func:`constrained_rec.user_signal.user_signal`) on ``--users`` seeded test users
(history excluded, ``--candidates`` uniform candidates each): the target's AUC under the user's own prompt,
another user's prompt (a seeded derangement) and the generic prompt, and the paired differences with 95%
bootstrap intervals. The objective is an own - other AUC interval above zero.

Writes ``RESULTS/NAME.json`` (recipe, command, training summary, control) and ``RESULTS/table.md`` (every
recipe with a JSON in ``RESULTS``, with its exact command); adapters go to ``--output-dir/NAME``.

Two recipe options are thin data transforms done here, not in the library (see the report in
experiments/RECIPES.md for what should move there):

* ``strip_year``: catalog titles without their trailing " (1995)", in prompts, targets and the trie alike;
* ``history_dropout``: each training prompt's history titles are dropped independently with this
  probability (at least one kept, seeded) and the prompt re-rendered; validation and test prompts keep
  the full history.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")


@dataclass(frozen=True)
class Recipe:
    """One training recipe; every field not named keeps the project's default."""

    name: str
    note: str
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lora_r: int = 8
    lora_alpha: int = 16
    learning_rate: float = 1e-3
    epochs: int = 1
    train_samples: int = 512
    max_history: int = 10
    template: str = "alpaca"
    strip_year: bool = False
    history_dropout: float = 0.0


RECIPES = {r.name: r for r in [
    Recipe("qv-r8-lr1e-3", "baseline: BIGRec's q,v r=8 adapter at a high learning rate"),
    Recipe("all-r16-lr1e-3", "LoRA on every linear layer, r=16", lora_target_modules=ALL_LINEAR, lora_r=16,
           lora_alpha=32),
    Recipe("all-r16-lr3e-3", "every linear layer, r=16, learning rate 3e-3", lora_target_modules=ALL_LINEAR,
           lora_r=16, lora_alpha=32, learning_rate=3e-3),
    Recipe("all-r16-hist5", "every linear layer, r=16, at most 5 history titles", lora_target_modules=ALL_LINEAR,
           lora_r=16, lora_alpha=32, max_history=5),
    Recipe("all-r16-chat", "every linear layer, r=16, the model's chat template", lora_target_modules=ALL_LINEAR,
           lora_r=16, lora_alpha=32, template="chat"),
    Recipe("all-r16-no-year", "every linear layer, r=16, titles without the year in prompts, targets and trie",
           lora_target_modules=ALL_LINEAR, lora_r=16, lora_alpha=32, strip_year=True),
    Recipe("all-r16-hdrop", "every linear layer, r=16, training histories with item dropout 0.3",
           lora_target_modules=ALL_LINEAR, lora_r=16, lora_alpha=32, history_dropout=0.3),
]}


# ------------------------------------------------------------------------------------------- data transforms
def strip_years(data):
    """``data`` with every title's trailing year removed ("Heat (1995)" -> "Heat"); a title that would become
    empty is kept whole. Titles may now coincide (remakes): the control excludes same-title candidates."""
    titles = {}
    for item, title in data.titles.items():
        stripped = YEAR_SUFFIX.sub("", title)
        titles[item] = stripped if stripped.strip() else title
    return dataclasses.replace(data, titles=titles)


def drop_history_items(split, probability: float, seed: int, item_noun: str, template: str, tokenizer):
    """The training split with each history title dropped with ``probability`` (at least one kept, seeded),
    prompts re-rendered by :func:`constrained_rec.prompts.build_prompt`."""
    from constrained_rec.prompts import build_prompt

    if not 0.0 <= probability < 1.0:
        raise ValueError(f"history_dropout must be in [0, 1), got {probability!r}")
    rng = np.random.default_rng([seed, 13])

    def thin(row):
        keep = rng.random(len(row["history_titles"])) >= probability
        if not keep.any():
            keep[rng.integers(len(keep))] = True
        titles = [t for t, k in zip(row["history_titles"], keep) if k]
        items = [i for i, k in zip(row["history_item_ids"], keep) if k]
        return {"history_titles": titles, "history_item_ids": items,
                "prompt": build_prompt(titles, item_noun, template, tokenizer)}

    return split.map(thin, load_from_cache_file=False, new_fingerprint=f"hdrop-{probability}-{seed}")


# ----------------------------------------------------------------------------------------------- one recipe
def recipe_command(recipe: Recipe, args) -> str:
    parts = ["python", "experiments/recipe_search.py", "--recipe", recipe.name]
    for flag, default in (("users", 100), ("candidates", 10), ("eval_samples", 100), ("threads", 1)):
        value = getattr(args, flag)
        if value != default:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    if args.train_samples is not None:
        parts += ["--train-samples", str(args.train_samples)]
    if args.model != DEFAULT_MODEL:
        parts += ["--model", args.model]
    return " ".join(shlex.quote(p) for p in parts)


DEFAULT_MODEL = "smollm2-135m"


def run_recipe(recipe: Recipe, args) -> dict:
    """Train the recipe's adapter and measure the user-signal control; the JSON-ready result."""
    from constrained_rec.catalog import catalog_trie
    from constrained_rec.data import SplitConfig, load_interactions, make_splits
    from constrained_rec.evaluate import consumed_items, samples_from_split
    from constrained_rec.model import load_model
    from constrained_rec.train import TrainConfig, train
    from constrained_rec.user_signal import signal_verdict, user_signal

    started = time.perf_counter()
    train_samples = args.train_samples or recipe.train_samples
    model, tokenizer = load_model(args.model)
    data = load_interactions("ml-100k")
    if recipe.strip_year:
        data = strip_years(data)
    trie = catalog_trie(data, tokenizer)
    # eval_samples draws validation and test users from their own seeded streams: the same test users for
    # every recipe and every train_samples.
    split_config = SplitConfig(train_samples=train_samples, eval_samples=max(args.users, args.eval_samples),
                               max_history=recipe.max_history, template=recipe.template, seed=args.seed)
    splits = make_splits(data, split_config, tokenizer=tokenizer)
    train_split = splits["train"]
    if recipe.history_dropout:
        train_split = drop_history_items(train_split, recipe.history_dropout, args.seed, data.item_noun,
                                         recipe.template, tokenizer)
    validation = splits["validation"].select(range(args.eval_samples))
    config = TrainConfig(lora_r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                         lora_target_modules=recipe.lora_target_modules, learning_rate=recipe.learning_rate,
                         epochs=recipe.epochs, seed=args.seed, catalog_fingerprint=trie.fingerprint(),
                         warmup_steps=min(20, max(1, train_samples // 8 // 10)), checkpoint_every=10 ** 6)
    tick = time.perf_counter()
    result = train(model, tokenizer, train_split, config, eval_dataset=validation,
                   output_dir=Path(args.output_dir) / recipe.name, resume=True)
    train_s = time.perf_counter() - tick
    first_eval = next((r["eval_loss"] for r in result.log if "eval_loss" in r), None)

    test = splits["test"].select(range(args.users))
    samples = samples_from_split(test, consumed_items(data.interactions, test))
    model = result.model.eval()
    tick = time.perf_counter()
    signal = user_signal(model, tokenizer, samples, trie, num_candidates=args.candidates, seed=args.seed,
                         item_noun=data.item_noun, template=recipe.template)
    signal_s = time.perf_counter() - tick
    return {
        "recipe": dataclasses.asdict(recipe), "command": recipe_command(recipe, args), "model": args.model,
        "train_samples": train_samples, "steps": result.global_step, "train_loss": result.train_loss,
        "validation_loss": result.best_eval_loss, "first_validation_loss": first_eval,
        "validation_samples": len(validation), "verdict": signal_verdict(signal), "signal": signal,
        "seconds": {"train": train_s, "signal": signal_s, "total": time.perf_counter() - started},
        "threads": torch.get_num_threads(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# -------------------------------------------------------------------------------------------------- the table
def _fmt(figure: dict, digits: int = 3) -> str:
    low, high = figure["ci"]
    return f"{figure['value']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def table_markdown(results: list[dict]) -> str:
    """One row per recipe: settings, validation loss, AUCs and the two differences with their intervals."""
    lines = ["| recipe | LoRA | lr | samples x epochs | history | template | titles | val loss | AUC own / other / "
             "generic | own - other AUC [95% CI] | own - generic AUC [95% CI] | wall min | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        recipe, signal = r["recipe"], r["signal"]
        targets = "all linear" if tuple(recipe["lora_target_modules"]) == ALL_LINEAR else ",".join(
            m.replace("_proj", "") for m in recipe["lora_target_modules"])
        aucs = " / ".join(f"{signal['conditions'][c]['auc']['value']:.3f}" for c in ("own", "other", "generic"))
        history = f"{recipe['max_history']}" + (f", dropout {recipe['history_dropout']}" if recipe["history_dropout"] else "")
        lines.append("| " + " | ".join([
            recipe["name"], f"{targets} r={recipe['lora_r']}", f"{recipe['learning_rate']:g}",
            f"{r['train_samples']} x {recipe['epochs']}", history, recipe["template"],
            "no year" if recipe["strip_year"] else "title (year)", f"{r['validation_loss']:.3f}", aucs,
            _fmt(signal["differences"]["own_minus_other"]["auc"]),
            _fmt(signal["differences"]["own_minus_generic"]["auc"]),
            f"{r['seconds']['total'] / 60:.0f}", f"`{r['command']}`"]) + " |")
    return "\n".join(lines) + "\n"


def write_table(results_dir: Path) -> Path:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    results.sort(key=lambda r: r["finished"])
    path = results_dir / "table.md"
    path.write_text(table_markdown(results))
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", default=[], help=f"one of {list(RECIPES)}; repeatable")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--table-only", action="store_true", help="rebuild RESULTS/table.md from the JSONs")
    parser.add_argument("--train-samples", type=int, default=None, help="override the recipe's training windows")
    parser.add_argument("--users", type=int, default=100, help="test users of the control")
    parser.add_argument("--candidates", type=int, default=10, help="N, other candidates per user")
    parser.add_argument("--eval-samples", type=int, default=100, help="validation users for the loss")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded name or local model folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", default="runs/recipes", help="adapters go to OUTPUT_DIR/NAME")
    parser.add_argument("--results", default="/work/notes/recipes", help="NAME.json and table.md go here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.recipe if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    for flag in ("users", "candidates", "eval_samples", "threads"):
        if getattr(args, flag) < 1 or (flag == "users" and args.users < 2):
            parser.error(f"--{flag.replace('_', '-')} must be at least {2 if flag == 'users' else 1}, "
                         f"got {getattr(args, flag)}")
    if args.train_samples is not None and args.train_samples < 1:
        parser.error(f"--train-samples must be at least 1, got {args.train_samples}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.list:
        for recipe in RECIPES.values():
            print(recipe)
        return
    torch.set_num_threads(args.threads)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in args.recipe:
        result = run_recipe(RECIPES[name], args)
        (results_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(f"{name}: val loss {result['validation_loss']:.3f}, own - other AUC "
              f"{_fmt(result['signal']['differences']['own_minus_other']['auc'])}; {result['verdict']}", flush=True)
    if args.recipe or args.table_only:
        print(write_table(results_dir).read_text())


if __name__ == "__main__":
    sys.exit(main())
