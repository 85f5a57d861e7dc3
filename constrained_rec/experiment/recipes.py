"""Recipe search at CPU scale: which LoRA recipe makes the LM read the user's history?

For each named recipe (:data:`RECIPES`): draw ``train_samples`` training windows from ml-100k's leave-one-out
split (seeded), LoRA-tune the model with the recipe's adapter and schedule (:func:`constrained_rec.training.train.train`,
validation loss on ``eval_samples`` validation users), then run the user-signal control
(:func:`constrained_rec.evaluation.user_signal.user_signal`) on ``users`` seeded test users (history excluded,
``candidates`` uniform candidates each): the target's AUC under the user's own prompt, another user's prompt
(a seeded derangement) and the generic prompt, and the paired differences with 95% bootstrap intervals. The
objective is an own - other AUC interval above zero.

``experiments/recipe_search.py`` is the command line (:class:`SearchSettings`' fields are its flags ->
:func:`run_search`); the results and their reading are in ``experiments/RECIPES.md``.

Two recipe options are data transforms kept here until they become split options (see RECIPES.md):

* ``strip_year`` (:func:`strip_years`): catalog titles without their trailing " (1995)", in prompts, targets and
  the trie alike;
* ``history_dropout`` (:func:`drop_history_items`): each training prompt's history titles are dropped
  independently with this probability (at least one kept, seeded) and the prompt re-rendered; validation and
  test prompts keep the full history.

``collab_tokens="items"`` (issue 23) fits SASRec on the recipe's split first and puts its item embeddings after each
history title (:mod:`constrained_rec.training.collab_tokens`) in training, validation and the control's own and
other prompts (the generic prompt has none).

Example (the recipes and their settings; running one trains a model)::

    >>> from constrained_rec.experiment.recipes import RECIPES
    >>> RECIPES["all-r16-lr1e-3"].lora_r
    16
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from constrained_rec.experiment.run_config import DEFAULT_MODEL, RunConfig
from constrained_rec.experiment.skeleton import TrainingPolicy, run_training
from constrained_rec.experiment.steps import Adapter, LoadedData
from constrained_rec.options import option

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")
SCRIPT = "experiments/recipe_search.py"


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
    history_loss_weight: float = 0.0
    collab_tokens: str = "none"


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
    Recipe("all-r16-hloss1", "every linear layer, r=16, plus the history-title loss at weight 1 (issue 20)",
           lora_target_modules=ALL_LINEAR, lora_r=16, lora_alpha=32, history_loss_weight=1.0),
    Recipe("all-r16-e3", "every linear layer, r=16, 3 epochs", lora_target_modules=ALL_LINEAR, lora_r=16,
           lora_alpha=32, epochs=3),
    Recipe("all-r16-hloss1-e3", "every linear layer, r=16, history-title loss at weight 1, 3 epochs",
           lora_target_modules=ALL_LINEAR, lora_r=16, lora_alpha=32, history_loss_weight=1.0, epochs=3),
    Recipe("all-r16-items", "all-r16-lr1e-3 plus collaborative tokens: SASRec's item embedding after each history "
           "title (issue 23)", lora_target_modules=ALL_LINEAR, lora_r=16, lora_alpha=32, collab_tokens="items"),
]}


@dataclass(frozen=True)
class SearchSettings:
    """What every recipe of a search shares (the options of ``experiments/recipe_search.py``).

    Args:
        users: test users of the control (at least 2: "another user" needs one).
        candidates: N, other candidates per user.
        eval_samples: validation users for the loss.
        train_samples: training windows; ``None`` keeps each recipe's own.
        model: embedded name or local model folder.
        seed: seeds the split, the training, the dropout and the control.
        threads: torch CPU threads.
        output_dir: adapters go to ``output_dir/NAME``.
    """

    users: int = option(100, "test users of the control")
    candidates: int = option(10, "N, other candidates per user")
    eval_samples: int = option(100, "validation users for the loss")
    train_samples: int | None = option(None, "override the recipe's training windows")
    model: str = option(DEFAULT_MODEL, "embedded name or local model folder")
    seed: int = option(0, "seeds the split, the training, the dropout and the control")
    threads: int = option(1, "torch CPU threads")
    output_dir: str = option("runs/recipes", "adapters go to OUTPUT_DIR/NAME")

    def __post_init__(self):
        for name, least in (("users", 2), ("candidates", 1), ("eval_samples", 1), ("threads", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(self, name)}")
        if self.train_samples is not None and self.train_samples < 1:
            raise ValueError(f"--train-samples must be at least 1, got {self.train_samples}")


def recipe_named(name: str) -> Recipe:
    """The recipe called ``name``; a ValueError naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {list(RECIPES)}")
    return RECIPES[name]


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
def recipe_command(recipe: Recipe, settings: SearchSettings) -> str:
    """The command line that reruns ``recipe`` with ``settings`` (options at their defaults left out)."""
    defaults = SearchSettings()
    parts = ["python", SCRIPT, "--recipe", recipe.name]
    for name in ("users", "candidates", "eval_samples", "seed", "threads", "train_samples", "model"):
        value = getattr(settings, name)
        if value != getattr(defaults, name):
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def recipe_config(recipe: Recipe, settings: SearchSettings) -> RunConfig:
    """The recipe as the main job's options (its identity in ``run.json``, and its training options:
    ``recipe_config(...).train_config(fingerprint)`` is the recipe's :class:`~constrained_rec.training.train.TrainConfig`,
    a warm-up of a tenth of an epoch, no checkpoint before the end); the adapter goes to ``output_dir/NAME``."""
    return RunConfig(model=settings.model, max_history=recipe.max_history,
                     train_samples=settings.train_samples or recipe.train_samples, epochs=recipe.epochs,
                     learning_rate=recipe.learning_rate, lora_r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                     lora_target_modules=recipe.lora_target_modules, history_loss_weight=recipe.history_loss_weight,
                     collab_tokens=recipe.collab_tokens, assistant="none" if recipe.collab_tokens == "none" else "sasrec",
                     signal_candidates=settings.candidates, seed=settings.seed, checkpoint_every=10 ** 6,
                     output_dir=str(Path(settings.output_dir) / recipe.name), command=recipe_command(recipe, settings))


