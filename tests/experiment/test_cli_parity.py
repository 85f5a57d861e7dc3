"""Issue 19 item 5, the rest: run.py takes train.py's options (``--template``, ``--eval-samples``, ``--train-samples
all``, ``--data``) with one meaning per value, ``--template`` reaches the prompts of training and evaluation and the
run identity, and gpu_run.py / recipe_search.py read ``--config FILE.yaml`` as run.py does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from constrained_rec.experiment.run_config import RunConfig, check_run_identity, run_identity
from experiments import gpu_run as gpu_run_script
from experiments import recipe_search as recipe_script
from experiments import run as run_script

SINGLE = SimpleNamespace(is_main_process=True, num_processes=1, process_index=0, wait_for_everyone=lambda: None)
# run_identity(RunConfig(quick=True, constrained=True), name="m") on main before these options existed: a --quick
# run's run.json, which must not change (existing folders resume)
QUICK_IDENTITY = {
    'dataset': 'ml-100k', 'data_dir': None, 'model': 'm', 'items': None, 'user_column': None, 'item_column': None,
    'time_column': None, 'title_column': None, 'items_item_column': None, 'sep': None, 'split': 'auto',
    'max_history': 10, 'item_noun': None, 'adapter': None, 'train_samples': 16, 'epochs': 1, 'validation_samples': 8,
    'batch_size': 8, 'learning_rate': 0.001, 'eval_users': 10, 'ks': [1, 5, 10], 'num_beams': 10,
    'length_penalty': 0.0, 'exclude_history': True, 'decoder': 'beam', 'seed': 0, 'assistant': 'popularity',
    'prior_weight': 'auto'}


def parse_run(argv: list[str]) -> RunConfig:
    return RunConfig(**vars(run_script.build_parser().parse_args(argv)))


# ------------------------------------------------------------------------------------------ run.py's new flags
def test_the_defaults_and_their_run_identity_are_unchanged():
    quick = parse_run(["--constrained", "--quick"])
    assert (quick.template, quick.eval_samples, quick.train_samples, quick.dataset) == ("alpaca", None, None, "ml-100k")
    assert run_identity(quick, name="m") == QUICK_IDENTITY
    assert list(run_identity(quick, name="m")) == list(QUICK_IDENTITY)  # run.json's order too
    # the new flags at their defaults' values are the same run
    same = parse_run(["--constrained", "--quick", "--template", "alpaca", "--eval-samples", "8", "--data", "ml-100k"])
    assert run_identity(same, name="m") == QUICK_IDENTITY


def test_template_parses_and_enters_the_run_identity():
    config = parse_run(["--template", "chat"])
    assert config.template == "chat" and run_identity(config, name="m")["template"] == "chat"
    assert config.command_line() == "python experiments/run.py --template chat"


def test_a_bad_template_is_named(capsys):
    with pytest.raises(SystemExit):
        parse_run(["--template", "vicuna"])
    assert "argument --template: invalid choice: 'vicuna'" in capsys.readouterr().err


def test_eval_samples_sets_the_validation_samples_of_the_loss(capsys):
    assert parse_run([]).size.validation_samples == 32 and parse_run(["--quick"]).size.validation_samples == 8
    config = parse_run(["--quick", "--eval-samples", "5"])
    assert config.size.validation_samples == 5 and run_identity(config, name="m")["validation_samples"] == 5
    with pytest.raises(ValueError, match="--eval-samples 5 is a training option, but --adapter a trains nothing"):
        parse_run(["--eval-samples", "5", "--adapter", "a"])
    with pytest.raises(SystemExit):
        parse_run(["--eval-samples", "0"])
    assert "argument --eval-samples: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_eval_samples_above_the_validation_samples_drawn_is_refused():
    from constrained_rec.experiment.steps import _check_eval_samples

    splits = {"validation": list(range(10))}
    assert _check_eval_samples(parse_run(["--eval-samples", "10"]), splits) is splits
    assert _check_eval_samples(parse_run([]), splits) is splits  # the default takes what there is
    with pytest.raises(ValueError, match=r"--eval-samples 11 asks for more validation samples than the run draws "
                                         r"\(10: .*pass --eval-samples 10 or less, or more --eval-users"):
        _check_eval_samples(parse_run(["--eval-samples", "11"]), splits)


def test_train_samples_all_means_every_window_as_in_train_py(capsys):
    config = parse_run(["--train-samples", "all"])
    assert config.train_samples == config.size.train_samples == "all"
    assert run_identity(config, name="m")["train_samples"] == "all"
    assert config.command_line() == "python experiments/run.py --train-samples all"
    assert config.train_config(windows=4000).warmup_steps == 20 and config.train_config().warmup_steps == 1
    assert parse_run(["--train-samples", "0"]).train_samples == 0  # zero-shot, as before
    assert parse_run(["--train-samples", "64"]).train_samples == 64
    for bad in ("some", "-1"):
        with pytest.raises(SystemExit):
            parse_run(["--train-samples", bad])
        assert ("argument --train-samples: RunConfig.train_samples (--train-samples) must be an integer >= 0 (0: "
                f"zero-shot) or all (every training window), got '{bad}'") in capsys.readouterr().err
    for bad in ("every", -2, 1.5, True):
        with pytest.raises(ValueError, match=f"or all \\(every training window\\), got {bad!r}"):
            RunConfig(train_samples=bad)


def test_data_is_dataset_on_the_command_line_and_in_a_config_file(tmp_path, capsys):
    assert parse_run(["--data", "ml-1m"]).dataset == "ml-1m"
    path = tmp_path / "run.yaml"
    path.write_text("data: ml-1m\n")  # a train.py config's key
    assert parse_run(["--config", str(path)]).dataset == "ml-1m"
    assert parse_run(["--config", str(path), "--dataset", "ml-100k"]).dataset == "ml-100k"
    path.write_text("data: ml-1m\ndataset: ml-100k\n")
    with pytest.raises(SystemExit):
        parse_run(["--config", str(path)])
    assert "data and dataset set the same option (dataset); give one" in capsys.readouterr().err


def test_resuming_with_another_template_is_refused(tmp_path):
    check_run_identity(tmp_path, parse_run(["--quick"]), SINGLE, name="m")
    (tmp_path / "adapter").mkdir()  # a result: the folder now binds its options
    check_run_identity(tmp_path, parse_run(["--quick", "--template", "alpaca"]), SINGLE, name="m")  # the same
    with pytest.raises(ValueError, match="template.*pass another --output-dir"):
        check_run_identity(tmp_path, parse_run(["--quick", "--template", "chat"]), SINGLE, name="m")


def test_an_adapter_is_evaluated_with_the_template_it_was_trained_with(tmp_path):
    import json

    from constrained_rec.experiment.steps import check_adapter_template

    trained = tmp_path / "train-py"  # train.py's folder is the adapter and holds its run.json
    trained.mkdir()
    (trained / "run.json").write_text(json.dumps({"template": "chat", "lora_r": 8}))
    check_adapter_template(parse_run(["--template", "chat"]), trained)
    with pytest.raises(ValueError, match=r"trained on prompts of the 'chat' template .* --template alpaca; pass "
                                         r"--template chat"):
        check_adapter_template(parse_run([]), trained)
    run_folder = tmp_path / "run-py"  # run.py's adapter/ under the folder of its run.json (alpaca: no template key)
    (run_folder / "adapter").mkdir(parents=True)
    (run_folder / "run.json").write_text(json.dumps({"lora_r": 8}))
    check_adapter_template(parse_run([]), run_folder / "adapter")
    with pytest.raises(ValueError, match="'alpaca' template"):
        check_adapter_template(parse_run(["--template", "chat"]), run_folder / "adapter")
    check_adapter_template(parse_run(["--template", "chat"]), tmp_path)  # nothing recorded: nothing to check


# ------------------------------------------------------------------------------- --template reaches the prompts
@pytest.fixture(scope="module")
def tokenizer():
    from constrained_rec.model import load_tokenizer

    return load_tokenizer()


def test_template_chat_renders_every_prompt_of_training_and_evaluation(tokenizer):
    from constrained_rec.experiment.steps import evaluation_samples, load_data

    config = parse_run(["--quick", "--template", "chat", "--eval-users", "3", "--assistant", "none"])
    with pytest.raises(ValueError, match="template 'chat' renders prompts with the tokenizer's chat template"):
        load_data(config)
    loaded = load_data(config, tokenizer)
    alpaca = load_data(parse_run(["--quick", "--eval-users", "3", "--assistant", "none"]))
    assert loaded.split_config.template == "chat"  # what the user-signal control renders its generic prompt with
    for split in ("train", "validation", "test"):  # training, its loss and the prior's sweep, the evaluation
        chat_prompts, alpaca_prompts = loaded.splits[split]["prompt"], alpaca.splits[split]["prompt"]
        assert len(chat_prompts) == len(alpaca_prompts) > 0
        assert all(p.startswith("<|im_start|>") and p.endswith("<|im_start|>assistant\n") for p in chat_prompts)
        assert not any("<|im_start|>" in p for p in alpaca_prompts)
    samples = evaluation_samples(config, loaded).samples
    assert [s.prompt for s in samples] == loaded.splits["test"]["prompt"]


@pytest.mark.parametrize("template, order", [("chat", ["model", ("data", "tokenizer")]),
                                             ("alpaca", [("data", None)])])
def test_a_chat_run_loads_the_model_before_the_data(tmp_path, monkeypatch, template, order):
    """The chat template renders with the model's tokenizer; an alpaca run still checks its data first."""
    import torch

    from constrained_rec.experiment import skeleton, steps

    calls = []

    class Stop(Exception):
        pass

    def load_model(run):
        calls.append("model")
        run.tokenizer = "tokenizer"

    def load_data(config, tokenizer=None):
        calls.append(("data", tokenizer))
        raise Stop

    monkeypatch.setattr(skeleton, "_load_model", load_model)
    monkeypatch.setattr(steps, "load_data", load_data)
    config = parse_run(["--quick", "--threads", str(torch.get_num_threads()), "--template", template])
    run = skeleton.Run(config, skeleton.Policy(adapter=None), SINGLE, torch.device("cpu"), tmp_path, "m")
    with pytest.raises(Stop):
        skeleton._load(run)
    assert calls == order


