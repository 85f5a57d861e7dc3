"""Model loading: the embedded SmolLM2 through its safetensors cache, local folders, and clear errors."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from constrained_rec.model import EMBEDDED_MODEL, cache_dir, load_adapter, load_model, load_tokenizer


def test_missing_model_error_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = str(tmp_path / "no-such-org" / "no-such-model")
    with pytest.raises(FileNotFoundError) as error:
        load_model(missing)
    message = str(error.value)
    assert missing in message and "local folder" in message and "Hugging Face" in message
    assert EMBEDDED_MODEL in message
    with pytest.raises(ValueError, match="non-empty string"):
        load_tokenizer("")


def test_local_folder_gets_left_padding_and_eos_as_pad(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path)
    base = make_tiny_llama(vocab_size=4)
    base.config.pad_token_id = None
    base.save_pretrained(tmp_path)
    model, tokenizer = load_model(str(tmp_path))
    assert not model.training
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    assert model.config.pad_token_id == 2


def test_tokenizer_without_eos_is_rejected(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no EOS"):
        load_tokenizer(str(tmp_path))


def test_load_adapter_needs_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tmp_path)
    with pytest.raises(FileNotFoundError, match="'.*no-such-adapter' does not exist"):
        load_adapter(tmp_path / "no-such-adapter")


def test_adapter_metadata_errors_name_what_is_wrong(tmp_path):
    """A missing folder says so (not "no train_config.json"); a folder without metadata, another base model
    and another catalog are refused with what to do."""
    import json

    from constrained_rec.model import adapter_train_config, check_adapter

    class Trie:
        def fingerprint(self):
            return "catalog-b"

    with pytest.raises(FileNotFoundError, match="'.*missing' does not exist"):
        check_adapter(tmp_path / "missing", "smollm2-135m", Trie())
    with pytest.raises(FileNotFoundError, match="has no train_config.json"):
        adapter_train_config(tmp_path)
    (tmp_path / "train_config.json").write_text(json.dumps({"base_model": "m", "catalog_fingerprint": "catalog-a"}))
    with pytest.raises(ValueError, match="trained on the base model 'm', not 'smollm2-135m'; pass --model m"):
        check_adapter(tmp_path, "smollm2-135m", Trie())
    with pytest.raises(ValueError, match="another catalog or tokenizer .catalog fingerprint catalog-a.*give catalog-b"):
        check_adapter(tmp_path, "m", Trie())
    (tmp_path / "train_config.json").write_text(json.dumps({"base_model": "m", "catalog_fingerprint": "catalog-b"}))
    assert check_adapter(tmp_path, "m", Trie())["base_model"] == "m"


@pytest.mark.slow
def test_embedded_tokenizer_cache_tokenizes_like_the_gguf_file(smollm2_tokenizer):
    tokenizer = load_tokenizer()
    texts = ['"Toy Story (1995)"', '"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)"',
             "<|im_start|>user\nThe user watched:\n1. \"Heat (1995)\"<|im_end|>\n", "  two  spaces\tand tab"]
    for text in texts:
        for special in (True, False):
            expected = smollm2_tokenizer(text, add_special_tokens=special)["input_ids"]
            assert tokenizer(text, add_special_tokens=special)["input_ids"] == expected
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2 and tokenizer.padding_side == "left"
    assert len(tokenizer) == len(smollm2_tokenizer) == 49152


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTRAINED_REC_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("CONSTRAINED_REC_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "constrained-rec")


@pytest.mark.slow
def test_embedded_model_loads_from_the_cache():
    model, tokenizer = load_model()
    assert model.config.vocab_size == 49152 and model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in the GGUF
    assert model.config._name_or_path == EMBEDDED_MODEL and not hasattr(model.config, "quantization_config")
    ids = tokenizer('<|im_start|>user\nRecommend a movie.<|im_end|>\n<|im_start|>assistant\n"',
                    return_tensors="pt")["input_ids"]
    with torch.no_grad():
        next_token = model(ids).logits[0, -1].argmax().item()
    # a trained instruct model continues an opening quote with a title-like word, not a special token
    assert next_token > 16 and tokenizer.decode([next_token]).strip()
