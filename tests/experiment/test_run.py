"""The main job end to end (constrained_rec.experiment.pipeline, the body of experiments/run.py): a tiny random Llama with
the real tokenizer on real ml-100k, the --quick path."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, make_tiny_llama
from constrained_rec.evaluation import recommenders
from constrained_rec.experiment.pipeline import run as run_pipeline
from constrained_rec.experiment.run_config import RunConfig

# a real slice of ml-100k: few training samples and users, small K, so the tiny model runs in seconds
# (without an assistant: today's methods; the assistant methods have their own run below)
SMALL = dict(quick=True, train_samples=16, eval_users=6, k=(1, 3), eval_batch_size=2, threads=1, assistant="none")


class Runner:
    """``run.main(options)`` as the tests wrote it before: keyword options of :class:`RunConfig`."""

    @staticmethod
    def main(**options) -> dict:
        return run_pipeline(RunConfig(**options))


@pytest.fixture(scope="module")
def run():
    return Runner()


@pytest.fixture(scope="module")
def full_run(run, tiny_model_dir, tmp_path_factory):
    """One uninterrupted run with every baseline; its folder and results."""
    folder = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONSTRAINED_REC_CACHE", str(folder / "cache"))
        results = run.main(constrained=True, baselines=True, model=str(tiny_model_dir), **SMALL,
                           output_dir=str(folder / "out"))
    return folder / "out", results


def read_predictions(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_run_writes_every_file_and_every_method(full_run):
    folder, results = full_run
    for name in ("metrics.json", "predictions.jsonl", "report.md", "metrics.png", "adapter/adapter_config.json"):
        assert (folder / name).is_file(), name
    assert set(results["methods"]) == {"most-popular", "constrained", "unconstrained-exact", "unconstrained-l2",
                                       "zero-shot-constrained"}
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["methods"] == results["methods"]
    assert saved["config"]["ks"] == [1, 3] and saved["config"]["length_penalty"] == 0.0 and saved["seed"] == 0
    assert saved["versions"]["torch"] and saved["dataset"]["name"] == "ml-100k"
    report = (folder / "report.md").read_text()
    assert all(f"## {method}" in report for method in results["methods"])
    # the user-signal control is on by default: 6 users, 5 candidates each, in metrics.json and report.md
    assert saved["user_signal"]["users"] == 6 and saved["user_signal"]["num_candidates"] == 5
    assert "## User signal" in report and saved["assistant"] is None


@pytest.fixture(scope="module")
def assisted_run(run, tiny_model_dir, tmp_path_factory):
    """--assistant popularity with --prior-weight auto, the search error on 2 users and the control."""
    folder = tmp_path_factory.mktemp("assisted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONSTRAINED_REC_CACHE", str(folder / "cache"))
        results = run.main(constrained=True, model=str(tiny_model_dir), **{**SMALL, "assistant": "popularity"},
                           output_dir=str(folder / "out"))
    return folder / "out", results


def test_assistant_run_lists_the_four_methods_side_by_side(assisted_run):
    folder, results = assisted_run
    assert list(results["methods"]) == ["most-popular", "popularity", "constrained", "constrained+popularity"]
    assert all(figures["users"] == 6 for figures in results["methods"].values())
    assert (folder / "assistant" / "assistant.json").is_file() and (folder / "assistant" / "prior_weight.json").is_file()
    saved = json.loads((folder / "metrics.json").read_text())
    assistant = saved["assistant"]
    sweep = assistant["prior_weight_sweep"]
    assert assistant["name"] == "popularity" and assistant["prior_weight_option"] == "auto"
    assert len(sweep["grid"]) == len(sweep["validation_ndcg@10"]) and sweep["users"] == 6
    best = max(sweep["validation_ndcg@10"])
    report = (folder / "report.md").read_text()
    if sweep["assistant_ndcg@10"]["value"] >= best:  # the assistant alone wins: LM + prior falls back to it
        assert sweep["fallback"] and assistant["falls_back"] and assistant["prior_weight"] is None
        assert assistant["search_error"] is None and "LM + prior falls back to the assistant" in report
        by_method = {}
        for record in read_predictions(folder):
            by_method.setdefault(record["method"], {})[record["sample"]] = record["item_ids"]
        assert by_method["constrained+popularity"] == by_method["popularity"]
    else:
        assert assistant["prior_weight"] == sweep["grid"][sweep["validation_ndcg@10"].index(best)]
        error = assistant["search_error"]
        assert error["users"] == 2 and 0.0 <= error["overlap@3"] <= 1.0 and len(error["per_user"]) == 2
        assert "Search error of constrained+popularity" in report
    assert saved["user_signal"]["users"] == 6
    # the paired comparisons: LM + prior against the assistant alone, the LM alone against most-popular
    assert [(c["a"], c["b"]) for c in saved["paired"]] == [("constrained+popularity", "popularity"),
                                                           ("constrained", "most-popular")]
    assert all(c["users"] == 6 and c["wins"] + c["losses"] + c["ties"] == 6 for c in saved["paired"])
    for section in ("## Collaborative prior", "validation NDCG@10", "popularity alone", "## Paired comparisons",
                    "| constrained+popularity - popularity | 6 |", "## User signal", "## constrained+popularity"):
        assert section in report, section
    for record in read_predictions(folder):  # history excluded for the assistant and LM + prior too
        if record["method"] in ("popularity", "constrained+popularity"):
            assert len(record["item_ids"]) == 3


def test_resuming_with_another_assistant_is_refused(run, tiny_model_dir, assisted_run):
    folder, _ = assisted_run
    with pytest.raises(ValueError, match=r"assistant: 'popularity' -> 'ease'"):
        run.main(constrained=True, model=str(tiny_model_dir), **{**SMALL, "assistant": "ease"}, output_dir=str(folder))
    with pytest.raises(ValueError, match=r"prior_weight: 'auto' -> 2.0"):
        run.main(constrained=True, model=str(tiny_model_dir), **{**SMALL, "assistant": "popularity"}, prior_weight=2,
                 output_dir=str(folder))


@pytest.mark.parametrize("decoder, lookahead", [("beam", "max"), ("exact", "sum")])
def test_the_prior_lookahead_reaches_every_search_of_lm_plus_prior(run, tiny_model_dir, tmp_path, monkeypatch, decoder,
                                                                  lookahead):
    """Issue 21 item 4: --prior-lookahead reaches recommend() wherever the run decodes LM + prior (the method and the
    search-error check's beam search), the LM alone keeps its decoder's default, and metrics.json, report.md and
    run.json record it; --decoder exact decodes every constrained method by exact search and counts its unproven
    users."""
    import constrained_rec.decoding.recommend as decode

    monkeypatch.setattr(recommenders, "EXACT_NODE_BUDGET", 100)  # a random model's top-K is costly to prove
    calls, original = [], decode.recommend

    def spy(*args, **options):
        calls.append((options.get("mode", "beam"), options.get("item_log_prior") is not None,
                       options.get("prior_lookahead")))
        return original(*args, **options)

    monkeypatch.setattr(decode, "recommend", spy)
    monkeypatch.setenv("CONSTRAINED_REC_CACHE", str(tmp_path / "cache"))
    results = run.main(constrained=True, model=str(tiny_model_dir), **{**SMALL, "assistant": "popularity",
                       "train_samples": 0, "eval_users": 4}, prior_weight=4.0, prior_lookahead=lookahead,
                       decoder=decoder, user_signal=False, output_dir=str(tmp_path / "out"))
    with_prior = {(mode, look) for mode, prior, look in calls if prior}
    assert with_prior == {(decoder, lookahead), ("exact", None)} if decoder == "beam" else {("exact", lookahead)}
    assert {(mode, look) for mode, prior, look in calls if not prior} == {(decoder, None)}  # the LM alone
    assert results["assistant"]["prior_lookahead"] == lookahead == results["assistant"]["prior_lookahead_option"]
    assert results["assistant"]["search_error"]["prior_lookahead"] == lookahead
    assert json.loads((tmp_path / "out" / "run.json").read_text()).get("prior_lookahead") == (
        None if lookahead == "sum" else lookahead)
    assert f"prior lookahead {lookahead}" in (tmp_path / "out" / "report.md").read_text()
    for method in ("constrained", "constrained+popularity"):
        figures = results["methods"][method]
        assert ("budget_exhausted" in figures) == (decoder == "exact")
        if decoder == "exact":  # the count is the records' own
            records = [r for r in read_predictions(tmp_path / "out") if r["method"] == method]
            assert figures["budget_exhausted"] == sum(r["budget_exhausted"] for r in records)
            assert all(r["proven"] == 3 for r in records if not r["budget_exhausted"])
            nodes = [r["nodes_expanded"] for r in records]
            assert figures["nodes_expanded"] == {"mean": np.mean(nodes), "median": np.median(nodes), "max": max(nodes)}
            assert (f"| prefixes (nodes) exact search expanded per user: mean, median (max) | {np.mean(nodes):.1f}, "
                    f"{np.median(nodes):.1f} ({max(nodes)}) |") in (tmp_path / "out" / "report.md").read_text()
        else:
            assert "nodes_expanded" not in figures


def test_metrics_recomputed_from_predictions_match_metrics_json(full_run):
    folder, results = full_run
    records = read_predictions(folder)
    for method, figures in results["methods"].items():
        rows = [r for r in records if r["method"] == method]
        assert figures["users"] == len(rows) == 6
        for k in (1, 3):
            hits = [r["target_item_id"] in r["item_ids"][:k] for r in rows]
            gains = [1 / math.log2(r["item_ids"][:k].index(r["target_item_id"]) + 2) if hit else 0.0
                     for r, hit in zip(rows, hits)]
            assert figures[f"hr@{k}"]["value"] == pytest.approx(sum(hits) / len(rows))
            assert figures[f"ndcg@{k}"]["value"] == pytest.approx(sum(gains) / len(rows))
        distinct = {i for r in rows for i in r["item_ids"][:3]}  # K stops at 3: coverage of the top-3
        assert figures["coverage@3"] == pytest.approx(len(distinct) / results["dataset"]["items"])


def test_constrained_outputs_are_all_valid_catalog_items_outside_the_history(full_run):
    from constrained_rec.data import load_interactions

    folder, results = full_run
    assert results["methods"]["constrained"]["validity_rate"] == 1.0
    assert results["methods"]["zero-shot-constrained"]["validity_rate"] == 1.0
    data = load_interactions("ml-100k")
    consumed = data.interactions.groupby("user_id")["item_id"].apply(list).to_dict()
    for record in read_predictions(folder):
        if record["method"] == "constrained":
            assert len(record["item_ids"]) == 3
            assert all(data.titles[i] == t for i, t in zip(record["item_ids"], record["titles"]))
            # the history is every interaction before the test one, which is the user's last
            assert not set(record["item_ids"]) & set(consumed[record["user_id"]][:-1])


def test_interrupted_run_resumes_without_retraining_or_redoing_users(run, tiny_model_dir, full_run, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("CONSTRAINED_REC_CACHE", str(tmp_path / "cache"))
    args = dict(constrained=True, model=str(tiny_model_dir), **SMALL, output_dir=str(tmp_path / "out"))
    calls = []
    original = recommenders.ConstrainedRecommender.__call__

    def interrupted_after_one_batch(self, samples):
        if calls:
            raise KeyboardInterrupt
        calls.extend(s.index for s in samples)
        return original(self, samples)

    monkeypatch.setattr(recommenders.ConstrainedRecommender, "__call__", interrupted_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        run.main(**args)
    assert calls == [0, 1]

    def must_not_train(*a, **k):
        raise AssertionError("the finished adapter was trained again")

    import constrained_rec.training.train

    monkeypatch.setattr(constrained_rec.training.train, "train", must_not_train)
    calls.clear()
    monkeypatch.setattr(recommenders.ConstrainedRecommender, "__call__", lambda self, samples: (
        calls.extend(s.index for s in samples), original(self, samples))[1])
    results = run.main(**args)
    assert calls == [2, 3, 4, 5]
    resumed = [r for r in read_predictions(tmp_path / "out")]
    uninterrupted = [r for r in read_predictions(full_run[0]) if r["method"] == "constrained"]
    assert [r["item_ids"] for r in resumed] == [r["item_ids"] for r in uninterrupted]  # seeded: the same run
    assert results["methods"]["constrained"]["hr@3"] == full_run[1]["methods"]["constrained"]["hr@3"]


def test_resuming_with_other_training_options_is_refused_before_anything_loads(run, tiny_model_dir, full_run):
    """Issue 10 item 3: a --quick run's adapter must not be reused by a run with other training options."""
    folder = full_run[0]

    def results():  # run.lock records who last held the folder: not a result
        return {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.name != "run.lock"}

    before = results()
    with pytest.raises(ValueError, match=r"epochs: 1 -> 3; learning_rate: 0.001 -> 0.5; train_samples: 16 -> 128\)"):
        run.main(constrained=True, baselines=True, model=str(tiny_model_dir), **{**SMALL, "train_samples": 128,
                 "epochs": 3}, learning_rate=0.5, output_dir=str(folder))
    assert results() == before


def test_zero_training_samples_evaluate_the_base_model(run, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTRAINED_REC_CACHE", str(tmp_path / "cache"))
    results = run.main(constrained=True, model=str(tiny_model_dir), **{**SMALL, "train_samples": 0},
                       user_signal=False, output_dir=str(tmp_path / "out"))
    assert results["train"] is None and results["adapter"] is None
    assert "user_signal" not in results and "## User signal" not in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "adapter").exists()
    assert results["methods"]["constrained"]["validity_rate"] == 1.0


def test_a_trained_adapter_is_evaluated_as_trained(run, full_run, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTRAINED_REC_CACHE", str(tmp_path / "cache"))
    # --model is left out: the adapter names its base model
    results = run.main(constrained=True, **SMALL, adapter=str(full_run[0] / "adapter"),
                       output_dir=str(tmp_path / "out"))
    assert results["train"]["train_samples"] == 16
    again = [r["item_ids"] for r in read_predictions(tmp_path / "out")]
    assert again == [r["item_ids"] for r in read_predictions(full_run[0]) if r["method"] == "constrained"]


def test_adapter_for_another_catalog_is_refused(run, tiny_model_dir, full_run, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(full_run[0] / "adapter", adapter)
    config = json.loads((adapter / "train_config.json").read_text())
    config["catalog_fingerprint"] = "0123456789abcdef"
    (adapter / "train_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trained for another catalog or tokenizer .catalog fingerprint 0123456789abcdef"):
        run.main(constrained=True, model=str(tiny_model_dir), **SMALL, adapter=str(adapter),
                 output_dir=str(tmp_path / "out"))


def test_bad_names_and_k_are_clear_errors(run, tiny_model_dir, tmp_path):
    out = dict(output_dir=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="'ml-5k' is neither a known data set name"):
        run.main(constrained=True, dataset="ml-5k", **SMALL, **out)
    with pytest.raises(FileNotFoundError, match="cannot load the model 'no-such-model'"):
        run.main(constrained=True, model="no-such-model", **SMALL, **{"output_dir": str(tmp_path / "out2")})
    with pytest.raises(ValueError, match="K = 5000 is larger than the catalog of ml-100k"):
        run.main(constrained=True, model=str(tiny_model_dir), quick=True, k=(1, 5000), output_dir=str(tmp_path / "o3"))
    with pytest.raises(ValueError, match=r"--k\) must be positive integers"):
        RunConfig(constrained=True, k=(0, 5))


def test_script_keeps_its_flags_and_reports_bad_ones():
    """experiments/run.py is argparse plus one call: its flags still parse, a bad --k is a usage error."""
    script = [sys.executable, str(REPO_ROOT / "experiments" / "run.py")]
    usage = subprocess.run([*script, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--constrained", "--dataset", "--data-dir", "--model", "--train-samples", "--epochs", "--batch-size",
                 "--learning-rate", "--history-loss-weight", "--adapter", "--eval-users", "--all-users", "--k", "--num-beams",
                 "--length-penalty", "--exclude-history", "--baselines", "--eval-batch-size", "--decoder", "--threads",
                 "--quick", "--seed", "--device", "--output-dir", "--assistant", "--prior-weight", "--lm-alone",
                 "--search-error-users", "--user-signal", "--signal-candidates"):
        assert flag in usage, flag
    for flags, message in ((["--assistant", "foo"], "invalid choice: 'foo'"),
                           (["--prior-weight", "-1"], "--prior-weight takes a number >= 0 or 'auto', got '-1'"),
                           (["--prior-weight", "abc"], "--prior-weight takes a number >= 0 or 'auto', got 'abc'")):
        bad = subprocess.run([*script, "--constrained", *flags], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    bad = subprocess.run([*script, "--constrained", "--k", "0,5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--k takes comma-separated positive integers like 1,5,10,20, got '0,5'" in bad.stderr


class _ReachedTraining(Exception):
    pass


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prompts_past_the_models_positions_are_checked_before_training(run, tmp_path, monkeypatch, kind):
    """ml-100k prompts run to about 200 tokens: a 64-position GPT-2 failed with a bare IndexError in training or
    decoding, a 64-position Llama ran on without a word. Both are caught before training starts."""
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel

    import constrained_rec.experiment.pipeline
    from constrained_rec.model import load_tokenizer

    def reached(*args, **kwargs):
        raise _ReachedTraining

    folder = tmp_path / kind
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                           bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        model = make_tiny_llama(vocab_size=49152, max_position_embeddings=64)
    model.save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    monkeypatch.setattr(constrained_rec.experiment.pipeline, "prepare_adapter", reached)
    message = r"the run's prompts \(the longest has \d+ tokens\) .*: \d+ positions, .* max_position_embeddings=64"
    options = dict(constrained=True, model=str(folder), **SMALL, output_dir=str(tmp_path / "out"))
    if kind == "gpt2":
        with pytest.raises(ValueError, match=message + ", the end of its learned position embeddings"):
            run.main(**options)
        return
    with warnings.catch_warnings(record=True) as caught, pytest.raises(_ReachedTraining):
        warnings.simplefilter("always")
        run.main(**options)
    assert any(re.search(message + ": positions past 64 were never trained", str(w.message)) for w in caught)
