"""experiments/recipe_search.py end to end on a tiny random model (seconds), and its thin data transforms."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import REPO_ROOT, make_tiny_llama


def load_script():
    spec = importlib.util.spec_from_file_location("recipe_search", REPO_ROOT / "experiments" / "recipe_search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through the module
    spec.loader.exec_module(module)
    return module


def test_strip_years_removes_only_a_trailing_year():
    from constrained_rec.data import InteractionData
    import pandas as pd

    recipes = load_script()
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [7, 8], "timestamp": [1, 2]})
    data = InteractionData("x", frame, {7: "Heat (1995)", 8: "1984 (1956)"}, item_noun="movies")
    assert recipes.strip_years(data).titles == {7: "Heat", 8: "1984"}
    assert data.titles[7] == "Heat (1995)"


def test_one_recipe_end_to_end_on_a_tiny_model(tmp_path):
    from constrained_rec.model import load_tokenizer

    recipes = load_script()
    model_dir = tmp_path / "tiny"
    make_tiny_llama(vocab_size=49152, seed=0).save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    results = tmp_path / "results"
    recipes.main(["--recipe", "all-r16-hdrop", "--train-samples", "8", "--users", "3", "--candidates", "2",
                  "--eval-samples", "3", "--model", str(model_dir), "--output-dir", str(tmp_path / "runs"),
                  "--results", str(results)])
    result = json.loads((results / "all-r16-hdrop.json").read_text())
    assert result["steps"] == 1 and result["signal"]["users"] == 3
    assert "--train-samples 8" in result["command"] and "--recipe all-r16-hdrop" in result["command"]
    table = (results / "table.md").read_text()
    assert "all-r16-hdrop" in table and "dropout 0.3" in table


def test_unknown_recipe_is_named():
    with pytest.raises(SystemExit):
        load_script().parse_args(["--recipe", "nope"])
