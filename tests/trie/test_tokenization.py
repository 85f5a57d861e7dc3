"""Tokenization with the real embedded tokenizer and the real ml-100k titles."""

from __future__ import annotations

import pytest

from constrained_rec import TitleTrie
from constrained_rec.kernels import trie_walk
from constrained_rec.trie.tokenization import example_token_ids, prompt_token_ids, response_text, title_token_ids


def test_response_text_quotes_and_rejects_empty_titles():
    assert response_text("Heat (1995)") == '"Heat (1995)"'
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="non-empty string"):
            response_text(bad)


@pytest.fixture(scope="module")
def ml100k_catalog():
    from constrained_rec.data import load_interactions

    titles = load_interactions("ml-100k").titles
    assert len(titles) == 1681  # 1,682 items less item 267, whose title is "unknown"
    return titles


@pytest.mark.slow
def test_every_ml100k_title_encodes_decodes_and_is_reachable(smollm2_tokenizer, ml100k_catalog):
    tok = smollm2_tokenizer
    item_ids = list(ml100k_catalog)
    titles = [ml100k_catalog[i] for i in item_ids]
    trie = TitleTrie.from_titles(titles, tok, item_ids=item_ids)
    eos = tok.eos_token_id
    for item, title in zip(item_ids, titles):
        ids = title_token_ids(tok, title)
        assert ids[-1] == eos and eos not in ids[:-1]
        assert tok.decode(ids[:-1]) == response_text(title)
        state = trie.walk(ids)
        assert state.status == trie_walk.FINISHED and state.depth == len(ids)
        assert item in trie.item_ids(ids)
        assert item in trie.titles.items_for_title(title)
        # Every proper prefix of the title leaves exactly its next token among the allowed ones.
        for cut in range(len(ids)):
            assert ids[cut] in trie.next_tokens(ids[:cut])
    assert trie.max_token_id < len(tok)


@pytest.mark.slow
def test_training_example_is_prompt_ids_then_title_ids(smollm2_tokenizer):
    prompt = "### Instruction:\nRecommend a movie.\n\n### Response:\n"
    ids, prompt_len = example_token_ids(smollm2_tokenizer, prompt, "Toy Story (1995)")
    assert ids[:prompt_len] == prompt_token_ids(smollm2_tokenizer, prompt)
    assert ids[prompt_len:] == title_token_ids(smollm2_tokenizer, "Toy Story (1995)")