def recipe_policy(recipe: Recipe, settings: SearchSettings) -> TrainingPolicy:
    """The recipe's steps for :func:`~constrained_rec.experiment.skeleton.run_training`: its data (ml-100k, the
    titles without years and the training histories thinned where it asks), SASRec's collaborative tokens where
    it asks, the adapter trained (resumed from its checkpoint), then the user-signal control (:func:`recipe_result`).
    The recipe's own options beside the ``RunConfig``'s are recorded in ``run.json``."""
    from constrained_rec.training.train import train

    def adapter(run) -> Adapter:
        validation = run.loaded.splits["validation"].select(range(settings.eval_samples))
        tick, cpu_tick = time.perf_counter(), time.process_time()
        result = train(run.model, run.tokenizer, run.loaded.splits["train"], run.config.train_config(run.trie.fingerprint()),
                       eval_dataset=validation, output_dir=run.output_dir, resume=True, collab=run.assisted)
        run.timings.update(train_s=time.perf_counter() - tick, train_cpu=time.process_time() - cpu_tick)
        return Adapter(result.model, run.output_dir, {"validation_samples": len(validation)}, run.assisted, result)

    identity = {"template": recipe.template, "strip_year": recipe.strip_year, "history_dropout": recipe.history_dropout,
                "validation_samples": settings.eval_samples, "eval_users": settings.users}
    return TrainingPolicy(data=lambda run: _recipe_data(recipe, settings, run), adapter=adapter,
                          assistant=lambda run: _collab_tokens(recipe, run), finish=lambda run: recipe_result(recipe, settings, run),
                          identity=identity)


