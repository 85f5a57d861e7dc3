"""The history-title loss (TrainConfig.history_loss_weight): which prompt tokens it predicts, that weight 0 trains
exactly as before it existed, and that the loss alone teaches a tiny model a copy task."""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_train import FAST, INSTRUCTION, ITEMS, lora_weights, make_toy_tokenizer, tiny_model, toy_dataset

from constrained_rec.prompts import build_prompt, history_title_spans, quoted_titles
from constrained_rec.training.batching import Example, collate, history_targets, tokenize_examples
from constrained_rec.training.loss import ResponseLoss
from constrained_rec.training.train import TrainConfig, train
from constrained_rec.trie.tokenization import span_token_indices

# quotes, commas and separators that merge with title tokens in context, spaces, accents, CJK, emoji
TITLE_ALPHABET = st.sampled_from(list('abcXYZ019 ,"\'():;-.!?&') + ["é", "ß", "日", "本", "—", "😀", "\u00a0"])
titles_strategy = st.text(TITLE_ALPHABET, min_size=1, max_size=24).filter(lambda t: t.strip())


def _decoded(tokenizer, ids) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


@settings(max_examples=60, deadline=None)
@given(history=st.lists(titles_strategy, min_size=1, max_size=6))
@example(history=['"'])  # a title that is one quote: its token merges with the quotes around it
@example(history=['a"', '""'])
def test_history_targets_hold_exactly_each_titles_characters(smollm2_tokenizer, history):
    tokenizer = smollm2_tokenizer
    prompt = build_prompt(history)
    spans = history_title_spans(prompt, history)
    assert [prompt[a:b] for a, b in spans] == history
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    per_title = span_token_indices(tokenizer, prompt, spans)
    for (start, end), title, selected in zip(spans, history, per_title):
        assert selected == list(range(selected[0], selected[-1] + 1))  # one contiguous run of tokens
        text = _decoded(tokenizer, [ids[i] for i in selected])
        # the decoded tokens are the title plus at most the separator text around it (quotes, ", ") ...
        # (the title may occur more than once in that text, e.g. the title '"' inside '"""': take the occurrence
        # that lines up with the prompt on both sides)
        fits = [at for at in range(len(text) - len(title) + 1) if text.startswith(title, at)
                and prompt[:start].endswith(text[:at]) and prompt[end:].startswith(text[at + len(title):])]
        assert fits, (title, text)
        at = fits[0]
        # ... and the first and last tokens each hold title characters: dropping either loses some
        assert len(_decoded(tokenizer, [ids[selected[0]]])) > at
        assert len(_decoded(tokenizer, [ids[selected[-1]]])) > len(text) - at - len(title)
    # titles 2..n, no EOS: the first title's tokens and the response are never targets
    assert history_targets(tokenizer, prompt, history) == tuple(i for title in per_title[1:] for i in title)


def test_spans_of_a_prompt_without_the_titles_are_an_error():
    with pytest.raises(ValueError, match="does not hold the quoted history titles"):
        history_title_spans(build_prompt(["Heat (1995)"]), ["Casino (1995)"])


def test_a_slow_tokenizer_cannot_locate_titles():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        span_token_indices(Slow(), "x", [(0, 1)])


def test_collate_lists_history_targets_at_the_positions_that_predict_them():
    examples = [Example([1, 5, 6, 7, 8, 9, 2], 5, history_targets=(3, 4)), Example([1, 5, 6, 9, 2], 3)]
    batch = collate(examples, pad_token_id=0, history=True)
    assert batch.history_targets.tolist() == [7, 8]
    width = batch.input_ids.shape[1]
    assert batch.history_positions.tolist() == [2, 3]
    assert batch.input_ids.view(-1)[batch.history_positions + 1].tolist() == [7, 8]
    assert collate(examples, pad_token_id=0).history_positions is None  # without history: the batch of before
    assert width == 7


