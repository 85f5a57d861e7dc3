"""constrained_rec.lightning (issue 24): a tiny random Llama with SmolLM2's tokenizer on a slice of real ml-100k.

The module's loss is our trainer's, its test metrics are evaluate's, its checkpoints become adapters that
experiments/run.py accepts; the YAML config refuses unknown keys; teacher outputs round-trip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from conftest import REPO_ROOT  # noqa: E402
from constrained_rec.evaluation.evaluate import EvalConfig, evaluate, method_metrics  # noqa: E402
from constrained_rec.evaluation.recommenders import ConstrainedRecommender  # noqa: E402
from constrained_rec.experiment.catalog import catalog_trie  # noqa: E402
from constrained_rec.lightning import BigRecDataModule, BigRecModule, PromptLimits, SequencePrompter  # noqa: E402
from constrained_rec.training.batching import collate  # noqa: E402
from constrained_rec.training.train import TrainConfig  # noqa: E402

TRAIN = TrainConfig(batch_size=4, lora_dropout=0.0, learning_rate=0.05, warmup_steps=0, lr_schedule="constant", seed=0)
EVAL = EvalConfig(ks=(1, 3), batch_size=2)


def quiet_trainer(**options):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0, **options)


def fresh_model(tiny_model_dir):
    from constrained_rec.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    """The data module (16 training windows, 4 validation and test users), the tokenizer and the catalog trie."""
    _, tokenizer = fresh_model(tiny_model_dir)
    data = BigRecDataModule.from_dataset("ml-100k", tokenizer, train_samples=16, eval_users=4, train_config=TRAIN,
                                         eval_batch_size=2)
    return data, tokenizer, catalog_trie(data.data, tokenizer)


def new_module(tiny_model_dir, trie, **options):
    model, tokenizer = fresh_model(tiny_model_dir)
    return BigRecModule(model, tokenizer, trie, options.pop("train_config", TRAIN), EVAL, **options)


def mean_training_loss(module, data) -> float:
    module.eval()
    with torch.no_grad():
        return float(np.mean([module._loss(batch).item() for batch in data.train_dataloader()]))


def test_one_batch_loss_is_our_trainers(setup, tiny_model_dir, tmp_path):
    from constrained_rec.training.train import train

    data, tokenizer, trie = setup
    steps = []
    model, _ = fresh_model(tiny_model_dir)
    train(model, tokenizer, data.splits["train"], replace(TRAIN, max_steps=1), output_dir=tmp_path / "train",
          callback=steps.append)
    module = new_module(tiny_model_dir, trie)
    batch = next(iter(data.train_dataloader()))
    # the same samples in the same order: the trainer's first batch
    expected = collate([data.examples[i] for i in steps[0]["sample_indices"]], tokenizer.pad_token_id)
    assert torch.equal(batch.input_ids, expected.input_ids) and torch.equal(batch.targets, expected.targets)
    module.train()
    loss = module._loss(batch)  # what training_step returns
    assert loss.item() == pytest.approx(steps[0]["loss"], rel=1e-5, abs=1e-6)


def test_a_few_trainer_steps_lower_the_loss_as_our_trainer_does(setup, tiny_model_dir, tmp_path):
    from constrained_rec.training.train import train

    data, tokenizer, trie = setup
    config = replace(TRAIN, max_grad_norm=None, epochs=2)  # Lightning clips only when told to
    module = new_module(tiny_model_dir, trie, train_config=config)
    before = mean_training_loss(module, data)
    quiet_trainer(max_steps=8, limit_val_batches=0, enable_checkpointing=False).fit(module, data)  # two epochs
    after = mean_training_loss(module, data)
    assert after < before - 0.05, (before, after)
    # the same eight steps of constrained_rec.training.train (the same batches, epoch order included) end with the same weights
    model, _ = fresh_model(tiny_model_dir)
    ours = train(model, tokenizer, data.splits["train"], replace(config, max_steps=8), output_dir=tmp_path).model
    mine = {k.removeprefix("model."): v for k, v in module.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in ours.state_dict().items() if "lora_" in k}
    assert mine.keys() == theirs.keys()
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) < 1e-4


def test_test_metrics_are_evaluates_on_the_same_users(setup, tiny_model_dir, tmp_path):
    data, tokenizer, trie = setup
    module = new_module(tiny_model_dir, trie)
    module.eval()
    recommender = ConstrainedRecommender(module.model, tokenizer, trie, EVAL)
    first = evaluate([recommender], data.test, tmp_path / "first", show_progress=False)
    # targets moved onto recommended items (rank 1 for user 0, rank 3 for user 1), so the metrics are not all 0
    by_sample = {r["sample"]: r["item_ids"] for r in first}
    test = [replace(s, target_item_id=by_sample[s.index][[0, 2][s.index]]) if s.index < 2 else s for s in data.test]
    records = evaluate([recommender], test, tmp_path / "second", show_progress=False)
    expected = method_metrics(records, EVAL, catalog_size=len(data.data.titles),
                              popularity=dict.fromkeys(data.data.titles, 0.0))["constrained"]
    assert expected["hr@1"]["value"] == 0.25 and expected["hr@3"]["value"] == 0.5
    data_module = BigRecDataModule(tokenizer, None, data.validation, test, TRAIN, eval_batch_size=3)
    metrics = quiet_trainer().test(module, data_module, verbose=False)[0]
    for name in ("hr@1", "hr@3", "ndcg@1", "ndcg@3"):
        assert metrics[f"test/{name}"] == pytest.approx(expected[name]["value"], abs=1e-6), name
    assert [r["item_ids"] for r in module.test_records] == [by_sample[s.index] for s in test]


def test_checkpoint_becomes_an_adapter_that_run_py_accepts(setup, tiny_model_dir, tmp_path, monkeypatch):
    from experiments import run as run_script

    data, tokenizer, trie = setup
    module = new_module(tiny_model_dir, trie)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, data)
    checkpoint = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    stored = torch.load(checkpoint, weights_only=False)
    assert all("lora_" in name for name in stored["state_dict"]) and stored["state_dict"]  # LoRA weights only
    model, _ = fresh_model(tiny_model_dir)
    loaded = BigRecModule.load_from_checkpoint(checkpoint, model=model, tokenizer=tokenizer, trie=trie)
    trained = {k: v for k, v in module.state_dict().items() if "lora_" in k}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.items()) and trained
    adapter = tmp_path / "adapter"
    summary = loaded.save_adapter(adapter)
    assert summary["catalog_fingerprint"] == trie.fingerprint() and summary["base_model"] == str(tiny_model_dir)
    monkeypatch.setenv("CONSTRAINED_REC_CACHE", str(tmp_path / "cache"))
    results = run_script.main(["--constrained", "--adapter", str(adapter), "--eval-users", "2", "--k", "1",
                               "--assistant", "none", "--no-user-signal", "--threads", "1",
                               "--output-dir", str(tmp_path / "run")])
    assert results["adapter"] == str(adapter) and results["train"]["trainer"] == "lightning"
    assert results["methods"]["constrained"]["validity_rate"] == 1.0
    with pytest.raises(ValueError, match="trained for the catalog"):
        other = catalog_trie(type("Data", (), {"titles": {1: "Heat (1995)", 2: "Up (2009)"}})(), tokenizer)
        BigRecModule.load_from_checkpoint(checkpoint, model=fresh_model(tiny_model_dir)[0], tokenizer=tokenizer,
                                          trie=other)


def test_teacher_outputs_round_trip_and_hold_exact_scores(setup, tiny_model_dir, tmp_path):
    from constrained_rec.decoding.scoring import score_titles
    from constrained_rec.evaluation.teacher import TeacherOutputs, load_teacher_outputs, teacher_outputs

    data, tokenizer, trie = setup
    model, _ = fresh_model(tiny_model_dir)
    samples = data.test[:3]
    candidates = [[s.target_item_id, 1, 2] for s in samples[:2]] + [[s.target_item_id for s in samples[2:]]]
    outputs = teacher_outputs(model, tokenizer, trie, samples, k=3, candidates=candidates, metadata={"run": "t"})
    path = outputs.save(tmp_path / "teacher")
    assert path.name == "teacher.npz"
    loaded = load_teacher_outputs(path)
    for name in ("user_ids", "topk_item_ids", "topk_log_prob", "topk_fused_log_prob", "candidate_item_ids",
                 "candidate_log_prob"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(outputs, name))
    assert loaded.metadata["catalog_fingerprint"] == trie.fingerprint() and loaded.metadata["run"] == "t"
    assert loaded.candidate_item_ids[2].tolist() == [samples[2].target_item_id, -1, -1]
    assert np.isnan(loaded.candidate_log_prob[2, 1:]).all()
    # the candidates' scores are the control's scorer's; a top-K item's log_prob is its title's exact score
    exact = score_titles(model, tokenizer, [s.prompt for s in samples], candidates, trie)
    for row, scores in enumerate(exact):
        np.testing.assert_allclose(loaded.candidate_log_prob[row, :len(scores)], scores, rtol=1e-5)
    top = score_titles(model, tokenizer, [s.prompt for s in samples], loaded.topk_item_ids.tolist(), trie)
    np.testing.assert_allclose(loaded.topk_log_prob, np.stack(top), rtol=1e-4)
    assert not set(loaded.topk_item_ids[0].tolist()) & samples[0].exclude  # history excluded
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a teacher-outputs file: it lacks"):
        TeacherOutputs.load(tmp_path / "other.npz")


def test_sequences_become_the_data_sets_prompts_and_bad_ids_are_named(setup):
    data, tokenizer, _ = setup
    split = data.splits["test"]
    rows = [{"item_seq": [0, 0] + list(r["history_item_ids"]), "target": r["target_item_id"], "user_id": r["user_id"]}
            for r in split]
    prompter = SequencePrompter(data.data.titles, tokenizer, padding_item_id=0,
                                limits=PromptLimits(item_noun="movies"))
    assert [r["prompt"] for r in prompter(rows)] == list(split["prompt"])
    module = BigRecDataModule.from_sequences(data.data.titles, tokenizer, train=rows, test=rows, padding_item_id=0,
                                             limits=PromptLimits(item_noun="movies"))
    assert [s.prompt for s in module.test] == list(split["prompt"])
    assert module.test[0].exclude == frozenset(split[0]["history_item_ids"])
    with pytest.raises(ValueError, match="row 0: item 0 has no title"):
        SequencePrompter(data.data.titles, tokenizer)(rows)  # padding not declared: 0 is an item without a title
    with pytest.raises(ValueError, match="lacks \\['target'\\]"):
        prompter([{"item_seq": [1, 2]}])


def test_source_and_target_limits_drop_oldest_titles_or_refuse(setup):
    data, tokenizer, _ = setup
    from constrained_rec.trie.tokenization import prompt_token_ids, title_token_ids

    history = ["Heat (1995)", "Casino (1995)", "Babe (1995)"]
    full = PromptLimits().prompt(tokenizer, history)
    newest_two = PromptLimits().prompt(tokenizer, history[1:])
    limit = len(prompt_token_ids(tokenizer, newest_two))
    assert PromptLimits(max_source_length=limit).prompt(tokenizer, history) == newest_two
    assert PromptLimits(max_source_length=limit + 100).prompt(tokenizer, history) == full
    with pytest.raises(ValueError, match="only the newest history title 'Babe \\(1995\\)'"):
        PromptLimits(max_source_length=10).prompt(tokenizer, history)
    length = len(title_token_ids(tokenizer, "Heat (1995)"))
    PromptLimits(max_target_length=length).check_target(tokenizer, "Heat (1995)")
    with pytest.raises(ValueError, match=f"'Heat \\(1995\\)' has {length} tokens .* never truncated"):
        PromptLimits(max_target_length=length - 1).check_target(tokenizer, "Heat (1995)")
    with pytest.raises(ValueError, match=r"max_source_length \(tokens\) must be an integer >= 1"):
        PromptLimits(max_source_length=0)
    limited = BigRecDataModule.from_dataset("ml-100k", tokenizer, train_samples=4, eval_users=2,
                                            limits=PromptLimits(max_source_length=limit))
    assert all(len(prompt_token_ids(tokenizer, p)) <= limit for p in limited.train["prompt"])
    assert all(len(prompt_token_ids(tokenizer, s.prompt)) <= limit for s in limited.test)
    assert BigRecDataModule.from_dataset("ml-100k", tokenizer, train_samples=0, eval_users=2).train is None


def test_the_yaml_config_loads_and_refuses_unknown_or_mistyped_keys(tmp_path):
    from constrained_rec.lightning.config import KEYS, load_config, parse_override

    config = load_config(REPO_ROOT / "conf" / "bigrec.yaml")
    text = (REPO_ROOT / "conf" / "bigrec.yaml").read_text()
    assert all(f"\n{key}:" in text for key in KEYS)  # the file lists every key
    assert config.train_config().lora_r == 8 and config.eval_config().ks == (1, 5, 10)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rank: 8\n")
    with pytest.raises(ValueError, match="unknown key 'lora_rank'; did you mean 'lora_r'"):
        load_config(bad)
    with pytest.raises(ValueError, match="--set: unknown key 'epochs'; did you mean 'max_epochs'"):
        parse_override("epochs=3")
    bad.write_text("learning_rate: 1e-3\n")
    with pytest.raises(ValueError, match="learning_rate must be float, got '1e-3'.*write 1.0e-3"):
        load_config(bad)
    with pytest.raises(ValueError, match="assistant: unknown assistant 'knn'"):
        load_config(REPO_ROOT / "conf" / "bigrec.yaml", {"assistant": "knn"})


def test_run_lightning_from_the_yaml_file(tiny_model_dir, tmp_path):
    from constrained_rec.evaluation.teacher import load_teacher_outputs
    from experiments import run_lightning

    sets = [f"llm_model_name={tiny_model_dir}", "train_samples=8", "eval_users=2", "ks=[1, 2]", "batch_size=4",
            "max_steps=2",
            f"output_dir={tmp_path}", f"teacher_export={tmp_path / 'teacher.npz'}", "teacher_candidates=2",
            "accelerator=cpu", "assistant=popularity", "prior_weight=2.0"]
    results = run_lightning.main(["--config", str(REPO_ROOT / "conf" / "bigrec.yaml")]
                                 + [a for s in sets for a in ("--set", s)])
    assert {"test/hr@1", "test/ndcg@2", "test/loss"} <= set(results["test"])
    assert json.loads((tmp_path / "adapter" / "train_config.json").read_text())["global_step"] == 2
    teacher = load_teacher_outputs(tmp_path / "teacher.npz")
    assert teacher.topk_item_ids.shape == (2, 2) and teacher.candidate_item_ids.shape == (2, 3)
    assert (teacher.candidate_item_ids[:, 0] == teacher.target_item_ids).all()
    # LM + popularity prior: the fused score is log_prob + w * log M(title), with a real (negative) prior mass
    assert teacher.metadata["prior"] and teacher.metadata["prior_weight"] == 2.0
    assert (teacher.topk_prior_log_mass < 0).all()
    np.testing.assert_allclose(teacher.topk_fused_log_prob,
                               teacher.topk_log_prob + 2.0 * teacher.topk_prior_log_mass, rtol=1e-4)


def test_the_core_never_imports_lightning():
    """Every module of the package but constrained_rec.lightning imports without Lightning being loaded."""
    code = textwrap.dedent("""
        import importlib, pathlib, sys
        # from the files: pkgutil.walk_packages would import constrained_rec.lightning to list it
        names = [".".join(p.with_suffix("").parts).removesuffix(".__init__")
                 for p in sorted(pathlib.Path("constrained_rec").rglob("*.py"))
                 if "lightning" not in p.parts and p.name != "__main__.py"]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
        print(len(names), loaded)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    count, loaded = result.stdout.split(" ", 1)
    assert int(count) > 30 and loaded.strip() == "[]", result.stdout