def _recipe_data(recipe: Recipe, settings: SearchSettings, run) -> LoadedData:
    """ml-100k as the recipe sees it, with its splits; the training split thinned if it asks."""
    from constrained_rec.data import SplitConfig, load_interactions, make_splits

    data = load_interactions("ml-100k")
    if recipe.strip_year:
        data = strip_years(data)
    # eval_samples draws validation and test users from their own seeded streams: the same test users for
    # every recipe and every train_samples.
    split_config = SplitConfig(train_samples=run.config.size.train_samples,
                               eval_samples=max(settings.users, settings.eval_samples),
                               max_history=recipe.max_history, template=recipe.template, seed=run.config.seed)
    splits = make_splits(data, split_config, tokenizer=run.tokenizer)
    if recipe.history_dropout:
        splits["train"] = drop_history_items(splits["train"], recipe.history_dropout, run.config.seed,
                                             data.item_noun, recipe.template, run.tokenizer)
    return LoadedData(data, split_config, splits)


def run_recipe(recipe: Recipe, settings: SearchSettings) -> dict:
    """Train the recipe's adapter and measure the user-signal control (the run skeleton's steps up to the
    adapter, :func:`~constrained_rec.experiment.skeleton.run_training`, with :func:`recipe_policy`); the JSON-ready
    result. A folder is resumed only with the same options (``run.json``)."""
    return run_training(recipe_config(recipe, settings), recipe_policy(recipe, settings))


