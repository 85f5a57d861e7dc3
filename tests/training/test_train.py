"""LoRA training on a tiny random Llama with a word-level toy tokenizer; one step of the real model on ml-100k."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_tiny_llama
from constrained_rec.training.batching import (
    MIN_SHARED_PREFIX,
    Example,
    collate,
    epoch_batches,
    shared_prefix_length,
    tokenize_examples,
)
from constrained_rec.training.loss import ResponseLoss, full_logits_loss
from constrained_rec.training.train import TrainConfig, train
from constrained_rec.trie.tokenization import example_token_ids, title_token_ids

ITEMS = [f"i{k}" for k in range(24)]
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "the", "user", "has", "watched", "these", "items", ",", "what", "is",
         "next", ":", '"', *ITEMS]
INSTRUCTION = "the user has watched these items , what is next :"  # a prefix all prompts share, as in BIGRec


def make_toy_tokenizer():
    """A word-level tokenizer over the toy vocabulary; BOS added to prompts, EOS = ``</s>`` (id 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    # '"i3"' is three words: quotes split off
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split('"', behavior="isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.padding_side = "left"
    return tokenizer


def toy_dataset(n: int, seed: int = 0):
    """Histories of 2 to 5 items; the target is the item after the last one (a pattern worth learning)."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    prompts, titles = [], []
    for _ in range(n):
        length = int(torch.randint(2, 6, (1,), generator=generator))
        start = int(torch.randint(0, len(ITEMS) - length, (1,), generator=generator))
        history = ITEMS[start:start + length]
        prompts.append(f"{INSTRUCTION} {' '.join(history)} next :")
        titles.append(ITEMS[start + length])
    return Dataset.from_dict({"prompt": prompts, "target_title": titles})


def tiny_model():
    return make_tiny_llama(vocab_size=len(WORDS))


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


FAST = dict(batch_size=4, warmup_steps=0, learning_rate=1e-2, lora_dropout=0.1, log_every=1)


def test_toy_tokenizer_splits_prompt_and_title():
    tokenizer = make_toy_tokenizer()
    ids, prompt_length = example_token_ids(tokenizer, "watched i1 i2 next :", "i3")
    assert [WORDS[i] for i in ids] == ["<s>", "watched", "i1", "i2", "next", ":", '"', "i3", '"', "</s>"]
    assert prompt_length == 6
    batch = collate(tokenize_examples(tokenizer, toy_dataset(4)), tokenizer.pad_token_id)
    assert batch.shared_prefix_length == len(INSTRUCTION.split()) + 1  # with BOS


def test_loss_decreases(tmp_path):
    tokenizer = make_toy_tokenizer()
    data = toy_dataset(32)
    # the head too: LoRA on q/v alone barely moves a random model whose MLPs and head stay random
    config = TrainConfig(**FAST, lora_target_modules=("q_proj", "v_proj", "lm_head"), epochs=6, checkpoint_every=100)
    before = _mean_response_loss(tiny_model(), tokenizer, data)
    result = train(tiny_model(), tokenizer, data, config, output_dir=tmp_path)
    after = _mean_response_loss(result.model, tokenizer, data)
    assert result.global_step == 6 * 8
    assert after < 0.5 * before
    losses = [r["loss"] for r in result.log if "loss" in r]
    assert sum(losses[-8:]) < sum(losses[:8])


def _mean_response_loss(model, tokenizer, data) -> float:
    batch = collate(tokenize_examples(tokenizer, data), tokenizer.pad_token_id)
    with torch.no_grad():
        return (ResponseLoss(model.eval())(*batch.tensors()) / len(batch.targets)).item()


examples_strategy = st.lists(
    st.tuples(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**31)), min_size=1, max_size=5
)


def _random_examples(shapes, vocab_size: int, shared_prefix: int = 0) -> list[Example]:
    """Random ids; each prompt starts with the same ``shared_prefix`` tokens."""
    prefix = torch.randint(3, vocab_size, (shared_prefix,), generator=torch.Generator().manual_seed(7)).tolist()
    examples = []
    for prompt_length, response_length, seed in shapes:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, vocab_size, (prompt_length + response_length,), generator=generator).tolist()
        examples.append(Example(prefix + ids, shared_prefix + prompt_length))
    return examples


@settings(max_examples=20, deadline=None)
@given(shapes=examples_strategy, train_on_inputs=st.booleans(), shared_prefix=st.sampled_from([0, 3, 8, 20]))
def test_response_only_loss_equals_full_logits_loss(shapes, train_on_inputs, shared_prefix):
    model = make_tiny_llama(vocab_size=64)
    batch = collate(_random_examples(shapes, 64, shared_prefix), pad_token_id=2, train_on_inputs=train_on_inputs)
    ours = ResponseLoss(model)(*batch.tensors()) / len(batch.targets)
    reference = full_logits_loss(model, batch)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(sequences=st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=14), min_size=1, max_size=4),
       shared=st.lists(st.integers(0, 2), max_size=12))
def test_shared_prefix_length_is_the_longest_common_prefix(sequences, shared):
    sequences = [shared + s for s in sequences]
    length = shared_prefix_length(sequences)
    brute = 0
    while brute < min(map(len, sequences)) - 1 and len({tuple(s[:brute + 1]) for s in sequences}) == 1:
        brute += 1
    assert length == (brute if len(sequences) > 1 and brute >= MIN_SHARED_PREFIX else 0)


@pytest.mark.parametrize("shared_prefix", [0, 10])
def test_response_only_gradients_equal_full_logits_gradients(shared_prefix):
    from peft import LoraConfig, get_peft_model

    batch = collate(_random_examples([(7, 3, 1), (2, 5, 2), (4, 1, 3)], 64, shared_prefix), pad_token_id=2)
    assert batch.shared_prefix_length == shared_prefix
    gradients = []
    for loss_of in (lambda m: ResponseLoss(m)(*batch.tensors()) / len(batch.targets),
                    lambda m: full_logits_loss(m, batch)):
        torch.manual_seed(0)
        model = get_peft_model(make_tiny_llama(vocab_size=64), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                       init_lora_weights=False))
        loss_of(model).backward()
        gradients.append([p.grad for p in model.parameters() if p.requires_grad])
    for ours, reference in zip(*gradients):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(shapes=examples_strategy)
def test_targets_never_cover_prompt_tokens(shapes):
    examples = _random_examples(shapes, 64)
    # pad id = a token that also occurs in responses (as SmolLM2's pad = EOS): it must still be learned
    batch = collate(examples, pad_token_id=examples[0].ids[-1])
    width = batch.input_ids.shape[1]
    rows, columns = batch.positions // width, batch.positions % width + 1  # where each target sits
    for row, example in enumerate(examples):
        in_row = rows == row
        assert columns[in_row].tolist() == list(range(example.prompt_length, len(example.ids)))
        assert batch.targets[in_row].tolist() == example.ids[example.prompt_length:]
    assert width == max(len(e.ids) for e in examples)  # no padding beyond the longest sample


def test_targets_are_the_trie_token_ids_of_the_title():
    tokenizer = make_toy_tokenizer()
    data = toy_dataset(6)
    batch = collate(tokenize_examples(tokenizer, data), tokenizer.pad_token_id)
    expected = [i for title in data["target_title"] for i in title_token_ids(tokenizer, title)]
    assert batch.targets.tolist() == expected


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=60), batch_size=st.integers(1, 7),
       group=st.integers(1, 4), seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_epoch_batches_partition_the_samples(lengths, batch_size, group, seed, epoch):
    batches = epoch_batches(lengths, batch_size, seed, epoch, group)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) == -(-len(lengths) // batch_size)
    assert batches == epoch_batches(lengths, batch_size, seed, epoch, group)
    for b in batches:  # longest first inside a batch: batches are cut from length-sorted groups
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_length_grouping_reduces_padding():
    lengths = torch.randint(5, 200, (512,), generator=torch.Generator().manual_seed(0)).tolist()

    def padded_tokens(group):
        return sum(len(b) * max(lengths[i] for i in b) for b in epoch_batches(lengths, 8, 0, 0, group))

    assert padded_tokens(64) < 0.7 * padded_tokens(1)


def test_save_load_gives_identical_logits(tmp_path):
    from constrained_rec.model import load_adapter

    tokenizer = make_toy_tokenizer()
    config = TrainConfig(**FAST, epochs=1, catalog_fingerprint="trie-abc123")
    result = train(tiny_model(), tokenizer, toy_dataset(16), config, output_dir=tmp_path)
    loaded, loaded_tokenizer = load_adapter(tmp_path, base_model=tiny_model())
    inputs = loaded_tokenizer(["watched i1 i2 next :", "watched i5 next :"], return_tensors="pt", padding=True)
    assert loaded_tokenizer.padding_side == "left"
    assert any(torch.count_nonzero(w) for n, w in lora_weights(loaded).items() if "lora_B" in n)
    with torch.no_grad():
        expected = result.model(**inputs).logits
        actual = loaded(**inputs).logits
    assert torch.equal(expected, actual)
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["catalog_fingerprint"] == "trie-abc123"
    assert saved["lora_r"] == 8
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "train_log.jsonl",
                 "loss.png"):
        assert (tmp_path / name).is_file(), name


def test_sharing_the_prompt_prefix_changes_no_update_without_dropout(tmp_path):
    tokenizer = make_toy_tokenizer()
    weights = []
    for share in (True, False):
        config = TrainConfig(**{**FAST, "lora_dropout": 0.0}, share_prompt_prefix=share)
        result = train(tiny_model(), tokenizer, toy_dataset(16), config, output_dir=tmp_path / str(share))
        weights.append(lora_weights(result.model))
    for name, weight in weights[0].items():
        torch.testing.assert_close(weight, weights[1][name], rtol=1e-4, atol=1e-6)


class Interrupted(Exception):
    pass


def test_resume_after_interruption_continues_at_the_right_step_and_sample(tmp_path):
    tokenizer = make_toy_tokenizer()
    data = toy_dataset(36)  # 9 batches of 4, 2 per step: 5 steps per epoch, the last one a single batch
    config = TrainConfig(**FAST, gradient_accumulation_steps=2, epochs=2, checkpoint_every=3,
                         length_group_batches=2)
    uninterrupted_steps = []
    reference = train(tiny_model(), tokenizer, data, config, output_dir=tmp_path / "reference",
                      callback=uninterrupted_steps.append)
    assert reference.global_step == 10

    def stop_after_step_5(record):
        if record["step"] == 5:
            raise Interrupted
    with pytest.raises(Interrupted):  # killed mid-epoch... well after the last checkpoint (step 3)
        train(tiny_model(), tokenizer, data, config, output_dir=tmp_path / "run", callback=stop_after_step_5)
    resumed_steps = []
    resumed = train(tiny_model(), tokenizer, data, config, output_dir=tmp_path / "run", callback=resumed_steps.append)

    assert [r["step"] for r in resumed_steps] == list(range(4, 11))
    assert [r["sample_indices"] for r in resumed_steps] == [r["sample_indices"] for r in uninterrupted_steps[3:]]
    for name, weight in lora_weights(reference.model).items():
        torch.testing.assert_close(lora_weights(resumed.model)[name], weight, rtol=0, atol=0)
    log_steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log_steps == list(range(1, 11))  # steps 4-5 of the killed run are not in the log twice


def test_resume_refuses_a_different_config(tmp_path):
    tokenizer = make_toy_tokenizer()
    train(tiny_model(), tokenizer, toy_dataset(8), TrainConfig(**FAST), output_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_model(), tokenizer, toy_dataset(8), TrainConfig(**{**FAST, "batch_size": 2}), output_dir=tmp_path)


def test_validation_early_stopping_keeps_the_best_adapter(tmp_path):
    tokenizer = make_toy_tokenizer()
    # a learning rate this large makes validation loss rise after the first steps
    config = TrainConfig(**{**FAST, "learning_rate": 0.5}, epochs=20, eval_every=1, early_stopping_patience=2)
    result = train(tiny_model(), tokenizer, toy_dataset(16), config, eval_dataset=toy_dataset(8, seed=1),
                   output_dir=tmp_path)
    eval_losses = [r["eval_loss"] for r in result.log if "eval_loss" in r]
    assert result.stopped_early and result.global_step < 20 * 4
    assert result.best_eval_loss == min(eval_losses)
    assert all(loss > result.best_eval_loss for loss in eval_losses[-2:])
    final = _mean_response_loss(result.model, tokenizer, toy_dataset(8, seed=1))
    assert final == pytest.approx(result.best_eval_loss, rel=1e-5)


def test_bad_input_is_rejected_with_a_clear_error():
    from datasets import Dataset

    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="exponential")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="target_title"):
        tokenize_examples(make_toy_tokenizer(), Dataset.from_dict({"prompt": ["watched i1 next :"]}))


def test_examples_past_the_models_positions_fail_or_warn_before_the_first_step(tmp_path):
    """A GPT-2 raised a bare IndexError at the first long batch; a Llama trained on untrained positions silently."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0))
    data = toy_dataset(8)  # the longest example has 23 tokens
    with pytest.raises(ValueError, match=r"the longest training example \(prompt, title and EOS: 23 tokens\): 23 positions, "
                                         r"but GPT2LMHeadModel has max_position_embeddings=16"):
        train(gpt2, make_toy_tokenizer(), data, TrainConfig(epochs=1, **FAST), output_dir=tmp_path / "gpt2")
    assert not (tmp_path / "gpt2" / "train_log.jsonl").exists()
    llama = make_tiny_llama(vocab_size=len(WORDS), max_position_embeddings=16)
    with pytest.warns(UserWarning, match=r"EOS: 23 tokens\): 23 positions, but LlamaForCausalLM has max_position_embeddings=16"):
        train(llama, make_toy_tokenizer(), data, TrainConfig(epochs=1, max_steps=1, **FAST),
              output_dir=tmp_path / "llama")


@pytest.mark.slow
def test_one_step_of_the_embedded_model_on_ml100k_prompts(tmp_path):
    from constrained_rec.model import load_adapter, load_model

    model, tokenizer = load_model("smollm2-135m")
    data = _ml100k_samples(4)
    config = TrainConfig(batch_size=2, gradient_accumulation_steps=2, max_steps=1, warmup_steps=0)
    batch = collate(tokenize_examples(tokenizer, data), tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(ResponseLoss(model)(*batch.tensors()) / len(batch.targets),
                                   full_logits_loss(model, batch), rtol=1e-4, atol=1e-5)
    result = train(model, tokenizer, data, config, output_dir=tmp_path)
    assert result.global_step == 1
    assert 0 < result.train_loss < 20
    assert any(torch.count_nonzero(w) for n, w in lora_weights(result.model).items() if "lora_B" in n)
    assert json.loads((tmp_path / "train_config.json").read_text())["base_model"] == "smollm2-135m"
    loaded, _ = load_adapter(tmp_path)  # finds the embedded base model by the name peft recorded
    inputs = tokenizer([data[0]["prompt"]], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, result.model(**inputs).logits)


def _ml100k_samples(n: int):
    """``n`` training samples (BIGRec prompts) of the embedded ml-100k."""
    from constrained_rec.data import SplitConfig, load_interactions, make_splits

    return make_splits(load_interactions("ml-100k"), SplitConfig(train_samples=n, eval_samples=1, seed=0))["train"]