def test_history_loss_is_the_full_logits_cross_entropy_at_the_history_tokens():
    model = tiny_model()
    examples = [Example([1, 5, 6, 7, 8, 9, 10, 2], 6, history_targets=(2, 3, 4)), Example([1, 5, 6, 9, 11, 2], 3,
                                                                                        history_targets=(2,))]
    batch = collate(examples, pad_token_id=0, history=True)
    with torch.no_grad():
        response, history = ResponseLoss(model)(*batch.tensors())
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    log_probs = torch.log_softmax(logits.float(), -1).reshape(-1, logits.shape[-1])
    expected = -log_probs[batch.history_positions, batch.history_targets].sum()
    torch.testing.assert_close(history, expected)
    torch.testing.assert_close(response, ResponseLoss(model)(*collate(examples, 0).tensors()).detach())


def test_weight_zero_trains_exactly_as_without_the_history_loss(tmp_path, monkeypatch):
    # Weight 0 must take the training path that existed before the option: prompts tokenized without history
    # targets, batches without history positions, and never the history step. (Recorded loss bits would tie the
    # test to one transformers/torch build; the path itself is what weight 0 promises.)
    import constrained_rec.training.train as train_module

    tokenized, batched = [], []
    real_tokenize, real_collate = train_module.tokenize_examples, train_module.collate

    def tokenize_spy(tokenizer, dataset, history=False, collab=None):
        assert collab is None  # no collaborative tokens either: the text-only path
        tokenized.append(history)
        return real_tokenize(tokenizer, dataset, history=history, collab=collab)

    def collate_spy(*args, **kwargs):
        batch = real_collate(*args, **kwargs)
        batched.append(batch.history_positions)
        return batch

    def no_history_step(self, mine):
        raise AssertionError("the history step ran with history_loss_weight=0")

    monkeypatch.setattr(train_module, "tokenize_examples", tokenize_spy)
    monkeypatch.setattr(train_module, "collate", collate_spy)
    monkeypatch.setattr(train_module._TrainingRun, "_history_step", no_history_step)
    config = TrainConfig(**FAST, max_steps=3, checkpoint_every=100, history_loss_weight=0.0)
    dataset = toy_dataset(16).add_column("history_titles", [["t1", "t2"]] * 16)  # present, and unused
    result = train(tiny_model(), make_toy_tokenizer(), dataset, config,
                   eval_dataset=toy_dataset(8, seed=1), output_dir=tmp_path / "zero")
    assert tokenized and not any(tokenized)
    assert batched and all(positions is None for positions in batched)
    # and the same run without the history column (the data of before the option) is bit for bit the same
    plain = train(tiny_model(), make_toy_tokenizer(), toy_dataset(16), TrainConfig(**FAST, max_steps=3,
                  checkpoint_every=100), eval_dataset=toy_dataset(8, seed=1), output_dir=tmp_path / "plain")
    assert [r["loss"].hex() for r in result.log if "loss" in r] == [r["loss"].hex() for r in plain.log if "loss" in r]
    digests = []
    for run in (result, plain):
        weights, digest = lora_weights(run.model), hashlib.sha256()
        for name in sorted(weights):
            digest.update(name.encode())
            digest.update(weights[name].numpy().tobytes())
        digests.append(digest.hexdigest())
    assert digests[0] == digests[1]


