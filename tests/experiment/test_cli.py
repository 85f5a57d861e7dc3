"""The command lines of experiments/run.py, train.py, gpu_run.py and recipe_search.py, generated from RunConfig,
TrainConfig, TrainJob, ScaleRunConfig and SearchSettings:
the flags, defaults and choices they had before (taken from the hand-written parsers they replace), run.py's training
options, ``--config FILE.yaml`` (round trip, unknown and mistyped keys, flags given win) and train.py's
``--train-samples all``."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from constrained_rec.experiment.recipes import RECIPES
from constrained_rec.experiment.run_config import TRAINING_OPTIONS, RunConfig, run_identity
from constrained_rec.experiment.train_job import TrainJob, train_windows
from constrained_rec.training.config import TrainConfig
from experiments import gpu_run as gpu_run_script
from experiments import recipe_search as recipe_script
from experiments import run as run_script
from experiments import train as train_script

# flag -> (default, choices, action, nargs) of the hand-written parsers of run.py and train.py before issue 19
RUN_BEFORE = {
    '--adapter': (None, None, 'store', None),
    '--all-users': (False, None, 'store_true', 0),
    '--assistant': (None, ['none', 'popularity', 'ease', 'sasrec'], 'store', None),
    '--baselines': (False, None, 'store_true', 0),
    '--batch-size': (8, None, 'store', None),
    '--collab-tokens': ('none', ['none', 'items'], 'store', None),
    '--constrained': (False, None, 'store_true', 0),
    '--data-dir': (None, None, 'store', None),
    '--dataset': ('ml-100k', None, 'store', None),
    '--decoder': ('beam', ['beam', 'generate', 'exact'], 'store', None),  # exact: added with --prior-lookahead
    '--device': ('auto', None, 'store', None),
    '--epochs': (None, None, 'store', None),
    '--eval-batch-size': (None, None, 'store', None),
    '--eval-users': (None, None, 'store', None),
    '--exclude-history/--no-exclude-history': (True, None, 'bool', 0),
    '--history-loss-weight': (0.0, None, 'store', None),
    '--item-column': (None, None, 'store', None),
    '--item-noun': (None, ['albums', 'books', 'games', 'items', 'movies', 'products', 'songs', 'toys', 'video games'],
                    'store', None),
    '--items': (None, None, 'store', None),
    '--items-item-column': (None, None, 'store', None),
    '--k': (None, None, 'store', None),
    '--learning-rate': (0.001, None, 'store', None),
    '--length-penalty': (0.0, None, 'store', None),
    '--lm-alone/--no-lm-alone': (True, None, 'bool', 0),
    '--max-history': (10, None, 'store', None),
    '--model': (None, None, 'store', None),
    '--num-beams': (None, None, 'store', None),
    '--output-dir': (None, None, 'store', None),
    '--prior-weight': ('auto', None, 'store', None),
    '--quick': (False, None, 'store_true', 0),
    '--search-error-users': (None, None, 'store', None),
    '--seed': (0, None, 'store', None),
    '--sep': (None, None, 'store', None),
    '--signal-candidates': (5, None, 'store', None),
    '--split': ('auto', ['auto', 'leave-one-out', 'temporal', 'given'], 'store', None),
    '--threads': (None, None, 'store', None),
    '--time-column': (None, None, 'store', None),
    '--title-column': (None, None, 'store', None),
    '--train-samples': (None, None, 'store', None),
    '--user-column': (None, None, 'store', None),
    '--user-signal/--no-user-signal': (True, None, 'bool', 0),
}
TRAIN_BEFORE = {
    '--batch-size': (8, None, 'store', None),
    '--checkpoint-every': (50, None, 'store', None),
    '--data': ('ml-100k', None, 'store', None),
    '--early-stopping-patience': (None, None, 'store', None),
    '--epochs': (1, None, 'store', None),
    '--eval-every': (None, None, 'store', None),
    '--eval-samples': (200, None, 'store', None),
    '--gradient-accumulation-steps': (1, None, 'store', None),
    '--history-loss-weight': (0.0, None, 'store', None),
    '--item-column': (None, None, 'store', None),
    '--items': (None, None, 'store', None),
    '--items-item-column': (None, None, 'store', None),
    '--learning-rate': (0.0003, None, 'store', None),
    '--lora-alpha': (16, None, 'store', None),
    '--lora-dropout': (0.05, None, 'store', None),
    '--lora-r': (8, None, 'store', None),
    '--lora-target-modules': (['q_proj', 'v_proj'], None, 'store', '+'),
    '--lr-schedule': ('cosine', ['cosine', 'linear', 'constant'], 'store', None),
    '--max-steps': (None, None, 'store', None),
    '--model': ('smollm2-135m', None, 'store', None),
    '--no-resume': (False, None, 'store_true', 0),
    '--output-dir': (None, None, 'store', None),
    '--seed': (0, None, 'store', None),
    '--sep': (None, None, 'store', None),
    '--template': ('alpaca', None, 'store', None),
    '--time-column': (None, None, 'store', None),
    '--title-column': (None, None, 'store', None),
    '--train-on-inputs': (False, None, 'store_true', 0),
    '--train-samples': (1024, None, 'store', None),
    '--user-column': (None, None, 'store', None),
    '--warmup-steps': (20, None, 'store', None),
}
GPU_RUN_BEFORE = {
    '--assistant': (None, ['none', 'popularity', 'ease', 'sasrec'], 'store', None),
    '--batch-size': (None, None, 'store', None),
    '--bf16/--no-bf16': (None, None, 'bool', 0),
    '--device': ('auto', None, 'store', None),
    '--epochs': (None, None, 'store', None),
    '--eval-batch-size': (None, None, 'store', None),
    '--eval-users': (None, None, 'store', None),
    '--k': (None, None, 'store', None),
    '--learning-rate': (0.001, None, 'store', None),
    '--model': ('smollm2-135m', None, 'store', None),
    '--output-dir': (None, None, 'store', None),
    '--prior-weight': (1.0, None, 'store', None),
    '--seed': (0, None, 'store', None),
    '--signal-candidates': (None, None, 'store', None),
    '--tiny': (False, None, 'store_true', 0),
    '--train-budget-s': (None, None, 'store', None),
    '--train-samples': (None, None, 'store', None),
    '--validation-samples': (None, None, 'store', None),
}
RECIPE_SEARCH_BEFORE = {
    '--recipe': ([], list(RECIPES), 'append', None),
    '--list': (False, None, 'store_true', 0),
    '--table-only': (False, None, 'store_true', 0),
    '--train-samples': (None, None, 'store', None),
    '--users': (100, None, 'store', None),
    '--candidates': (10, None, 'store', None),
    '--eval-samples': (100, None, 'store', None),
    '--model': ('smollm2-135m', None, 'store', None),
    '--seed': (0, None, 'store', None),
    '--threads': (1, None, 'store', None),
    '--output-dir': ('runs/recipes', None, 'store', None),
    '--results': ('/work/notes/recipes', None, 'store', None),
}
KINDS = {argparse._StoreAction: "store", argparse._StoreTrueAction: "store_true", argparse._AppendAction: "append",
         argparse.BooleanOptionalAction: "bool", argparse._StoreFalseAction: "store_false"}


def flags(parser: argparse.ArgumentParser) -> dict:
    return {"/".join(action.option_strings): (action.default, list(action.choices) if action.choices else None,
                                              KINDS[type(action)], action.nargs)
            for action in parser._actions if not isinstance(action, argparse._HelpAction)}


def test_run_py_keeps_every_flag_default_and_choice_and_adds_the_training_options():
    now = flags(run_script.build_parser())
    now["--dataset"] = now.pop("--dataset/--data")  # and train.py's spelling
    assert {flag: now[flag] for flag in RUN_BEFORE} == RUN_BEFORE
    added = {"--" + name.replace("_", "-") for name in TRAINING_OPTIONS} | {"--config", "--prior-lookahead",
                                                                          "--template", "--eval-samples"}
    assert set(now) - set(RUN_BEFORE) == added


def test_run_py_takes_every_flag_of_train_py_but_no_resume():
    def spellings(parser):
        return {spelling for action in parser._actions for spelling in action.option_strings}

    assert spellings(train_script.build_parser()) - spellings(run_script.build_parser()) == {"--no-resume"}


@pytest.mark.parametrize("script, before", [(gpu_run_script, GPU_RUN_BEFORE), (recipe_script, RECIPE_SEARCH_BEFORE)])
def test_gpu_run_and_recipe_search_keep_every_flag_default_and_choice(script, before):
    assert flags(script.build_parser()) == {**before, "--config": (None, None, "store", None)}


def test_gpu_run_and_recipe_search_parse_as_before(capsys):
    gpu = vars(gpu_run_script.build_parser().parse_args(["--output-dir", "o", "--k", "1,5", "--bf16", "--epochs", "2",
                                                         "--prior-weight", "auto", "--learning-rate", "2e-3"]))
    assert (gpu["k"], gpu["bf16"], gpu["epochs"], gpu["prior_weight"], gpu["learning_rate"]) == ((1, 5), True, 2,
                                                                                                "auto", 2e-3)
    for argv, message in ((["--k", "0"], "--k takes comma-separated positive integers"), ([], "--output-dir")):
        with pytest.raises(SystemExit):
            gpu_run_script.build_parser().parse_args(argv)
        assert message in capsys.readouterr().err
    search = vars(recipe_script.build_parser().parse_args(["--recipe", "qv-r8-lr1e-3", "--recipe", "all-r16-e3",
                                                           "--train-samples", "8", "--table-only"]))
    assert (search["recipe"], search["train_samples"], search["table_only"]) == (["qv-r8-lr1e-3", "all-r16-e3"], 8,
                                                                                 True)
    assert recipe_script.build_parser().parse_args([]).recipe == []


def test_run_py_training_options_have_train_py_names_and_defaults():
    run_flags, train_flags = flags(run_script.build_parser()), flags(train_script.build_parser())
    for name in TRAINING_OPTIONS:
        flag = "--" + name.replace("_", "-")
        if name == "warmup_steps":  # run.py's default depends on the number of steps (as before)
            assert run_flags[flag][0] is None and train_flags[flag][0] == TrainConfig.warmup_steps == 20
        else:
            assert run_flags[flag] == train_flags[flag] == TRAIN_BEFORE[flag], flag


def test_train_py_keeps_every_flag_default_and_choice():
    now = flags(train_script.build_parser())
    expected = {**TRAIN_BEFORE, "--no-resume": (True, None, "store_false", 0),  # now dest resume: same meaning
                "--template": ("alpaca", ["alpaca", "chat"], "store", None)}  # a wrong name refused at the flag
    assert {flag: now[flag] for flag in TRAIN_BEFORE} == expected
    assert set(now) - set(TRAIN_BEFORE) == {"--config"}
    options = vars(train_script.build_parser().parse_args(["--output-dir", "x", "--no-resume"]))
    assert options["resume"] is False and "no_resume" not in options


def test_the_defaults_build_todays_configs():
    assert RunConfig(**vars(run_script.build_parser().parse_args([]))) == RunConfig()
    quick = RunConfig(**vars(run_script.build_parser().parse_args(["--quick"])))
    # the training run.py did before the options existed: TrainConfig's LoRA, a warm-up of a tenth of an epoch
    assert quick.train_config() == TrainConfig(epochs=1, batch_size=8, learning_rate=1e-3, warmup_steps=1)
    assert RunConfig().train_config().warmup_steps == 1 and RunConfig(train_samples=4000).train_config().warmup_steps == 20
    assert run_identity(quick, name="m") == run_identity(RunConfig(quick=True), name="m")
    assert not set(TRAINING_OPTIONS) & set(run_identity(quick, name="m"))  # folders written before still resume


def parse_run(argv: list[str]) -> RunConfig:
    return RunConfig(**vars(run_script.build_parser().parse_args(argv)))


def test_run_py_training_options_reach_training_and_the_run_identity():
    config = parse_run(["--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0.1", "--lora-target-modules",
                        "q_proj", "k_proj", "--lr-schedule", "linear", "--warmup-steps", "3", "--max-steps", "5",
                        "--checkpoint-every", "7"])
    train = config.train_config("fingerprint")
    assert (train.lora_r, train.lora_alpha, train.lora_dropout, train.lora_target_modules) == (
        16, 32, 0.1, ("q_proj", "k_proj"))
    assert (train.lr_schedule, train.warmup_steps, train.max_steps, train.checkpoint_every) == ("linear", 3, 5, 7)
    assert train.catalog_fingerprint == "fingerprint" and train.learning_rate == 1e-3
    identity = run_identity(config, name="m")
    assert {name: identity[name] for name in ("lora_r", "lora_target_modules", "warmup_steps", "max_steps")} == {
        "lora_r": 16, "lora_target_modules": ["q_proj", "k_proj"], "warmup_steps": 3, "max_steps": 5}
    assert "checkpoint_every" not in identity  # resuming is exact whatever the checkpoint interval
    assert config.command_line().endswith("--lora-r 16 --lora-alpha 32 --lora-dropout 0.1 --lora-target-modules "
                                          "q_proj k_proj --lr-schedule linear --warmup-steps 3 --max-steps 5 "
                                          "--checkpoint-every 7")


@pytest.mark.parametrize("argv, message", [
    (["--lora-r", "16", "--train-samples", "0"], "--lora-r 16 is a training option, but --train-samples 0 trains"),
    (["--lora-target-modules", "q_proj", "--adapter", "a"], "--lora-target-modules q_proj is a training option, but "
                                                            "--adapter a trains nothing"),
    (["--lora-dropout", "1.5"], r"lora_dropout \(--lora-dropout\) must be in \[0, 1\), got 1.5"),
    (["--train-on-inputs", "--history-loss-weight", "1"], "choose one"),
])
def test_run_py_training_options_are_checked(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_run(argv)


@pytest.mark.parametrize("argv, message", [
    (["--lora-r", "0"], "argument --lora-r: expected an integer >= 1, got '0'"),
    (["--lr-schedule", "step"], "invalid choice: 'step'"),
    (["--warmup-steps", "-1"], "expected an integer >= 0, got '-1'"),
])
def test_bad_training_flags_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_run(argv)
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ --config FILE.yaml
def test_a_config_file_fills_the_options_and_flags_given_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("constrained: true\nquick: true\nk: [1, 5]\nlora_r: 16\nlora_target_modules: [q_proj, k_proj]\n"
                    "prior_weight: auto\nsep: tab\nuser_signal: false\nlearning_rate: 2e-3\nthreads: 1\n")
    config = parse_run(["--config", str(path)])
    assert (config.constrained, config.quick, config.k, config.lora_r, config.lora_target_modules) == (
        True, True, (1, 5), 16, ("q_proj", "k_proj"))
    assert (config.sep, config.user_signal, config.threads, config.prior_weight) == ("\t", False, 1, "auto")
    assert config.learning_rate == 2e-3  # text is read as the flag reads it (YAML reads 2e-3 as text)
    given = parse_run(["--config", str(path), "--lora-r", "4", "--k", "1,3", "--user-signal", "--prior-weight", "2"])
    assert (given.lora_r, given.k, given.user_signal, given.prior_weight, given.lora_target_modules) == (
        4, (1, 3), True, 2.0, ("q_proj", "k_proj"))
    assert parse_run(["--config", str(path), "--threads", "1"]).threads == 1  # a flag equal to the file's: fine


def test_a_config_file_round_trips(tmp_path):
    """Every option of a config written out as YAML (with the names of the fields) reads back equal."""
    import yaml

    config = parse_run(["--constrained", "--dataset", "ml-1m", "--k", "1,5,10", "--lora-r", "16", "--lora-target-modules",
                        "q_proj", "o_proj", "--no-exclude-history", "--prior-weight", "4", "--max-steps", "9",
                        "--assistant", "ease", "--epochs", "2", "--seed", "3"])
    values = {spec.name: getattr(config, spec.name) for spec in dataclasses.fields(config) if spec.name != "command"}
    values = {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(values))
    assert parse_run(["--config", str(path)]) == config


@pytest.mark.parametrize("text, message", [
    ("lora_rank: 16\n", "unknown key 'lora_rank'; did you mean 'lora_r'?"),
    ("epoch: 2\n", "unknown key 'epoch'; did you mean 'epochs'?"),
    ("command: x\n", "unknown key 'command'"),
    ("learning_rate: fast\n", "learning_rate: could not convert string to float: 'fast'"),
    ("learning_rate: [1]\n", "learning_rate must be float, got [1] (list)"),
    ("epochs: two\n", "epochs: expected an integer >= 1, got 'two'"),
    ("lora_r: 1.5\n", "lora_r must be int, got 1.5 (float)"),
    ("quick: yes please\n", "quick must be bool"),
    ("decoder: greedy\n", "decoder must be one of ['beam', 'generate', 'exact'], got 'greedy'"),
    ("lora_target_modules: q_proj\n", "lora_target_modules must be a non-empty list of names, got 'q_proj'"),
    ("- a\n- b\n", "expected a mapping of keys to values, got a list"),
])
def test_unknown_or_mistyped_keys_are_named(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit):
        parse_run(["--config", str(path)])
    error = capsys.readouterr().err
    assert message in error and str(path) in error
    if "unknown key" in message:
        assert "Known keys: constrained, dataset" in error and "lora_r" in error


def test_a_missing_config_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_run(["--config", str(tmp_path / "none.yaml")])
    assert "none.yaml" in capsys.readouterr().err


def test_train_py_reads_a_config_file_and_flags_win(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(train_script, "train_job", lambda job: seen.setdefault("job", job) and None)
    path = tmp_path / "train.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nlora_r: 16\ntrain_samples: all\nitems: items.csv\n"
                    "lr_schedule: linear\n")
    with pytest.raises(AttributeError):  # the stand-in returns no result to print
        train_script.main(["--config", str(path), "--lr-schedule", "constant"])
    job = seen["job"]
    assert (job.output_dir, job.train_samples, job.data_options["items"]) == (str(tmp_path / "out"), None, "items.csv")
    assert (job.train.lora_r, job.train.lr_schedule, job.resume) == (16, "constant", True)


def test_train_py_still_requires_an_output_dir(capsys):
    with pytest.raises(SystemExit):
        train_script.build_parser().parse_args([])
    assert "the following arguments are required: --output-dir" in capsys.readouterr().err


# ------------------------------------------------------------------------------- one meaning per option value
def test_train_py_spells_every_window_all_and_refuses_zero(capsys):
    parser = train_script.build_parser()
    assert parser.parse_args(["--output-dir", "x", "--train-samples", "all"]).train_samples is None
    assert parser.parse_args(["--output-dir", "x", "--train-samples", "64"]).train_samples == 64
    assert parser.parse_args(["--output-dir", "x"]).train_samples == 1024
    with pytest.raises(SystemExit):
        parser.parse_args(["--output-dir", "x", "--train-samples", "0"])
    assert "pass --train-samples all for every window" in capsys.readouterr().err
    assert train_windows("all") is None and train_windows(None) is None and train_windows(5) == 5
    for bad, message in ((0, "--train-samples all"), (-2, "got -2"), ("some", "got 'some'"), (True, "got True")):
        with pytest.raises(ValueError, match=message):
            TrainJob(output_dir="x", train_samples=bad)


def test_resuming_with_other_training_options_is_refused(tmp_path):
    from types import SimpleNamespace

    from constrained_rec.experiment.run_config import check_run_identity

    single = SimpleNamespace(is_main_process=True, num_processes=1, process_index=0, wait_for_everyone=lambda: None)
    check_run_identity(tmp_path, parse_run(["--quick"]), single, name="m")
    (tmp_path / "adapter").mkdir()  # a result: the folder now binds its options
    check_run_identity(tmp_path, parse_run(["--quick", "--checkpoint-every", "5"]), single, name="m")  # speed only
    for argv, named in ((["--lora-r", "16"], "lora_r"), (["--lora-target-modules", "q_proj"], "lora_target_modules"),
                        (["--warmup-steps", "1"], "warmup_steps")):
        with pytest.raises(ValueError, match=f"{named}.*pass another --output-dir"):
            check_run_identity(tmp_path, parse_run(["--quick", *argv]), single, name="m")
