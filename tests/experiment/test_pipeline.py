"""constrained_rec.experiment.pipeline: options checked before anything loads, resume identity, the catalog trie, and sharded
(2-process) evaluation and training equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT, make_tiny_llama
from constrained_rec.experiment.pipeline import run
from constrained_rec.experiment.run_checks import resolve_device
from constrained_rec.experiment.run_config import RUN_IDENTITY, RunConfig, check_run_identity, parse_ks, run_identity

SINGLE = SimpleNamespace(is_main_process=True, num_processes=1, process_index=0, wait_for_everyone=lambda: None)


@pytest.mark.parametrize("options, message", [
    (dict(train_samples=-1), r"train_samples \(--train-samples\) must be an integer >= 0 \(0: zero-shot\) or all "
                             r"\(every training window\), got -1"),
    (dict(epochs=0), r"epochs \(--epochs\) must be an integer >= 1, got 0"),
    (dict(eval_users=2.5), r"eval_users \(--eval-users\) must be an integer >= 1, got 2.5"),
    (dict(k=(0, 5)), r"k \(--k\) must be positive integers"),
    (dict(k=(1, 20), num_beams=10), r"--num-beams 10 is smaller than the largest K = 20"),
    (dict(learning_rate=0.0), r"learning_rate \(--learning-rate\) must be a finite number > 0, got 0.0"),
    (dict(length_penalty=float("nan")), r"length_penalty \(--length-penalty\) must be a finite number, got nan"),
    (dict(decoder="sample"), r"decoder \(--decoder\) must be one of \['beam', 'generate', 'exact'\], got 'sample'"),
    # --prior-lookahead and --decoder exact
    (dict(prior_lookahead="best"), r"prior_lookahead \(--prior-lookahead\) must be one of \['sum', 'max', 'auto'\], "
                                   r"got 'best'"),
    (dict(prior_lookahead="max", assistant="none"), r"--prior-lookahead max applies to the collaborative prior, but "
                                                    r"--assistant none"),
    (dict(prior_lookahead="auto", prior_weight=4), r"--prior-lookahead auto is chosen by the validation sweep, which "
                                                   r"--prior-weight 4 skips"),
    (dict(prior_lookahead="auto", decoder="exact"), r"--prior-lookahead auto has nothing to choose with --decoder exact"),
    (dict(prior_lookahead="max", length_penalty=1.0), r"--prior-lookahead max .* --length-penalty 1.0 would turn"),
    (dict(decoder="exact", length_penalty=0.5), r"--decoder exact ranks titles by total log-probability, but "
                                                r"--length-penalty 0.5"),
    (dict(device="gpu0"), r"--device 'gpu0' is not a device; accepted: auto, cpu, cuda, cuda:N"),
    (dict(quick="yes"), r"quick must be True or False, got 'yes'"),
    (dict(model=""), r"model must be a non-empty string or None, got ''"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**options)


def test_sizes_and_ks_resolve_like_the_script_documents():
    assert RunConfig().size.train_samples == 128 and RunConfig(assistant="none").ks == (1, 5, 10, 20)
    quick = RunConfig(quick=True, epochs=2)
    assert (quick.size.train_samples, quick.size.epochs, quick.size.eval_users, quick.ks) == (16, 2, 10, (1, 5, 10))
    assert parse_ks("1,5,10") == (1, 5, 10)
    for text in ("", "1,,5", "a", "0,5", "-1"):
        with pytest.raises(ValueError, match=f"got {text!r}"):
            parse_ks(text)
    command = RunConfig(constrained=True, k=(1, 3), exclude_history=False, output_dir="out").command_line()
    assert command == "python experiments/run.py --constrained --k 1,3 --no-exclude-history --output-dir out"


def test_cuda_on_a_cpu_only_machine_fails_before_anything_loads(tmp_path, monkeypatch):
    import constrained_rec.data
    import constrained_rec.model

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded data or a model before the device was checked")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(constrained_rec.data, "load_interactions", must_not_load)
    monkeypatch.setattr(constrained_rec.model, "load_model", must_not_load)
    with pytest.raises(ValueError, match=r"--device 'cuda' asks for a CUDA GPU, but this torch .* sees none; use --device cpu"):
        run(RunConfig(constrained=True, device="cuda", output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_a_missing_gpu_index_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--device 'cuda:3': there are only 1 CUDA GPU\(s\), indices 0 to 0"):
        resolve_device("cuda:3")


def test_resuming_with_other_options_is_refused_naming_them(tmp_path):
    quick = RunConfig(constrained=True, quick=True, model="m", output_dir=str(tmp_path))
    check_run_identity(tmp_path, quick, SINGLE)
    (tmp_path / "adapter").mkdir()  # the quick run trained an adapter
    check_run_identity(tmp_path, RunConfig(constrained=True, quick=True, model="m", baselines=True, threads=1,
                                           eval_batch_size=2), SINGLE)  # speed and extra methods: same run
    other = RunConfig(constrained=True, quick=True, model="m", train_samples=128, epochs=3, learning_rate=0.5)
    with pytest.raises(ValueError) as error:
        check_run_identity(tmp_path, other, SINGLE)
    message = str(error.value)
    for difference in ("epochs: 1 -> 3", "learning_rate: 0.001 -> 0.5", "train_samples: 16 -> 128"):
        assert difference in message
    assert "eval_users" not in message and "pass another --output-dir" in message
    assert json.loads((tmp_path / RUN_IDENTITY).read_text())["train_samples"] == 16  # the folder is untouched


def test_a_folder_with_results_but_no_recorded_options_is_refused(tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ValueError, match=r"holds results \(adapter\) of a run whose options were not recorded"):
        check_run_identity(tmp_path, RunConfig(model="m"), SINGLE)


def test_a_run_that_produced_nothing_does_not_bind_the_folder(tmp_path):
    check_run_identity(tmp_path, RunConfig(model="m", dataset="ml-5k"), SINGLE)  # failed: no such data set
    check_run_identity(tmp_path, RunConfig(model="m", dataset="ml-100k"), SINGLE)
    assert json.loads((tmp_path / RUN_IDENTITY).read_text())["dataset"] == "ml-100k"


@pytest.fixture(scope="module")
def tokenizer():
    from constrained_rec.model import load_tokenizer

    return load_tokenizer()


@settings(max_examples=20, deadline=None)
@given(st.permutations([(3, "Heat (1995)"), (1, "Heat (1995)"), (7, "Casino (1995)"), (2, "Heat"), (5, "Babe")]))
def test_catalog_trie_is_the_same_whatever_the_catalog_order(tokenizer, catalog):
    from constrained_rec.experiment.catalog import catalog_trie

    trie = catalog_trie(SimpleNamespace(titles=dict(catalog)), tokenizer)
    reference = catalog_trie(SimpleNamespace(titles=dict(sorted(catalog))), tokenizer)
    assert trie.fingerprint() == reference.fingerprint()
    assert [trie.titles.title(i) for i in (1, 2, 3, 5, 7)] == [dict(catalog)[i] for i in (1, 2, 3, 5, 7)]
    for sequence in reference.sequences():  # duplicate titles list their items in the same order
        assert trie.item_ids(sequence) == reference.item_ids(sequence)


def test_accelerate_cpu_launcher_with_several_processes_is_refused(monkeypatch):
    from constrained_rec.hf import check_launcher

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="starts a single process.*torchrun --nproc_per_node N"):
        check_launcher()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun / --multi_gpu: a real group
    check_launcher()


# ------------------------------------------------------------------------------------ two processes
def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "tests" / "training"),
         os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_records(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sharded_evaluation_under_torchrun_equals_one_process(tmp_path, monkeypatch):
    """The documented scale-out: torchrun --nproc_per_node 2 experiments/run.py --adapter DIR (gloo on CPUs)."""
    from constrained_rec.model import load_tokenizer

    cache = tmp_path / "cache"
    monkeypatch.setenv("CONSTRAINED_REC_CACHE", str(cache))
    model_dir = tmp_path / "tiny"
    make_tiny_llama(vocab_size=49152, seed=0).save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    small = dict(quick=True, train_samples=16, eval_users=6, k=(1, 3), eval_batch_size=2, threads=1)
    one = run(RunConfig(constrained=True, model=str(model_dir), **small, output_dir=str(tmp_path / "one")))

    torchrun([str(REPO_ROOT / "experiments" / "run.py"), "--constrained", "--adapter", str(tmp_path / "one" / "adapter"),
              "--quick", "--train-samples", "16", "--eval-users", "6", "--k", "1,3", "--eval-batch-size", "2",
              "--threads", "1", "--output-dir", str(tmp_path / "two")], cwd=tmp_path)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["config"]["processes"] == 2 and one["config"]["processes"] == 1
    assert [r["item_ids"] for r in read_records(tmp_path / "two")] == [r["item_ids"] for r in read_records(tmp_path / "one")]
    assert [r["sample"] for r in read_records(tmp_path / "two") if r["method"] == "constrained"] == list(range(6))
    # --quick's popularity assistant: fit and weighed once (main process), every method sharded alike
    assert list(two["methods"]) == ["most-popular", "popularity", "constrained", "constrained+popularity"]
    assert two["assistant"]["prior_weight"] == one["assistant"]["prior_weight"]
    assert two["methods"]["constrained"]["hr@3"] == one["methods"]["constrained"]["hr@3"]
    assert not list((tmp_path / "two").glob("predictions.part*"))


DDP_TRAINING = """
import sys, torch
torch.set_num_threads(1)
from test_train import FAST, make_toy_tokenizer, tiny_model, toy_dataset
from constrained_rec.training.train import TrainConfig, train
config = TrainConfig(**{**FAST, "lora_dropout": 0.0}, gradient_accumulation_steps=int(sys.argv[2]), epochs=2)
result = train(tiny_model(), make_toy_tokenizer(), toy_dataset(16), config, eval_dataset=toy_dataset(6, seed=1),
               output_dir=sys.argv[1])
