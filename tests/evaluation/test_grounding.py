"""BIGRec grounding on constructed cases and a tiny random Llama with the real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_llama
from constrained_rec.evaluation import grounding
from constrained_rec.evaluation.grounding import TitleGrounder, last_token_hidden_states, parse_generated_title

CATALOG = {10: "Heat (1995)", 11: "Heat (1995)", 12: "Casino (1995)", 13: "Heat", 14: "Toy Story (1995)"}


@pytest.fixture(scope="module")
def tokenizer():
    from constrained_rec.model import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=49152, seed=3)


def test_parse_generated_title():
    assert parse_generated_title('"Heat (1995)"') == "Heat (1995)"
    assert parse_generated_title('  "Heat"  \n') == "Heat"
    assert parse_generated_title('"Heat (19') == "Heat (19"
    assert parse_generated_title("Heat") == "Heat"


def test_exact_match_maps_duplicates_to_all_items_and_honours_exclusion():
    grounder = TitleGrounder(CATALOG)
    assert grounder.exact('"Heat (1995)"') == [10, 11]
    assert grounder.exact('"Heat (1995)"', exclude={10}) == [11]
    assert grounder.exact('"Heat"') == [13]  # a title that is a prefix of another is its own match
    assert grounder.exact('"heat (1995)"') == [] and not grounder.is_valid('"heat (1995)"')
    assert grounder.is_valid('"Casino (1995)"')


def test_nearest_on_constructed_embeddings_matches_brute_force():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(len(CATALOG), 4)).astype(np.float32)
    grounder = TitleGrounder(CATALOG, item_embeddings=embeddings)
    queries = rng.normal(size=(3, 4)).astype(np.float32)
    exclude = [set(), {12, 14}, {10, 11, 12, 13}]
    items, distances = grounder.nearest(queries, k=3, exclude=exclude)
    ids = list(CATALOG)
    for q, query in enumerate(queries):
        brute = sorted((float(np.linalg.norm(query - embeddings[p])), ids[p]) for p in range(len(ids))
                       if ids[p] not in exclude[q])[:3]
        assert items[q] == [item for _, item in brute]
        np.testing.assert_allclose(distances[q][: len(brute)], [d for d, _ in brute], rtol=1e-5)
    assert len(items[2]) == 1 and np.isinf(distances[2][1:]).all()  # exclusion left one item


def test_nearest_rejects_bad_k_and_shapes():
    grounder = TitleGrounder(CATALOG, item_embeddings=np.zeros((5, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\].*got 6"):
        grounder.nearest(np.zeros((1, 2)), k=6)
    with pytest.raises(ValueError, match=r"shape \(1, 3\); expected \(queries, 2\)"):
        grounder.nearest(np.zeros((1, 3)), k=1)
    with pytest.raises(ValueError, match="no item embeddings"):
        TitleGrounder(CATALOG).nearest(np.zeros((1, 2)), k=1)
    with pytest.raises(ValueError, match=r"shape \(4, 2\); expected \(5, hidden\)"):
        TitleGrounder(CATALOG, item_embeddings=np.zeros((4, 2)))


def test_embedding_is_the_last_token_last_layer_state_whatever_the_batch(model, tokenizer):
    texts = ["Heat (1995)", "A", "Toy Story (1995)", "Casino"]
    batched = last_token_hidden_states(model, tokenizer, texts, batch_size=4)
    for i, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            expected = model(ids, output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(batched[i], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_embedding_switches_the_lora_adapter_off(model, tokenizer):
    from peft import LoraConfig, get_peft_model

    texts = ["Heat (1995)", "Casino (1995)"]
    base = last_token_hidden_states(model, tokenizer, texts)
    tuned = get_peft_model(make_tiny_llama(vocab_size=49152, seed=3),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():  # the adapter really changes the model's hidden states
        ids = torch.tensor([tokenizer(texts[0])["input_ids"]])
        assert not torch.allclose(tuned(ids, output_hidden_states=True).hidden_states[-1][0, -1],
                                  torch.from_numpy(base[0]))
    np.testing.assert_allclose(last_token_hidden_states(tuned, tokenizer, texts), base, rtol=1e-5, atol=1e-6)
    assert grounding.model_fingerprint(tuned) == grounding.model_fingerprint(model)
    assert grounding.model_fingerprint(tuned, include_adapter=True) != grounding.model_fingerprint(model)


def test_valid_output_grounds_to_its_own_title(model, tokenizer):
    catalog = {k: v for k, v in CATALOG.items() if k != 11}
    grounder = TitleGrounder(catalog, item_embeddings=last_token_hidden_states(model, tokenizer, list(catalog.values())))
    queries = last_token_hidden_states(model, tokenizer, [parse_generated_title('"Casino (1995)"')])
    items, distances = grounder.nearest(queries, k=2)
    assert items[0][0] == 12 and distances[0][0] == pytest.approx(0.0, abs=1e-4)


def test_title_embeddings_are_cached_per_model_and_catalog(model, tokenizer, tmp_path, monkeypatch):
    first = TitleGrounder.build(model, tokenizer, CATALOG, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("embeddings were recomputed although they are cached")

    monkeypatch.setattr(grounding, "last_token_hidden_states", must_not_run)
    again = TitleGrounder.build(model, tokenizer, CATALOG, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.item_embeddings, first.item_embeddings)
    monkeypatch.undo()

    TitleGrounder.build(make_tiny_llama(vocab_size=49152, seed=4), tokenizer, CATALOG, cache_dir=tmp_path)
    TitleGrounder.build(model, tokenizer, {**CATALOG, 15: "Jumanji (1995)"}, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3  # another model, another catalog: new entries