def recipe_result(recipe: Recipe, settings: SearchSettings, run) -> dict:
    """The user-signal control on the recipe's test users (history excluded), and the JSON-ready result."""
    from constrained_rec.evaluation.evaluate import consumed_items, samples_from_split
    from constrained_rec.evaluation.user_signal import user_signal
    from constrained_rec.experiment.report import signal_verdict

    data, tokens, trained = run.loaded.data, run.assisted, run.adapter.trained
    test = run.loaded.splits["test"].select(range(settings.users))
    samples = samples_from_split(test, consumed_items(data.interactions, test))
    samples = samples if tokens is None else tokens.soft_samples(run.tokenizer, samples, test)
    tick, cpu_tick = time.perf_counter(), time.process_time()
    signal = user_signal(run.adapter.model.eval(), run.tokenizer, samples, run.trie, num_candidates=settings.candidates,
                         seed=settings.seed, item_noun=data.item_noun, template=recipe.template)
    signal_s, signal_cpu = time.perf_counter() - tick, time.process_time() - cpu_tick
    first_eval = next((r["eval_loss"] for r in trained.log if "eval_loss" in r), None)
    timings = run.timings
    return {
        "recipe": dataclasses.asdict(recipe), "command": run.config.command, "model": settings.model,
        "train_samples": run.config.size.train_samples, "steps": trained.global_step, "train_loss": trained.train_loss,
        "validation_loss": trained.best_eval_loss, "first_validation_loss": first_eval,
        "validation_samples": run.adapter.train_summary["validation_samples"], "verdict": signal_verdict(signal),
        "signal": signal,
        "seconds": {"assistant": timings["assistant_s"], "train": timings["train_s"], "signal": signal_s,
                    "total": time.perf_counter() - run.started, "train_cpu": timings["train_cpu"],
                    "signal_cpu": signal_cpu, "total_cpu": time.process_time()},
        "threads": torch.get_num_threads(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _collab_tokens(recipe: Recipe, run):
    """The recipe's collaborative tokens: ``None``, or those of SASRec fit (seeded) on the recipe's split."""
    if recipe.collab_tokens == "none":
        return None
    if recipe.collab_tokens != "items":
        raise ValueError(f"recipe {recipe.name!r}: collab_tokens must be 'none' or 'items', got {recipe.collab_tokens!r}")
    from constrained_rec.collaborative import fit_assistant
    from constrained_rec.data import SplitConfig
    from constrained_rec.training.collab_tokens import CollabTokens

    seed = run.config.seed
    split_config = SplitConfig(train_samples=run.config.size.train_samples, max_history=recipe.max_history, seed=seed)
    assistant = fit_assistant("sasrec", run.loaded.data, split_config, seed=seed,
                              log=lambda line: print(line, flush=True))
    return CollabTokens.from_assistant(assistant, run.model, seed=seed)


# -------------------------------------------------------------------------------------------------- the table
def interval_text(figure: dict, digits: int = 3) -> str:
    """``"+0.028 [+0.010, +0.049]"``: a signed figure with its interval."""
    from constrained_rec.experiment.report import interval_cells

    return " ".join(interval_cells(figure, digits, signed=True))


def table_markdown(results: list[dict]) -> str:
    """One row per recipe: settings, validation loss, AUCs and the two differences with their intervals."""
    lines = ["| recipe | LoRA | lr | samples x epochs | history | template | titles | history loss w | val loss | "
             "AUC own / other / generic | own - other AUC [95% CI] | own - generic AUC [95% CI] | wall min | "
             "train CPU min | command |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        recipe, signal = r["recipe"], r["signal"]
        targets = "all linear" if tuple(recipe["lora_target_modules"]) == ALL_LINEAR else ",".join(
            m.replace("_proj", "") for m in recipe["lora_target_modules"])
        aucs = " / ".join(f"{signal['conditions'][c]['auc']['value']:.3f}" for c in ("own", "other", "generic"))
        if recipe.get("collab_tokens", "none") != "none":
            targets += f" + {recipe['collab_tokens']} tokens"
        dropout = recipe["history_dropout"]
        history = f"{recipe['max_history']}" + (f", dropout {dropout}" if dropout else "")
        lines.append("| " + " | ".join([
            recipe["name"], f"{targets} r={recipe['lora_r']}", f"{recipe['learning_rate']:g}",
            f"{r['train_samples']} x {recipe['epochs']}", history, recipe["template"],
            "no year" if recipe["strip_year"] else "title (year)", f"{recipe.get('history_loss_weight', 0.0):g}",
            f"{r['validation_loss']:.3f}", aucs,
            interval_text(signal["differences"]["own_minus_other"]["auc"]),
            interval_text(signal["differences"]["own_minus_generic"]["auc"]),
            f"{r['seconds']['total'] / 60:.0f}", _minutes(r["seconds"].get("train_cpu")), f"`{r['command']}`"]) + " |")
    return "\n".join(lines) + "\n"


def _minutes(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.0f}"


def write_table(results_dir: str | Path) -> Path:
    """``results_dir/table.md`` from every ``*.json`` there, oldest first; its path."""
    results_dir = Path(results_dir)
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    results.sort(key=lambda r: r["finished"])
    path = results_dir / "table.md"
    path.write_text(table_markdown(results))
    return path


# -------------------------------------------------------------------------------------------------- the search
def run_search(names: Iterable[str], settings: SearchSettings, results_dir: str | Path,
               echo: Callable[[str], None] = print) -> Path:
    """Run the named recipes one after another, writing ``results_dir/NAME.json`` after each (and echoing a
    one-line summary), then ``results_dir/table.md`` over every JSON there; returns the table's path. With no
    names, only the table is rebuilt."""
    recipes = [recipe_named(name) for name in names]  # every name checked before the first one trains
    torch.set_num_threads(settings.threads)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for recipe in recipes:
        result = run_recipe(recipe, settings)
        (results_dir / f"{recipe.name}.json").write_text(json.dumps(result, indent=1))
        echo(f"{recipe.name}: val loss {result['validation_loss']:.3f}, own - other AUC "
             f"{interval_text(result['signal']['differences']['own_minus_other']['auc'])}; {result['verdict']}")
    return write_table(results_dir)
