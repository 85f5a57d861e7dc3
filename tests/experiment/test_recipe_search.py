"""constrained_rec.experiment.recipes end to end on a tiny random model (seconds), its data transforms, table and settings;
experiments/recipe_search.py's parser."""

from __future__ import annotations

import json

import pytest

from conftest import make_tiny_llama
from constrained_rec.experiment.recipes import (
    RECIPES,
    SearchSettings,
    drop_history_items,
    recipe_command,
    recipe_named,
    run_search,
    strip_years,
    table_markdown,
)
from experiments.recipe_search import build_parser, main


def test_strip_years_removes_only_a_trailing_year():
    import pandas as pd

    from constrained_rec.data import InteractionData

    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [7, 8], "timestamp": [1, 2]})
    data = InteractionData("x", frame, {7: "Heat (1995)", 8: "1984 (1956)"}, item_noun="movies")
    assert strip_years(data).titles == {7: "Heat", 8: "1984"}
    assert data.titles[7] == "Heat (1995)"


def test_history_dropout_keeps_at_least_one_title_and_rerenders_the_prompt():
    import datasets

    from constrained_rec.prompts import build_prompt

    titles = [[f"t{i}" for i in range(5)], ["only"]] * 10
    item_ids = [list(range(len(t))) for t in titles]
    split = datasets.Dataset.from_dict({"history_titles": titles, "history_item_ids": item_ids,
                                        "prompt": ["stale"] * len(titles)})
    thinned = drop_history_items(split, 0.9, seed=0, item_noun="movies", template="alpaca", tokenizer=None)
    kept = [len(row["history_titles"]) for row in thinned]
    assert all(k >= 1 for k in kept) and sum(kept) < sum(map(len, titles))
    for row in thinned:
        assert set(row["history_titles"]) <= {f"t{i}" for i in range(5)} | {"only"}
        assert row["history_item_ids"] == [int(t[1:]) if t != "only" else 0 for t in row["history_titles"]]
        assert row["prompt"] == build_prompt(row["history_titles"], "movies", "alpaca", None)
    with pytest.raises(ValueError, match="history_dropout must be in"):
        drop_history_items(split, 1.0, seed=0, item_noun="movies", template="alpaca", tokenizer=None)


def test_settings_and_names_are_checked():
    with pytest.raises(ValueError, match="--users must be at least 2, got 1"):
        SearchSettings(users=1)
    with pytest.raises(ValueError, match="--train-samples must be at least 1"):
        SearchSettings(train_samples=0)
    with pytest.raises(ValueError, match="unknown recipe 'nope'; known:"):
        recipe_named("nope")
    with pytest.raises(ValueError, match="unknown recipe"):
        run_search(["nope"], SearchSettings(), "unused")  # checked before anything is written


def test_the_command_names_only_options_off_their_defaults():
    recipe = RECIPES["all-r16-lr1e-3"]
    assert recipe_command(recipe, SearchSettings()) == "python experiments/recipe_search.py --recipe all-r16-lr1e-3"
    assert recipe_command(recipe, SearchSettings(users=50, train_samples=8, model="a b")).endswith(
        "--recipe all-r16-lr1e-3 --users 50 --train-samples 8 --model 'a b'")
    # --seed moves the split, the training and the control: a command without it would rerun seed 0.
    assert recipe_command(recipe, SearchSettings(seed=1)).endswith("--recipe all-r16-lr1e-3 --seed 1")


def _run_on_a_tiny_model(tmp_path, recipe: str) -> dict:
    """``recipe_search.py --recipe RECIPE`` on 8 samples and 3 users of a tiny random model; its result JSON."""
    from constrained_rec.model import load_tokenizer

    model_dir = tmp_path / "tiny"
    make_tiny_llama(vocab_size=49152, seed=0).save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    main(["--recipe", recipe, "--train-samples", "8", "--users", "3", "--candidates", "2",
          "--eval-samples", "3", "--model", str(model_dir), "--output-dir", str(tmp_path / "runs"),
          "--results", str(tmp_path / "results")])
    return json.loads((tmp_path / "results" / f"{recipe}.json").read_text())