# ------------------------------------------------------------------ --config on gpu_run.py and recipe_search.py
def test_gpu_run_reads_a_config_file_and_flags_win(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nepochs: 2\nk: '1,5'\nbf16: true\nprior_weight: auto\n")
    options = vars(gpu_run_script.build_parser().parse_args(["--config", str(path), "--epochs", "3"]))
    assert (options["output_dir"], options["epochs"], options["k"], options["bf16"], options["prior_weight"]) == (
        str(tmp_path / "out"), 3, (1, 5), True, "auto")
    assert "config" not in options
    defaults = vars(gpu_run_script.build_parser().parse_args(["--output-dir", "o"]))
    assert (defaults["epochs"], defaults["bf16"], defaults["prior_weight"]) == (None, None, 1.0)


def test_recipe_search_reads_a_config_file_and_flags_win(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("recipe: [qv-r8-lr1e-3, all-r16-e3]\nusers: 50\ntable_only: true\n")
    args = recipe_script.build_parser().parse_args(["--config", str(path)])
    assert (args.recipe, args.users, args.table_only, args.candidates) == (["qv-r8-lr1e-3", "all-r16-e3"], 50, True, 10)
    args = recipe_script.build_parser().parse_args(["--config", str(path), "--recipe", "all-r16-chat", "--users", "7"])
    assert (args.recipe, args.users) == (["all-r16-chat"], 7)
    path.write_text("recipe: all-r16-chat\n")  # one name
    assert recipe_script.build_parser().parse_args(["--config", str(path)]).recipe == ["all-r16-chat"]


@pytest.mark.parametrize("script, text, message, known", [
    (gpu_run_script, "epoch: 2\n", "unknown key 'epoch'; did you mean 'epochs'?", "Known keys: output_dir, model"),
    (gpu_run_script, "bf16: maybe\n", "bf16 must be bool", None),
    (recipe_script, "user: 5\n", "unknown key 'user'; did you mean 'users'?", "Known keys: recipe, list"),
    (recipe_script, "recipe: [qv-r8]\n", "recipe: 'qv-r8' is not one of ['qv-r8-lr1e-3'", None),
    (recipe_script, "recipe: {a: 1}\n", "recipe must be a name or a non-empty list of names", None),
])
def test_gpu_run_and_recipe_search_name_a_bad_key(tmp_path, capsys, script, text, message, known):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(["--config", str(path)])
    error = capsys.readouterr().err
    assert message in error and str(path) in error
    if known:
        assert known in error