def copy_dataset(n: int, seed: int):
    """Histories repeating one item 2 to 5 times (title k is a copy of title 1); the response is always i0,
    so the response loss teaches nothing about the history."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    rows = {"prompt": [], "target_title": [], "history_titles": []}
    for _ in range(n):
        item = ITEMS[int(torch.randint(1, len(ITEMS), (1,), generator=generator))]
        history = [item] * int(torch.randint(2, 6, (1,), generator=generator))
        rows["prompt"].append(f"{INSTRUCTION} {quoted_titles(history)} next :")
        rows["target_title"].append(ITEMS[0])
        rows["history_titles"].append(history)
    return Dataset.from_dict(rows)


def _copy_accuracy(model, tokenizer, data) -> float:
    """Share of history targets (titles 2..n) the model predicts exactly (argmax) from the tokens before."""
    batch = collate(tokenize_examples(tokenizer, data, history=True), tokenizer.pad_token_id, history=True)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    predicted = logits.reshape(-1, logits.shape[-1])[batch.history_positions].argmax(-1)
    return (predicted == batch.history_targets).float().mean().item()


def test_the_history_loss_alone_teaches_a_copy_task():
    # every weight of the tiny model trains (LoRA on a random 32-dim model learns this far too slowly for a test)
    tokenizer, model = make_toy_tokenizer(), tiny_model().train()
    examples = tokenize_examples(tokenizer, copy_dataset(64, seed=0), history=True)
    held_out = copy_dataset(64, seed=1)
    before = _copy_accuracy(model.eval(), tokenizer, held_out)
    loss, optimizer = ResponseLoss(model.train()), torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(300):
        batch = collate([examples[(step * 8 + i) % len(examples)] for i in range(8)], tokenizer.pad_token_id,
                        history=True)
        _, history = loss(*batch.tensors())  # the history-title losses only
        optimizer.zero_grad()
        (history / len(batch.history_targets)).backward()
        optimizer.step()
    after = _copy_accuracy(model.eval(), tokenizer, held_out)
    assert before < 0.1 and after > 0.6, (before, after)


def test_train_adds_the_weighted_history_loss_and_lowers_it(tmp_path):
    config = TrainConfig(**{**FAST, "lora_dropout": 0.0}, history_loss_weight=0.5, epochs=4, checkpoint_every=10**6,
                         lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "lm_head"))
    result = train(tiny_model(), make_toy_tokenizer(), copy_dataset(32, seed=0), config, output_dir=tmp_path)
    steps = [r for r in result.log if "loss" in r]
    for record in steps:
        assert record["loss"] == pytest.approx(record["response_loss"] + 0.5 * record["history_loss"])
        assert record["history_targets"] > 0
    assert steps[-1]["history_loss"] < 0.9 * steps[0]["history_loss"]


def test_bad_history_loss_weights_are_refused():
    for weight in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="history_loss_weight must be a finite number >= 0"):
            TrainConfig(history_loss_weight=weight)
    with pytest.raises(ValueError, match="train_on_inputs"):
        TrainConfig(history_loss_weight=1.0, train_on_inputs=True)
    TrainConfig(history_loss_weight=0.0, train_on_inputs=True)  # weight 0 is no history loss


def test_history_loss_needs_the_history_titles_column(tmp_path):
    with pytest.raises(ValueError, match="history_titles"):
        train(tiny_model(), make_toy_tokenizer(), toy_dataset(4), TrainConfig(**FAST, history_loss_weight=1.0),
              output_dir=tmp_path)


def test_the_main_job_takes_the_weight_and_refuses_it_where_nothing_trains():
    from constrained_rec.experiment.run_config import RunConfig, run_identity

    assert "history_loss_weight" not in run_identity(RunConfig())  # folders written before the option still resume
    config = RunConfig(history_loss_weight=1.0)
    assert run_identity(config)["history_loss_weight"] == 1.0
    assert "--history-loss-weight 1.0" in config.command_line()
    for options, message in ((dict(history_loss_weight=-1.0), "must be a finite number >= 0"),
                             (dict(history_loss_weight=1.0, adapter="runs/x"), "--adapter runs/x trains nothing"),
                             (dict(history_loss_weight=1.0, train_samples=0), "--train-samples 0 trains nothing")):
        with pytest.raises(ValueError, match=message):
            RunConfig(**options)


def test_a_checkpoint_from_before_the_option_resumes_at_weight_zero_only(tmp_path):
    import json

    config, data = TrainConfig(**FAST, max_steps=1, checkpoint_every=1), copy_dataset(8, seed=0)
    train(tiny_model(), make_toy_tokenizer(), data, config, output_dir=tmp_path)
    state = tmp_path / "checkpoint" / "state.json"
    saved = json.loads(state.read_text())
    del saved["config"]["history_loss_weight"]  # as written before the option existed
    state.write_text(json.dumps(saved))
    assert train(tiny_model(), make_toy_tokenizer(), data, config, output_dir=tmp_path).global_step == 1
    with pytest.raises(ValueError, match="history_loss_weight"):
        train(tiny_model(), make_toy_tokenizer(), data, TrainConfig(**FAST, max_steps=1, checkpoint_every=1,
                                                                   history_loss_weight=1.0), output_dir=tmp_path)