def test_one_recipe_end_to_end_on_a_tiny_model(tmp_path, capsys):
    results = tmp_path / "results"
    result = _run_on_a_tiny_model(tmp_path, "all-r16-hdrop")
    assert result["steps"] == 1 and result["signal"]["users"] == 3
    assert "--train-samples 8" in result["command"] and "--recipe all-r16-hdrop" in result["command"]
    table = (results / "table.md").read_text()
    assert "all-r16-hdrop" in table and "dropout 0.3" in table
    assert table_markdown([result]) == table
    printed = capsys.readouterr().out
    assert printed.startswith("all-r16-hdrop: val loss ") and table in printed
    folder = tmp_path / "runs" / "all-r16-hdrop"  # the adapter, and run.json beside it
    identity = json.loads((folder / "run.json").read_text())
    assert (identity["history_dropout"], identity["lora_r"], identity["eval_users"]) == (0.3, 16, 3)
    given = {"--users": "3", "--candidates": "2", "--eval-samples": "3", "--train-samples": "8",
             "--model": str(tmp_path / "tiny"), "--output-dir": str(tmp_path / "runs"), "--results": str(results)}
    for flag, value, named in (("--users", "4", "eval_users"), ("--eval-samples", "4", "validation_samples"),
                               ("--train-samples", "9", "train_samples")):
        argv = [word for pair in {**given, flag: value}.items() for word in pair]
        with pytest.raises(ValueError, match=f"{named}.*pass another --output-dir"):  # resuming with other options
            main(["--recipe", "all-r16-hdrop", *argv])


@pytest.mark.parametrize("name", ["qv-r8-lr1e-3", "all-r16-hloss1-e3", "all-r16-items"])
def test_a_recipe_trains_as_it_did_before_the_run_skeleton(name):
    """recipe_config(...).train_config is the TrainConfig run_recipe built by hand before it ran through the skeleton."""
    from constrained_rec.experiment.recipes import recipe_config
    from constrained_rec.training.train import TrainConfig

    recipe, settings = RECIPES[name], SearchSettings(seed=3, train_samples=640)
    before = TrainConfig(lora_r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                         lora_target_modules=recipe.lora_target_modules, learning_rate=recipe.learning_rate,
                         epochs=recipe.epochs, seed=3, catalog_fingerprint="f",
                         history_loss_weight=recipe.history_loss_weight,
                         warmup_steps=min(20, max(1, 640 // 8 // 10)), checkpoint_every=10 ** 6)
    config = recipe_config(recipe, settings)
    assert config.train_config("f") == before
    assert config.output_dir.endswith(f"recipes/{name}") and config.command == recipe_command(recipe, settings)


def test_the_parser_refuses_unknown_recipes_and_idle_runs():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--recipe", "nope"])
    with pytest.raises(SystemExit):
        main(["--users", "1", "--list"])
    with pytest.raises(SystemExit):
        main([])


def test_a_recipe_with_collab_tokens_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    import numpy as np

    import constrained_rec.collaborative as collaborative
    from constrained_rec.collaborative import SASRec, SASRecConfig
    from constrained_rec.collaborative.sasrec import SASRecNetwork

    fitted = []

    def unfitted_sasrec(name, data, split_config, seed=0, **options):  # a random SASRec instead of minutes of fitting
        config = SASRecConfig(dim=8, heads=1)
        fitted.append((name, seed))
        return SASRec(np.array(sorted(data.titles)), config, SASRecNetwork(len(data.titles), config))

    monkeypatch.setattr(collaborative, "fit_assistant", unfitted_sasrec)
    result = _run_on_a_tiny_model(tmp_path, "all-r16-items")
    assert fitted == [("sasrec", 0)] and result["recipe"]["collab_tokens"] == "items"
    assert result["steps"] == 1 and result["signal"]["users"] == 3
    assert json.loads((tmp_path / "runs" / "all-r16-items" / "collab_tokens.json").read_text())["assistant"] == "sasrec"
    assert "+ items tokens" in (tmp_path / "results" / "table.md").read_text()
