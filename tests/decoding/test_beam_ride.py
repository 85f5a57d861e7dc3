"""Jumped suffixes riding the next step's forward (beam mode): the same titles and scores as a forward of their own."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from decoding.test_decode import EOS, PEAKED, PROMPTS, VOCAB, excluded_items, make_catalog, tokens_of
from hypothesis import given, settings
from hypothesis import strategies as st

import constrained_rec.decoding.recommend
from conftest import make_tiny_llama
from constrained_rec import TitleTrie
from constrained_rec.decoding import beam
from constrained_rec.decoding.recommend import recommend
from constrained_rec.decoding.runner import _pack


def decoded(monkeypatch, ride: bool, *args, **kwargs):
    monkeypatch.setattr(constrained_rec.decoding.recommend, "beam_search", functools.partial(beam.beam_search, ride=ride))
    return recommend(*args, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("peaked", [False, True])
@pytest.mark.parametrize("prior", [False, True])
def test_riding_jumps_give_the_titles_and_scores_of_separate_forwards(monkeypatch, seed, length_penalty, peaked,
                                                                     prior):
    """Against each step's jumps scored in a forward of their own before the step (what `ride=False` does):
    the same titles in the same order, the same scores up to float rounding, in fewer forwards."""
    model = PEAKED if peaked else make_tiny_llama(vocab_size=VOCAB)
    seqs, items = make_catalog(seed, num_titles=60)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    options = dict(k=6, num_beams=8, length_penalty=length_penalty, exclude=excluded_items(items))
    if prior:
        options["item_log_prior"] = np.random.default_rng(seed).normal(size=(len(PROMPTS), trie.num_items))
    alone = decoded(monkeypatch, False, model, None, PROMPTS, trie, **options)
    riding = decoded(monkeypatch, True, model, None, PROMPTS, trie, **options)
    assert tokens_of(riding) == tokens_of(alone)
    for a, b in zip(alone.recommendations, riding.recommendations):
        for field in ("score", "log_prob", "fused_log_prob"):
            np.testing.assert_allclose([getattr(r, field) for r in b], [getattr(r, field) for r in a], rtol=1e-6, atol=1e-5)
    assert riding.stats.jumped == alone.stats.jumped > 0
    assert riding.stats.model_forwards < alone.stats.model_forwards


def test_without_the_jump_riding_changes_nothing(monkeypatch):
    seqs, items = make_catalog(5)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    model = make_tiny_llama(vocab_size=VOCAB)
    alone = decoded(monkeypatch, False, model, None, PROMPTS, trie, k=5, jump=False)
    riding = decoded(monkeypatch, True, model, None, PROMPTS, trie, k=5, jump=False)
    assert [[(r.token_ids, r.score) for r in recs] for recs in riding.recommendations] == [
        [(r.token_ids, r.score) for r in recs] for recs in alone.recommendations]
    assert riding.stats.model_forwards == alone.stats.model_forwards


@settings(max_examples=100, deadline=None)
@given(segments=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 9)), min_size=1, max_size=20),
       kept=st.one_of(st.none(), st.lists(st.integers(0, 12), min_size=4, max_size=4)))
def test_pack_puts_every_segment_once_into_a_batch_row_of_its_cache_row(segments, kept):
    rows = np.array([row for row, _ in segments])
    lengths = [length for _, length in segments]
    bin_rows, bins = _pack(rows, lengths, kept=kept)
    assert sorted(i for b in bins for i in b) == list(range(len(segments)))
    assert all(rows[i] == bin_rows[b] for b, segs in enumerate(bins) for i in segs)
    if kept is not None:  # batch row r extends cache row r in place
        assert bin_rows[: len(kept)].tolist() == list(range(len(kept)))
