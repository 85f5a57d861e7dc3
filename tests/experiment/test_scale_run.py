"""constrained_rec.experiment.scale_run (the GPU-scale run of experiments/gpu_run.py): its options, the pipeline steps it
shares, the assistant's candidates, the report of several controls, and the tiny run end to end on a CPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_tiny_llama
from constrained_rec.experiment.controls import assistant_proposer
from constrained_rec.experiment.scale_run import SCALE, TINY, ScaleRunConfig
from experiments.gpu_run import build_parser


def from_flags(*flags: str) -> ScaleRunConfig:
    return ScaleRunConfig(**vars(build_parser().parse_args(["--output-dir", "out", *flags])), command="cmd")


def test_the_script_defaults_are_the_configs():
    assert from_flags() == ScaleRunConfig(output_dir="out", command="cmd")
    assert from_flags("--tiny") == ScaleRunConfig(output_dir="out", tiny=True, command="cmd")
    config = ScaleRunConfig(output_dir="out")
    assert (config.epochs, config.batch_size, config.train_budget_s, config.train_samples, config.eval_users,
            config.k, config.signal_candidates, config.assistant, config.prior_weight) == (
        3, 64, 180.0, None, None, (1, 5, 10, 20), 50, "ease", 1.0)
    assert config.command == "run_at_scale(ScaleRunConfig(output_dir='out'))"


def test_tiny_sizes_only_the_options_not_given():
    tiny = from_flags("--tiny")
    assert {name: getattr(tiny, name) for name in TINY} == TINY
    given = from_flags("--tiny", "--epochs", "2", "--assistant", "none", "--train-budget-s", "600", "--k", "1,2")
    assert (given.epochs, given.assistant, given.train_budget_s, given.k) == (2, "none", 600.0, (1, 2))
    assert given.batch_size == TINY["batch_size"] and from_flags("--epochs", "2").batch_size == SCALE["batch_size"]


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs.*>= 1.*0"), ("batch_size", 2.5, "batch_size.*2.5"), ("train_samples", 0, "train_samples"),
    ("eval_users", 1, "eval_users.*pairs users.*1"), ("learning_rate", 0.0, "learning_rate.*> 0"),
    ("train_budget_s", float("nan"), "train_budget_s.*nan"), ("k", "1,x", "1,x"), ("k", (0, 5), r"\(0, 5\)"),
    ("assistant", "knn", "knn"), ("prior_weight", -1, "-1"), ("bf16", "yes", "yes"), ("device", "tpu:x", "tpu:x"),
    ("seed", 1.5, "seed.*1.5"), ("output_dir", "", "output_dir"), ("tiny", 1, "tiny")])
def test_bad_options_name_the_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        ScaleRunConfig(**{"output_dir": "out", field: value})


def test_the_script_reports_bad_options_as_usage_errors(capsys):
    from experiments.gpu_run import main

    with pytest.raises(SystemExit):
        main(["--output-dir", "out", "--eval-users", "1"])
    assert "--eval-users" in capsys.readouterr().err


def test_the_pipeline_config_keeps_every_training_window_and_user():
    from constrained_rec.data import split_positions
    from constrained_rec.experiment.steps import load_data

    run_config = ScaleRunConfig(output_dir="out", eval_users=3).pipeline_config()
    assert run_config.constrained and not run_config.baselines and run_config.assistant_name == "ease"
    loaded = load_data(run_config)
    assert len(loaded.splits["train"]) == len(split_positions(loaded.data, loaded.split_config)["train"]) > 90_000
    assert len(loaded.splits["test"]) == 3
    assert ScaleRunConfig(output_dir="out").pipeline_config().all_users
    assert load_data(ScaleRunConfig(output_dir="out", tiny=True).pipeline_config()).splits["train"].num_rows == 16


class _Loading(Exception):
    pass


def test_resuming_the_scale_run_with_other_options_is_refused_before_anything_loads(tmp_path, monkeypatch):
    """Issue 19: the scale run writes and checks run.json as run.py does (it used to resume any folder)."""
    import constrained_rec.data
    from constrained_rec.experiment.run_config import RUN_IDENTITY
    from constrained_rec.experiment.scale_run import run_at_scale

    def loading(*args, **kwargs):
        raise _Loading

    monkeypatch.setattr(constrained_rec.data, "load_interactions", loading)
    first = ScaleRunConfig(output_dir=str(tmp_path), tiny=True, train_budget_s=60)
    with pytest.raises(_Loading):  # past the checks: the options are recorded
        run_at_scale(first)
    recorded = json.loads((tmp_path / RUN_IDENTITY).read_text())
    assert recorded["train_budget_s"] == 60 and recorded["epochs"] == 1 and recorded["train_samples"] == 16
    (tmp_path / "adapter").mkdir()  # the run trained something before it stopped
    with pytest.raises(_Loading):  # the same options resume
        run_at_scale(ScaleRunConfig(output_dir=str(tmp_path), tiny=True, train_budget_s=60))
    for other, difference in ((dict(train_budget_s=30), "train_budget_s: 60 -> 30"), (dict(epochs=2), "epochs: 1 -> 2"),
                              (dict(assistant="ease"), "assistant: 'popularity' -> 'ease'")):
        with pytest.raises(ValueError, match="pass another --output-dir") as error:
            run_at_scale(ScaleRunConfig(output_dir=str(tmp_path), tiny=True, **{"train_budget_s": 60, **other}))
        assert difference in str(error.value)
    assert json.loads((tmp_path / RUN_IDENTITY).read_text()) == recorded  # the folder is untouched


def test_the_assistants_candidates_are_its_best_items_outside_the_banned_ones():
    item_ids = np.array([3, 5, 8, 13, 21])
    scores = np.log(np.array([0.1, 0.3, 0.3, 0.2, 0.1]))
    assistant = SimpleNamespace(item_ids=item_ids, item_log_probs=lambda histories: scores[None, :].repeat(
        len(histories), axis=0))
    proposer = assistant_proposer(SimpleNamespace(name="toy", assistant=assistant, histories=[[3], [5]]))
    sample = SimpleNamespace(index=1)
    assert proposer(sample, 3, frozenset()) == [5, 8, 13]  # ties by item id
    assert proposer(sample, 3, frozenset({5, 13})) == [8, 3, 21]
    assert proposer(sample, 9, frozenset({3, 5, 8, 13})) == [21]
    assert proposer.__name__ == "toy top-N"


def named_controls():
    """Two real controls of a tiny random model on a catalog of 12 one-token titles."""
    from constrained_rec import TitleTrie
    from constrained_rec.evaluation.user_signal import user_signal

    items = list(range(12))
    trie = TitleTrie.from_token_sequences([[10 + i] for i in items], eos_token_id=2, item_ids=items)
    users = [SimpleNamespace(user_id=u, prompt=[1, 10 + u, 3], target_item_id=(u + 1) % 12, exclude=frozenset({u}))
             for u in range(6)]
    model = make_tiny_llama(vocab_size=64)
    options = dict(num_candidates=3, seed=0, generic=[1, 3], num_resamples=50)
    return {"uniform": user_signal(model, None, users, trie, **options),
            "toy": user_signal(model, None, users, trie, proposer=lambda s, n, banned: [
                i for i in items if i not in banned][:n], **options)}


def test_the_report_renders_and_plots_each_named_control(tmp_path):
    from constrained_rec.experiment.report import markdown_report, write_report

    controls = named_controls()
    results = {"methods": {}, "user_signal": controls}
    write_report(tmp_path, results)
    report = (tmp_path / "report.md").read_text()
    assert report.count("## User signal") == 2
    assert "## User signal (uniform candidates)" in report and "## User signal (toy candidates)" in report
    assert (tmp_path / "user_signal.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["user_signal"].keys() == controls.keys()
    single = markdown_report({"methods": {}, "user_signal": controls["uniform"]})  # run.py's one control
    assert single.count("## User signal") == 1 and "## User signal\n" in single


@pytest.mark.slow
def test_the_tiny_run_end_to_end_on_a_cpu(tmp_path):
    """run_at_scale at the tiny size: training (with the calibrated budget), decoding, the assistant, two controls."""
    from constrained_rec.experiment.scale_run import run_at_scale

    config = ScaleRunConfig(output_dir=str(tmp_path), tiny=True, train_budget_s=600)
    results = run_at_scale(config)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results.to_dict()))
    assert metrics["command"] == config.command and metrics["dataset"]["eval_users"] == 2
    assert metrics["dataset"]["train_windows"] == 16 and metrics["train"]["steps"] >= 1
    assert metrics["train"]["seconds_per_step_calibration"] > 0
    assert list(metrics["methods"]) == ["most-popular", "popularity", "constrained", "constrained+popularity"]
    assert metrics["methods"]["constrained"]["validity_rate"] == 1.0
    assert metrics["assistant"]["prior_weight"] == 1.0 and metrics["config"]["train_budget_s"] == 600
    assert set(metrics["user_signal"]) == {"uniform", "popularity"}
    assert metrics["user_signal"]["uniform"]["users"] == 2 and metrics["user_signal"]["uniform"]["num_candidates"] == 3
    assert "proposed by popularity top-N" in metrics["user_signal"]["popularity"]["candidates"]
    report = (tmp_path / "report.md").read_text()
    assert report.count("## User signal") == 2 and "## Collaborative prior" in report
    assert (tmp_path / "user_signal.png").stat().st_size > 0 and (tmp_path / "metrics.png").is_file()