"""


@pytest.mark.slow
def test_data_parallel_training_equals_one_process_with_gradient_accumulation(tmp_path):
    """2 processes x 1 batch per step = 1 process x 2 accumulated batches: the same updates and validation loss."""
    from safetensors.torch import load_file
    from test_train import FAST, make_toy_tokenizer, tiny_model, toy_dataset

    from constrained_rec.training.train import TrainConfig, train

    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_TRAINING))
    torchrun([str(script), str(tmp_path / "two"), "1"], cwd=tmp_path)
    config = TrainConfig(**{**FAST, "lora_dropout": 0.0}, gradient_accumulation_steps=2, epochs=2)
    one = train(tiny_model(), make_toy_tokenizer(), toy_dataset(16), config, eval_dataset=toy_dataset(6, seed=1),
                output_dir=tmp_path / "one")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    mine = load_file(tmp_path / "one" / "adapter_model.safetensors")
    assert set(two) == set(mine) and any(torch.count_nonzero(w) for n, w in mine.items() if "lora_B" in n)
    for name, weight in mine.items():
        torch.testing.assert_close(two[name], weight, rtol=1e-5, atol=1e-6)
    saved = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert saved["global_step"] == one.global_step == 4  # 16 samples: 4 batches of 4, 2 steps per epoch
    assert saved["best_eval_loss"] == pytest.approx(one.best_eval_loss, rel=1e-5)


def test_an_adapter_from_experiments_train_passes_the_run_check(tmp_path, tokenizer):
    """experiments/train.py (train_job) and run.py build the catalog trie by one function: the adapter fits."""
    from constrained_rec.data import load_interactions
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.experiment.train_job import TrainJob, train_job
    from constrained_rec.model import check_adapter
    from constrained_rec.training.train import TrainConfig

    model_dir = tmp_path / "tiny"
    make_tiny_llama(vocab_size=49152, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    result = train_job(TrainJob(output_dir=str(tmp_path / "adapter"), model=str(model_dir), train_samples=8,
                                eval_samples=4, train=TrainConfig(max_steps=1, batch_size=4)))
    assert result.global_step == 1
    trie = catalog_trie(load_interactions("ml-100k"), tokenizer)
    assert check_adapter(tmp_path / "adapter", str(model_dir), trie)["catalog_fingerprint"] == trie.fingerprint()
    assert json.loads((tmp_path / "adapter" / "run.json").read_text())["train_samples"] == 8
    for changes, named in (({"train": TrainConfig(max_steps=1, batch_size=4, lora_r=4)}, "lora_r"),
                           ({"eval_samples": 5}, "validation_samples"), ({"template": "chat"}, "template"),
                           ({"train": TrainConfig(max_steps=1, batch_size=4, weight_decay=0.1)}, "weight_decay")):
        options = {"output_dir": str(tmp_path / "adapter"), "model": str(model_dir), "train_samples": 8,
                   "eval_samples": 4, "train": TrainConfig(max_steps=1, batch_size=4), **changes}
        with pytest.raises(ValueError, match=f"{named}.*pass another --output-dir"):  # resuming with other options
            train_job(TrainJob(**options))
    again = train_job(TrainJob(output_dir=str(tmp_path / "adapter"), model=str(model_dir), train_samples=8,
                               eval_samples=4, train=TrainConfig(max_steps=1, batch_size=4, lora_r=4), resume=False))
    assert again.global_step == 1  # --no-resume: the folder's earlier options do not bind
    assert json.loads((tmp_path / "adapter" / "run.json").read_text())["lora_r"] == 4
    with pytest.raises(ValueError, match="TrainJob.train must be a TrainConfig"):
        TrainJob(output_dir="x", train={"epochs": 1})


# ------------------------------------------------------------------------ the collaborative prior (issue 11)
@pytest.mark.parametrize("options, message", [
    (dict(assistant="foo"), r"assistant \(--assistant\) must be one of \['none', 'popularity', 'ease', 'sasrec'\], "
                            r"got 'foo'"),
    (dict(prior_weight=-1), r"--prior-weight takes a number >= 0 or 'auto', got -1"),
    (dict(prior_weight="abc"), r"--prior-weight takes a number >= 0 or 'auto', got 'abc'"),
    (dict(prior_weight=float("inf")), r"--prior-weight takes a number >= 0 or 'auto', got inf"),
    (dict(signal_candidates=0), r"signal_candidates \(--signal-candidates\) must be an integer >= 1, got 0"),
    (dict(search_error_users=-1), r"search_error_users \(--search-error-users\) must be an integer >= 0, got -1"),
    (dict(assistant="none", lm_alone=False), r"--no-lm-alone .* pass --assistant popularity, ease or sasrec"),
    # issue 17 item 12: options of the prior with no prior were silently ignored
    (dict(assistant="none", prior_weight=2), r"--prior-weight applies to the collaborative prior, but --assistant none "
                                             r"turns it off .*drop --prior-weight, or pass --assistant popularity"),
    (dict(assistant="none", search_error_users=3), r"--search-error-users applies to the collaborative prior"),
    (dict(seed=-1), r"seed \(--seed\) must be an integer >= 0 \(numpy takes no negative seed\), got -1"),
])
def test_bad_assistant_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**options)


def test_assistant_defaults_and_their_ks():
    from constrained_rec.collaborative import ASSISTANTS
    from constrained_rec.experiment.run_config import ASSISTANT_CHOICES

    assert set(ASSISTANT_CHOICES) == {"none", *ASSISTANTS}
    assert RunConfig().assistant_name == "sasrec" and RunConfig().ks == (1, 5, 10)
    assert RunConfig(quick=True).assistant_name == "popularity"
    assert RunConfig(assistant="none").ks == (1, 5, 10, 20)  # without an assistant: today's defaults
    assert RunConfig(prior_weight="2").prior_weight == 2.0
    assert RunConfig().search_error_count == 2 and RunConfig(assistant="none").search_error_count == 0
    assert RunConfig(assistant="none", search_error_users=0).search_error_count == 0  # "off" agrees with no prior
    assert RunConfig(assistant="ease", lm_alone=False, constrained=True).command_line() == (
        "python experiments/run.py --constrained --assistant ease --no-lm-alone")


def test_resuming_with_another_assistant_or_weight_is_refused(tmp_path):
    check_run_identity(tmp_path, RunConfig(model="m", assistant="sasrec"), SINGLE)
    (tmp_path / "adapter").mkdir()
    check_run_identity(tmp_path, RunConfig(model="m", assistant="sasrec", user_signal=False, lm_alone=False,
                                           search_error_users=0), SINGLE)  # controls and listing: same run
    with pytest.raises(ValueError, match=r"assistant: 'sasrec' -> 'ease'"):
        check_run_identity(tmp_path, RunConfig(model="m", assistant="ease"), SINGLE)
    with pytest.raises(ValueError, match=r"prior_weight: 'auto' -> 0.5"):
        check_run_identity(tmp_path, RunConfig(model="m", assistant="sasrec", prior_weight=0.5), SINGLE)


def test_resuming_with_another_prior_lookahead_or_decoder_is_refused(tmp_path):
    """Issue 21 item 4: the lookahead (where not the default "sum") is part of run.json."""
    check_run_identity(tmp_path, RunConfig(model="m", prior_lookahead="auto"), SINGLE)
    (tmp_path / "adapter").mkdir()
    check_run_identity(tmp_path, RunConfig(model="m", prior_lookahead="auto"), SINGLE)  # the same run
    with pytest.raises(ValueError, match=r"prior_lookahead: 'auto' -> 'max'"):
        check_run_identity(tmp_path, RunConfig(model="m", prior_lookahead="max"), SINGLE)
    with pytest.raises(ValueError, match=r"prior_lookahead: 'auto' -> None"):  # the default, sum: not recorded
        check_run_identity(tmp_path, RunConfig(model="m"), SINGLE)
    assert "prior_lookahead" not in run_identity(RunConfig(model="m", prior_lookahead="sum"))  # old folders resume
    exact = run_identity(RunConfig(model="m", decoder="exact"))  # exact search's default bound
    assert exact["prior_lookahead"] == "max" and exact["decoder"] == "exact"
    assert RunConfig(prior_lookahead="max").command_line() == "python experiments/run.py --prior-lookahead max"


class FixedAssistant:
    """An assistant whose log-probabilities are a fixed table per history length (columns: sorted item ids)."""

    name = "fixed"

    def __init__(self, item_ids, table):
        self.item_ids, self.table = np.asarray(item_ids), np.asarray(table, dtype=np.float32)

    def item_log_probs(self, histories):
        return np.stack([self.table[len(h) % len(self.table)] for h in histories])


def _tiny_catalog(item_ids):
    from constrained_rec import TitleTrie

    sequences = [[5, 6, 7], [5, 9], [11, 12, 13], [11, 12], [5, 6, 8], [14]]
    return TitleTrie.from_token_sequences(sequences, eos_token_id=2, item_ids=item_ids)


def test_prior_columns_follow_the_trie_build_order_on_a_permuted_catalog():
    from constrained_rec.experiment.assistant_prior import AssistantPrior

    build_ids = [60, 10, 40, 20, 50, 30]  # the trie's build order; the assistant's columns are sorted ids
    sorted_ids = sorted(build_ids)
    table = np.log(np.array([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]], dtype=np.float64) / 21)
    assistant = FixedAssistant(sorted_ids, table)
    trie = _tiny_catalog(build_ids)
    samples = [SimpleNamespace(index=0), SimpleNamespace(index=1)]
    rows = AssistantPrior(assistant, [[1], [1, 2]], trie)(samples)
    for j, item in enumerate(build_ids):
        assert rows[0, j] == pytest.approx(table[1, sorted_ids.index(item)])
        assert rows[1, j] == pytest.approx(table[0, sorted_ids.index(item)])
    with pytest.raises(ValueError, match=r"the assistant's catalog \(6 items\) is not the trie's"):
        AssistantPrior(FixedAssistant([10, 20, 30, 40, 50, 70], table), [[1]], trie)


def test_lm_plus_prior_recommender_is_decode_recommend_with_the_prior():
    from constrained_rec.decoding.recommend import recommend
    from constrained_rec.evaluation.evaluate import EvalConfig, EvalSample
    from constrained_rec.evaluation.recommenders import ConstrainedRecommender
    from constrained_rec.experiment.assistant_prior import AssistantPrior

    build_ids = [60, 10, 40, 20, 50, 30]
    table = np.log(np.array([[1, 2, 3, 4, 5, 6], [9, 1, 1, 1, 1, 8], [1, 1, 20, 1, 1, 1]], dtype=np.float64) / 21)
    table -= np.logaddexp.reduce(table, axis=1, keepdims=True)
    assistant, trie = FixedAssistant(sorted(build_ids), table), _tiny_catalog(build_ids)
    model = make_tiny_llama(vocab_size=32, seed=1).eval()
    tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    samples = [EvalSample(i, user_id=i, prompt=[1, 20 + i, 21], target_item_id=10, target_title="",
                          exclude=frozenset({40} if i == 1 else ())) for i in range(3)]
    histories = [[1], [1, 2], [1, 2, 3]]
    prior = AssistantPrior(assistant, histories, trie)
    config = EvalConfig(ks=(1, 3), num_beams=4)
    for weight in (0.0, 1.0, 4.0):
        records = ConstrainedRecommender(model, tokenizer, trie, config, name="lm+prior", prior=prior,
                                         prior_weight=weight)(samples)["lm+prior"]
        expected = recommend(model, None, [s.prompt for s in samples], trie, 3, num_beams=4,
                             exclude=[s.exclude for s in samples], item_log_prior=prior(samples), prior_weight=weight)
        for record, recs in zip(records, expected.recommendations):
            items = [i for r in recs for i in r.item_ids][:3]
            assert record["item_ids"] == items
            assert record["scores"][0] == pytest.approx(recs[0].score)


def _fake_loaded(data, test_rows=True):
    from constrained_rec.data import SplitConfig, make_splits
    from constrained_rec.experiment.steps import LoadedData

    split_config = SplitConfig(eval_samples=8, seed=0)
    splits = make_splits(data, split_config)
    if not test_rows:
        splits = {"train": splits["train"], "validation": splits["validation"]}  # reading test would fail
    return LoadedData(data, split_config, splits)


@pytest.fixture(scope="module")
def ml100k():
    from constrained_rec.data import load_interactions

    return load_interactions("ml-100k")


def test_the_assistant_is_fit_on_training_interactions_only(ml100k, tmp_path):
    from constrained_rec.data import split_positions
    from constrained_rec.evaluation.evaluate import training_item_counts
    from constrained_rec.experiment.assistant_step import fit_assistant_step

    loaded = _fake_loaded(ml100k)
    setup = fit_assistant_step("popularity", loaded, tmp_path, seed=0, state=SINGLE)
    positions = split_positions(ml100k, loaded.split_config)
    counts = training_item_counts(ml100k.interactions, list(positions["validation"]) + list(positions["test"]))
    assert setup.assistant.counts.tolist() == [counts.get(int(i), 0) for i in setup.assistant.item_ids]
    assert setup.assistant.counts.sum() == len(ml100k.interactions) - 2 * ml100k.num_users
    # the test users' histories: every item before the target, in order (not only the prompt's 10)
    test = loaded.splits["test"]
    for history, row in zip(setup.histories, test):
        assert list(history[-len(row["history_item_ids"]):]) == list(row["history_item_ids"])
    assert max(len(h) for h in setup.histories) > 10
    again = fit_assistant_step("popularity", loaded, tmp_path, seed=0, state=SINGLE)  # reloaded, not refit
    assert again.fit_seconds is None and setup.fit_seconds is not None
    with pytest.raises(ValueError, match=r"holds a 'popularity' assistant, not the 'ease'"):
        fit_assistant_step("ease", loaded, tmp_path, seed=0, state=SINGLE)


def test_a_damaged_assistant_folder_is_refit_with_a_message(ml100k, tmp_path, capsys):
    """Issue 17 item 2: an assistant folder left damaged (here: its counts cut short, as a save killed by the old
    non-atomic writer left it) is detected on resume and refit, saying so; every resume used to die on numpy."""
    from constrained_rec.experiment.assistant_step import fit_assistant_step

    loaded = _fake_loaded(ml100k)
    first = fit_assistant_step("popularity", loaded, tmp_path, seed=0, state=SINGLE)
    counts = tmp_path / "assistant" / "counts.npy"
    counts.write_bytes(counts.read_bytes()[:100])
    (tmp_path / "assistant" / "prior_weight.json").write_text("{}")  # chosen for the damaged assistant
    again = fit_assistant_step("popularity", loaded, tmp_path, seed=0, state=SINGLE)
    assert "is damaged" in capsys.readouterr().out and again.fit_seconds is not None
    assert np.array_equal(again.assistant.counts, first.assistant.counts)
    assert not (tmp_path / "assistant" / "prior_weight.json").exists()
    (tmp_path / "assistant" / "counts.npy").unlink()
    assert fit_assistant_step("popularity", loaded, tmp_path, seed=0, state=SINGLE).fit_seconds is not None


def test_auto_weight_sweep_uses_validation_users_only(ml100k, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import constrained_rec.decoding.recommend
    from constrained_rec.experiment.assistant_step import fit_assistant_step, prior_weight_step, sweep_prior_weight
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.model import load_tokenizer

    tokenizer = load_tokenizer()
    trie = catalog_trie(ml100k, tokenizer)
    loaded = _fake_loaded(ml100k)
    setup = fit_assistant_step("popularity", loaded, tmp_path, seed=0, state=SINGLE)
    decoded = []
    validation_targets = dict(zip(loaded.splits["validation"]["prompt"], loaded.splits["validation"]["target_item_id"]))

    hitting = {4.0}

    def fake_recommend_at_weights(model, tokenizer, prompts, trie, k, prior_weights, *, item_log_prior, exclude,
                                  **options):
        decoded.append((list(prompts), list(prior_weights)))
        assert item_log_prior.shape == (len(prompts), trie.num_items) and exclude is not None
        # only the weights in `hitting` find the targets
        return [SimpleNamespace(recommendations=[
            [SimpleNamespace(item_ids=[validation_targets[p] if w in hitting else -1])] for p in prompts])
            for w in prior_weights]

    monkeypatch.setattr(constrained_rec.decoding.recommend, "recommend_at_weights", fake_recommend_at_weights)
    validation_only = _fake_loaded(ml100k, test_rows=False)
    sweep = sweep_prior_weight(setup.assistant, None, tokenizer, trie, validation_only, True, seed=0, users=5)
    prompts = set(decoded[0][0])
    assert prompts <= set(loaded.splits["validation"]["prompt"]) and len(prompts) == 5
    assert not prompts & set(loaded.splits["test"]["prompt"])
    assert decoded[0][1] == list(sweep["grid"])  # every weight decodes the same users, in one call
    assert sweep["users"] == 5 and 4.0 in sweep["grid"] and len(sweep["validation_ndcg@10"]) == len(sweep["grid"])
    assert sweep["chosen"] == 4.0 and not sweep["fallback"]
    assert sweep["validation_ndcg@10"][sweep["grid"].index(4.0)] == 1.0
    # the assistant alone is an arm, scored on the same users, and every weight is compared with it
    assert 0.0 <= sweep["assistant_ndcg@10"]["value"] < 1.0 and sweep["assistant"] == "popularity"
    versus = sweep["versus_assistant"][sweep["grid"].index(4.0)]
    assert versus["users"] == 5 and versus["value"] == pytest.approx(1.0 - sweep["assistant_ndcg@10"]["value"])
    assert all(len(ci) == 2 for ci in sweep["validation_ndcg@10_ci"])
    hitting.clear()  # no weight finds anything: the assistant alone is at least as good, and LM + prior falls back
    fallback = sweep_prior_weight(setup.assistant, None, tokenizer, trie, validation_only, True, seed=0, users=5)
    assert fallback["chosen"] == "assistant" and fallback["fallback"]
    (tmp_path / "fallback" / "assistant").mkdir(parents=True)
    fell_back = prior_weight_step(setup, "auto", None, tokenizer, trie, validation_only, tmp_path / "fallback", True,
                                  0, SINGLE, users=5)
    assert fell_back.fallback and fell_back.prior_weight is None
    hitting.add(4.0)
    chosen = prior_weight_step(setup, "auto", None, tokenizer, trie, validation_only, tmp_path, True, 0, SINGLE,
                               users=5)
    assert chosen.prior_weight == sweep["chosen"] and chosen.sweep["grid"] == sweep["grid"]
    assert prior_weight_step(setup, 1.5, None, tokenizer, trie, validation_only, tmp_path, True, 0).prior_weight == 1.5
    empty = _fake_loaded(ml100k)
    empty.splits["validation"] = empty.splits["validation"].select([])
    with pytest.raises(ValueError, match=r"this split has none .*pass a number instead, e.g. --prior-weight 1"):
        sweep_prior_weight(setup.assistant, None, tokenizer, trie, empty, True, seed=0)


def test_auto_lookahead_picks_the_arm_with_the_better_validation_ndcg(ml100k, tmp_path, monkeypatch):
    """Issue 21 item 4: with --prior-lookahead auto the sweep decodes every weight under both lookaheads in one call
    (one prefill per prompt), keeps the (weight, lookahead) with the best validation NDCG@10, records both in the
    sweep, and the step hands the chosen lookahead to LM + prior; the report shows every arm."""
    from types import SimpleNamespace

    import constrained_rec.decoding.recommend
    from constrained_rec.experiment.assistant_step import fit_assistant_step, prior_weight_step
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.experiment.report import assistant_markdown
    from constrained_rec.model import load_tokenizer

    tokenizer = load_tokenizer()
    trie = catalog_trie(ml100k, tokenizer)
    loaded = _fake_loaded(ml100k, test_rows=False)
    setup = fit_assistant_step("popularity", _fake_loaded(ml100k), tmp_path, seed=0, state=SINGLE)
    targets = dict(zip(loaded.splits["validation"]["prompt"], loaded.splits["validation"]["target_item_id"]))
    calls = []

    def fake_recommend_at_weights(model, tokenizer, prompts, trie, k, prior_weights, *, prior_lookahead, **options):
        calls.append((list(prior_weights), list(prior_lookahead)))
        # w = 16 finds every target under "max" and half of them under "sum"; the others find nothing
        hits = {(16.0, "max"): prompts, (16.0, "sum"): prompts[::2]}
        return [SimpleNamespace(recommendations=[
            [SimpleNamespace(item_ids=[targets[p] if p in hits.get((w, a), []) else -1])] for p in prompts])
            for w, a in zip(prior_weights, prior_lookahead)]

    monkeypatch.setattr(constrained_rec.decoding.recommend, "recommend_at_weights", fake_recommend_at_weights)
    chosen = prior_weight_step(setup, "auto", None, tokenizer, trie, loaded, tmp_path, True, 0, SINGLE, users=5,
                               lookahead="auto")
    assert calls == [([1.0, 1.0, 4.0, 4.0, 16.0, 16.0], ["sum", "max"] * 3)]  # every arm in one call
    sweep = chosen.sweep
    assert (chosen.prior_weight, chosen.prior_lookahead, chosen.fallback) == (16.0, "max", False)
    assert sweep["chosen"] == 16.0 and sweep["chosen_lookahead"] == "max"
    assert sweep["grid"] == [1.0, 1.0, 4.0, 4.0, 16.0, 16.0] and sweep["lookahead"] == ["sum", "max"] * 3
    assert sweep["validation_ndcg@10"][5] == 1.0 and 0.0 < sweep["validation_ndcg@10"][4] < 1.0
    report = "\n".join(assistant_markdown({"name": "popularity", "method": "constrained+popularity",
                                            "prior_weight": 16.0, "prior_lookahead": "max", "prior_weight_sweep": sweep}))
    assert "w = 16.000, prior lookahead max" in report and "chosen: w = 16.00, max." in report
    assert "| w = 16.00, sum | 0.6" in report and "| w = 16.00, max | 1.0000 | [1.0000, 1.0000] |" in report
    calls.clear()  # a given lookahead decodes under it alone; the sweep's arms are the weights, as before
    (tmp_path / "max" / "assistant").mkdir(parents=True)
    again = prior_weight_step(setup, "auto", None, tokenizer, trie, loaded, tmp_path / "max", True, 0, SINGLE, users=5,
                              lookahead="max")
    assert calls == [([1.0, 4.0, 16.0], ["max"] * 3)] and again.prior_lookahead == "max"
    assert again.sweep["lookahead"] == ["max"] * 3 and again.sweep["chosen"] == 16.0
    fixed = prior_weight_step(setup, 2.0, None, tokenizer, trie, loaded, tmp_path, True, 0, lookahead="max")
    assert (fixed.prior_weight, fixed.prior_lookahead) == (2.0, "max")
    with pytest.raises(ValueError, match=r"prior lookahead 'auto' is chosen by the weight sweep, which prior_weight=2.0"):
        prior_weight_step(setup, 2.0, None, tokenizer, trie, loaded, tmp_path, True, 0, lookahead="auto")


@pytest.mark.parametrize("options, names", [
    (dict(constrained=True), ["most-popular", "fixed", "constrained", "constrained+fixed"]),
    (dict(constrained=True, lm_alone=False), ["most-popular", "fixed", "constrained+fixed"]),
    (dict(constrained=True, baselines=True, lm_alone=False), ["most-popular", "fixed", "constrained+fixed"]),
])
def test_methods_with_an_assistant_in_report_order(options, names):
    from constrained_rec.evaluation.evaluate import EvalConfig
    from constrained_rec.experiment.assistant_step import AssistantSetup
    from constrained_rec.experiment.steps import EvaluationInputs, build_recommenders

    build_ids = [60, 10, 40, 20, 50, 30]
    trie = _tiny_catalog(build_ids)
    assistant = FixedAssistant(sorted(build_ids), np.full((1, 6), -np.log(6)))
    setup = AssistantSetup("fixed", assistant, [[1]], prior_weight=1.0)
    data = SimpleNamespace(titles={i: f"title {i}" for i in build_ids})
    inputs = EvaluationInputs([], {10: 3}, {}, [])
    recommenders = build_recommenders(RunConfig(assistant="ease", **options), make_tiny_llama(vocab_size=32).eval(),
                                      SimpleNamespace(eos_token_id=2, pad_token_id=0), trie, data, inputs,
                                      EvalConfig(ks=(1, 3)), setup)
    assert [name for r in recommenders for name in r.names] == names
    fused = recommenders[-1]
    assert fused.prior_weight == 1.0 and fused.prior.assistant is assistant
