"""decode.recommend_at_weights: one prefill per prompt for every prior weight, the results of recommend() at each."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import make_tiny_llama
from constrained_rec import TitleTrie
from constrained_rec.decoding.recommend import recommend, recommend_at_weights

MODEL = make_tiny_llama(vocab_size=40, seed=3)


def _summary(result):
    return [[(r.item_ids, r.token_ids, r.log_prob, r.score, r.prior_log_mass) for r in recs]
            for recs in result.recommendations]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), num_prompts=st.integers(1, 5), batch_size=st.integers(1, 3),
       weights=st.lists(st.sampled_from([0.0, 0.5, 1.0, 4.0, 64.0]), min_size=1, max_size=4),
       lookahead=st.sampled_from(["sum", "max", "per weight"]))
@example(seed=0, num_prompts=5, batch_size=1, weights=[0.5], lookahead="max")  # separate runs under max
def test_every_weight_gives_what_recommend_gives(seed, num_prompts, batch_size, weights, lookahead):
    """Each weight (and its lookahead: one for all, or one per weight) gives what recommend() gives alone."""
    rng = np.random.default_rng(seed)
    sequences = [[int(t) for t in rng.integers(5, 40, size=rng.integers(1, 4))] for _ in range(12)]
    trie = TitleTrie.from_token_sequences(sequences, eos_token_id=2, item_ids=range(12))
    prompts = [[1, *map(int, rng.integers(3, 40, size=rng.integers(1, 6)))] for _ in range(num_prompts)]
    prior = np.log(rng.dirichlet(np.ones(12), size=num_prompts))
    exclude = [{int(rng.integers(12))} for _ in range(num_prompts)]
    k = min(3, min(len({tuple(s) for i, s in enumerate(sequences) if i not in e}) for e in exclude))
    lookaheads = [("sum", "max")[w % 2] for w in range(len(weights))] if lookahead == "per weight" else [lookahead] * len(weights)
    shared = recommend_at_weights(MODEL, None, prompts, trie, k, weights, item_log_prior=prior, num_beams=4,
                                  exclude=exclude, batch_size=batch_size,
                                  prior_lookahead=lookaheads if lookahead == "per weight" else lookahead)
    for weight, result, lookahead in zip(weights, shared, lookaheads):
        alone = recommend(MODEL, None, prompts, trie, k, num_beams=4, exclude=exclude, item_log_prior=prior,
                          prior_weight=weight, batch_size=batch_size, prior_lookahead=lookahead)
        assert _summary(result) == _summary(alone)
    # the prompts are prefilled once, not once per weight
    prefills = -(-num_prompts // batch_size)
    separate = sum(recommend(MODEL, None, prompts, trie, k, num_beams=4, exclude=exclude, item_log_prior=prior,
                             prior_weight=w, batch_size=batch_size, prior_lookahead=la).stats.model_forwards
                   for w, la in zip(weights, lookaheads))
    assert sum(r.stats.model_forwards for r in shared) == separate - prefills * (len(weights) - 1)


def test_no_weights_is_an_error():
    trie = TitleTrie.from_token_sequences([[5], [6]], eos_token_id=2, item_ids=[0, 1])
    with pytest.raises(ValueError, match="prior_weights` is empty"):
        recommend_at_weights(MODEL, None, [[1, 3]], trie, 1, [], item_log_prior=np.zeros((1, 2)))


def test_lookaheads_are_one_or_one_per_weight_and_named_when_unknown():
    trie = TitleTrie.from_token_sequences([[5], [6]], eos_token_id=2, item_ids=[0, 1])
    with pytest.raises(ValueError, match="gives 1 lookaheads for 2 weights"):
        recommend_at_weights(MODEL, None, [[1, 3]], trie, 1, [1.0, 4.0], item_log_prior=np.zeros((1, 2)),
                             prior_lookahead=["max"])
    with pytest.raises(ValueError, match=r"one of \('sum', 'max'\), but is 'best'"):
        recommend_at_weights(MODEL, None, [[1, 3]], trie, 1, [1.0], item_log_prior=np.zeros((1, 2)),
                             prior_lookahead="best")
