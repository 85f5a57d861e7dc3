"""conf/user-signal.yaml trains run.py's adapter as the recipe it names (experiments/RECIPES.md)."""
import dataclasses
from pathlib import Path

from constrained_rec.experiment.recipes import RECIPES, SearchSettings, recipe_config
from constrained_rec.experiment.run_config import RunConfig
from experiments import run as run_script

ROOT = Path(__file__).resolve().parents[2]


def _run_config(argv):
    return RunConfig(**vars(run_script.build_parser().parse_args(argv)))


def _training(config):
    # Where the adapter is written and how often it is checkpointed do not change what is trained.
    train = dataclasses.asdict(config.train_config("fingerprint"))
    for name in ("output_dir", "checkpoint_every"):
        train.pop(name, None)
    return train


def test_the_user_signal_preset_trains_as_its_recipe():
    preset = _run_config(["--constrained", "--config", str(ROOT / "conf" / "user-signal.yaml")])
    recipe = recipe_config(RECIPES["all-r16-lr1e-3"], SearchSettings())
    assert preset.train_samples == recipe.train_samples == 512
    assert _training(preset) == _training(recipe)


def test_the_defaults_train_otherwise():
    """The comparison above can fail: the defaults differ from the recipe in what is trained."""
    defaults = _run_config(["--constrained"])
    recipe = recipe_config(RECIPES["all-r16-lr1e-3"], SearchSettings())
    assert _training(defaults) != _training(recipe)


def test_flags_win_over_the_preset():
    preset = _run_config(["--constrained", "--config", str(ROOT / "conf" / "user-signal.yaml"), "--lora-r", "8"])
    assert preset.lora_r == 8 and preset.lora_alpha == 32

