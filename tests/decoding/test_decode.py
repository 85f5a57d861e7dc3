"""constrained_rec.decoding.recommend: beam mode against transformers' beam search, exact mode against brute force."""

from __future__ import annotations

import doctest
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

import constrained_rec.decoding.recommend
from conftest import make_tiny_llama
from constrained_rec import TitleTrie, TitleTrieProcessor
from constrained_rec.decoding import beam
from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.decoding.recommend import recommend
from constrained_rec.decoding.runner import _pack
from constrained_rec.trie.tokenization import prompt_token_ids

EOS, PAD = 2, 0
VOCAB = 48
PROMPTS = [[1, 10, 11, 12, 13], [1, 20, 21], [1, 30, 31, 32, 33, 34, 35]]  # three lengths: left padding


def make_catalog(seed: int, num_titles: int = 40) -> tuple[list[list[int]], list[int]]:
    """Titles that share a few heads (so the trie branches, then runs into tails), a title that is a prefix
    of another, and two items with the same title."""
    rng = np.random.default_rng(seed)
    heads = [rng.integers(3, VOCAB, size=rng.integers(1, 3)).tolist() for _ in range(6)]
    seqs = [heads[rng.integers(len(heads))] + rng.integers(3, VOCAB, size=rng.integers(0, 6)).tolist()
            for _ in range(num_titles)]
    seqs += [seqs[0][:1], list(seqs[1])]
    return seqs, list(range(100, 100 + len(seqs)))


def excluded_items(items):
    return [set(items[:3]), set(), {items[5], items[-1]}]  # items[-1] shares its title with items[1]


def generate_top(model, trie, k, num_beams, length_penalty, exclude, **prior):
    """Per prompt, [(tokens, score)] of transformers' beam search with TitleTrieProcessor."""
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    proc = TitleTrieProcessor(trie, prompt_length=width, exclude=exclude, pad_token_id=PAD, **prior)
    out = model.generate(input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]),
                         num_beams=num_beams, num_return_sequences=k, max_new_tokens=trie.max_length,
                         length_penalty=length_penalty, do_sample=False, pad_token_id=PAD, eos_token_id=EOS,
                         return_dict_in_generate=True, output_scores=True)
    rows, scores = out.sequences[:, width:].tolist(), out.sequences_scores.tolist()
    return [[(tuple(r[: r.index(EOS) + 1]), s) for r, s in zip(rows[p * k : (p + 1) * k], scores[p * k : (p + 1) * k])]
            for p in range(len(PROMPTS))]


def brute_force_log_probs(model, trie, exclude=None):
    """Per prompt, {title tokens: total log-probability} of every title the prompt may get, by teacher forcing."""
    seqs = list(trie.sequences())
    out = []
    for p, prompt in enumerate(PROMPTS):
        excluded = exclude[p] if exclude else set()
        allowed = [s for s in seqs if set(trie.item_ids(s)) - excluded]
        width = max(len(s) for s in allowed)
        ids = torch.tensor([prompt + s + [PAD] * (width - len(s)) for s in allowed])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits.double(), dim=-1)
        totals = {}
        for row, s in enumerate(allowed):
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(s))
            totals[tuple(s)] = log_probs[row, positions, torch.tensor(s)].sum().item()
        out.append(totals)
    return out


def tokens_of(result):
    return [[tuple(r.token_ids) for r in recs] for recs in result.recommendations]


# Larger weights than make_tiny_llama's default make the next-token distributions peaked (the best token near
# log-probability 0, the worst near -16, instead of all near -log(VOCAB)): titles of the same length then score
# differently, a short prefix can lead to a likely long title, and beams and best-first search really compete.
PEAKED = make_tiny_llama(vocab_size=VOCAB, initializer_range=0.5)


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=VOCAB)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("with_exclude", [False, True])
@pytest.mark.parametrize("peaked", [False, True])
def test_beam_without_jump_equals_transformers_beam_search(model, seed, length_penalty, with_exclude, peaked):
    model = PEAKED if peaked else model
    seqs, items = make_catalog(seed)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    exclude = excluded_items(items) if with_exclude else None
    expected = generate_top(model, trie, k=4, num_beams=6, length_penalty=length_penalty, exclude=exclude)
    result = recommend(model, None, PROMPTS, trie, 4, num_beams=6, jump=False, length_penalty=length_penalty,
                       exclude=exclude)
    for p, recs in enumerate(result.recommendations):
        assert [r.token_ids for r in recs] == [list(t) for t, _ in expected[p]]  # same titles, same order
        np.testing.assert_allclose([r.score for r in recs], [s for _, s in expected[p]], rtol=0, atol=1e-5)
        for r in recs:
            assert r.score == pytest.approx(r.log_prob / len(r.token_ids) ** length_penalty, abs=1e-5)
    # One prefill for the batch, then one forward per step: transformers runs the same number of steps.
    assert result.stats.model_forwards <= trie.max_length


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1,
                        eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(config).eval()


def tiny_llama_with_lora():
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # random: it matters
    return get_peft_model(make_tiny_llama(vocab_size=VOCAB, seed=1), lora).eval()


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama_with_lora], ids=["gpt2", "llama+lora"])
def test_other_causal_lms_match_transformers_beam_search(make_model):
    other = make_model()
    seqs, items = make_catalog(0)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    expected = generate_top(other, trie, k=3, num_beams=4, length_penalty=0.0, exclude=None)
    result = recommend(other, None, PROMPTS, trie, 3, num_beams=4, jump=False)
    for p, recs in enumerate(result.recommendations):
        assert [r.token_ids for r in recs] == [list(t) for t, _ in expected[p]]
        np.testing.assert_allclose([r.score for r in recs], [s for _, s in expected[p]], rtol=0, atol=1e-5)
    truth = brute_force_log_probs(other, trie)
    exact = recommend(other, None, PROMPTS, trie, 3, mode="exact")
    for recs, totals in zip(exact.recommendations, truth):
        np.testing.assert_allclose([r.log_prob for r in recs], sorted(totals.values(), reverse=True)[:3], atol=1e-4)


@pytest.mark.parametrize("jump", [True, False])
@pytest.mark.parametrize("with_exclude", [False, True])
def test_exact_mode_returns_the_true_top_k(jump, with_exclude):
    model = PEAKED
    seqs, items = make_catalog(2, num_titles=30)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    exclude = excluded_items(items) if with_exclude else None
    k = 5
    result = recommend(model, None, PROMPTS, trie, k, mode="exact", jump=jump, exclude=exclude, num_beams=3)
    for recs, truth in zip(result.recommendations, brute_force_log_probs(model, trie, exclude)):
        best = sorted(truth.values(), reverse=True)[:k]
        np.testing.assert_allclose([r.log_prob for r in recs], best, rtol=0, atol=1e-4)
        for r in recs:
            assert truth[tuple(r.token_ids)] == pytest.approx(r.log_prob, abs=1e-4)
    assert result.stats.budget_exhausted == [False] * 3 and result.stats.proven == [k] * 3
    assert (result.stats.jumped > 0) == jump


@settings(max_examples=25, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(3, 8), min_size=1, max_size=5), min_size=3, max_size=25),
    k=st.integers(1, 3),
    per_forward=st.integers(1, 8),
    jump=st.booleans(),
)
def test_exact_mode_equals_brute_force_on_random_catalogs(seqs, k, per_forward, jump):
    """Few token values, so titles share prefixes and prefix titles are common."""
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    k = min(k, len(trie))
    result = recommend(PEAKED, None, PROMPTS, trie, k, mode="exact", num_beams=per_forward, jump=jump)
    for recs, truth in zip(result.recommendations, brute_force_log_probs(PEAKED, trie)):
        np.testing.assert_allclose([r.log_prob for r in recs], sorted(truth.values(), reverse=True)[:k], atol=1e-4)
        assert all(truth[tuple(r.token_ids)] == pytest.approx(r.log_prob, abs=1e-4) for r in recs)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_jump_scores_titles_as_step_by_step_decoding_does(length_penalty):
    model = PEAKED
    seqs, items = make_catalog(3)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    truth = brute_force_log_probs(model, trie)
    stepped = recommend(model, None, PROMPTS, trie, 6, num_beams=8, jump=False, length_penalty=length_penalty)
    jumped = recommend(model, None, PROMPTS, trie, 6, num_beams=8, jump=True, length_penalty=length_penalty)
    assert jumped.stats.jumped > 0 and stepped.stats.jumped == 0
    assert jumped.stats.model_forwards < stepped.stats.model_forwards
    for p in range(len(PROMPTS)):
        by_title = {tuple(r.token_ids): r for r in stepped.recommendations[p]}
        for r in jumped.recommendations[p]:
            assert truth[p][tuple(r.token_ids)] == pytest.approx(r.log_prob, abs=1e-4)
            if tuple(r.token_ids) in by_title:
                assert by_title[tuple(r.token_ids)].score == pytest.approx(r.score, abs=1e-5)
        scores = [r.score for r in jumped.recommendations[p]]
        assert scores == sorted(scores, reverse=True)


# A head of 20 token ids every prompt shares (an instruction), then each user's part, of different lengths.
HEAD = [1] + list(range(3, 23))
HEADED = [HEAD + [30, 31, 32], HEAD + [40], HEAD + [25, 26, 27, 28, 29, 33, 34]]


@settings(max_examples=50, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=4))
def test_shared_prefix_is_the_longest_common_prefix_of_the_ids_short_of_a_last_token(prompts):
    from constrained_rec.decoding.runner import shared_prefix_length

    shared = shared_prefix_length(prompts)
    brute = max(n for n in range(min(map(len, prompts))) if all(p[:n] == prompts[0][:n] for p in prompts))
    assert shared == brute


@pytest.mark.parametrize("make_model", [lambda: make_tiny_llama(vocab_size=VOCAB), tiny_gpt2], ids=["llama", "gpt2"])
def test_a_shared_head_is_prefilled_once_with_the_same_logits(make_model):
    from constrained_rec.decoding.recommend import DecodeStats
    from constrained_rec.decoding.runner import ModelRunner, PromptBatch

    model = make_model()
    trie = TitleTrie.from_token_sequences([[5, 6]], eos_token_id=EOS)
    with torch.inference_mode():
        runner = ModelRunner(model, trie, DecodeStats())
        shared = PromptBatch(HEADED, runner)
        tokens = runner.stats.forward_tokens
        alone = PromptBatch(HEADED, runner, share_prefix=False)
    assert shared.shared == len(HEAD) and alone.shared == 0
    assert tokens == len(HEAD) + sum(len(p) - len(HEAD) for p in HEADED)  # the head once
    np.testing.assert_allclose(shared.last_logits.numpy(), alone.last_logits.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(shared.lengths, [len(p) for p in HEADED])


@pytest.mark.parametrize("make_model", [lambda: make_tiny_llama(vocab_size=VOCAB), tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("mode,jump", [("beam", False), ("beam", True), ("exact", True)])
def test_a_shared_head_changes_no_result(make_model, mode, jump):
    """Prompts decoded together (their head prefilled once, padding between head and remainder) give what
    each prompt gives alone (no sharing): the same titles and log-probabilities."""
    model = make_model()
    seqs, items = make_catalog(2)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    options = dict(k=3, mode=mode, jump=jump, exclude=excluded_items(items))
    together = recommend(model, None, HEADED, trie, batch_size=3, **options)
    alone = recommend(model, None, HEADED, trie, batch_size=1, **options)
    assert tokens_of(together) == tokens_of(alone)
    for a, b in zip(together.recommendations, alone.recommendations):
        np.testing.assert_allclose([r.log_prob for r in a], [r.log_prob for r in b], rtol=0, atol=1e-5)
    assert together.stats.forward_tokens < alone.stats.forward_tokens - len(HEAD)


def test_an_attention_that_ignores_a_4d_mask_is_refused(model):
    trie = TitleTrie.from_token_sequences([[5, 6]], eos_token_id=EOS)
    flash = make_tiny_llama(vocab_size=VOCAB)
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2' attention of LlamaForCausalLM does not take"):
        recommend(flash, None, PROMPTS, trie, 1)


@pytest.mark.parametrize("mode", ["beam", "exact"])
def test_batches_and_left_padding_do_not_change_results(model, mode):
    seqs, items = make_catalog(4)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    exclude = excluded_items(items)
    one_by_one = recommend(model, None, PROMPTS, trie, 4, mode=mode, exclude=exclude, batch_size=1)
    together = recommend(model, None, PROMPTS, trie, 4, mode=mode, exclude=exclude, batch_size=3)
    assert tokens_of(one_by_one) == tokens_of(together)
    for a, b in zip(one_by_one.recommendations, together.recommendations):
        np.testing.assert_allclose([r.log_prob for r in a], [r.log_prob for r in b], rtol=0, atol=1e-5)
    assert together.stats.model_forwards < one_by_one.stats.model_forwards
    # Prompts given as a tensor row or a numpy array are the same prompts.
    as_arrays = recommend(model, None, [torch.tensor(PROMPTS[0]), np.array(PROMPTS[1]), PROMPTS[2]], trie, 4,
                          mode=mode, exclude=exclude)
    assert tokens_of(as_arrays) == tokens_of(together)


@pytest.mark.parametrize("mode", ["beam", "exact"])
def test_exclude_removes_items_and_lists_every_item_of_a_shared_title(model, mode):
    seqs, items = make_catalog(0)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    k = len(trie) - 4  # deep enough to reach the shared title
    shared = tuple(seqs[1]) + (EOS,)
    exclude = [set(items[:3]), set(), {items[-1]}]  # items[1] and items[-1] share a title
    result = recommend(model, None, PROMPTS, trie, k, num_beams=len(trie), mode=mode, exclude=exclude)
    for p, recs in enumerate(result.recommendations):
        assert len(recs) == k
        for r in recs:
            assert r.item_ids and not set(r.item_ids) & exclude[p]
            assert set(r.item_ids) == set(trie.item_ids(r.token_ids)) - exclude[p]
            assert r.title is None  # built from token ids: no title text
        titles = [tuple(r.token_ids) for r in recs]
        assert len(set(titles)) == len(titles)
        fully_excluded = {tuple(s) for s in trie.sequences() if set(trie.item_ids(s)) <= exclude[p]}
        assert not fully_excluded & set(titles)
    by_title = {tuple(r.token_ids): r.item_ids for recs in result.recommendations for r in recs}
    assert shared in by_title


def test_exact_search_reports_its_budget(model):
    seqs, items = make_catalog(5)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    with pytest.warns(UserWarning, match=r"exact search hit node_budget=3 for prompts \[0, 1, 2\]"):
        result = recommend(model, None, PROMPTS, trie, 5, mode="exact", node_budget=3, num_beams=1)
    assert result.stats.budget_exhausted == [True] * 3
    assert result.stats.expanded == [3] * 3
    assert all(proven < 5 for proven in result.stats.proven)
    full = recommend(model, None, PROMPTS, trie, 5, mode="exact")
    for recs, proven, exact in zip(result.recommendations, result.stats.proven, full.recommendations):
        assert [r.token_ids for r in recs[:proven]] == [r.token_ids for r in exact[:proven]]


def test_titles_and_string_prompts_with_a_tokenizer(smollm2_tokenizer):
    """Token ids from the real tokenizer; the model is tiny and random over the same vocabulary size."""
    titles = ["Heat (1995)", "Heat", "Toy Story (1995)", "Toy Story 2 (1999)", "GoldenEye (1995)", "Heat (1995)"]
    trie = TitleTrie.from_titles(titles, smollm2_tokenizer, item_ids=[10, 11, 12, 13, 14, 15])
    assert smollm2_tokenizer.eos_token_id == EOS  # the tiny model's EOS
    model = make_tiny_llama(vocab_size=len(smollm2_tokenizer))
    exclude = [{10}, set()]
    result = recommend(model, smollm2_tokenizer, ["Recommend a movie:", "Another user:"], trie, 3, exclude=exclude)
    for recs, excluded in zip(result.recommendations, exclude):
        assert len(recs) == 3
        for r in recs:
            assert r.title in titles and smollm2_tokenizer.decode(r.token_ids[:-1]) == f'"{r.title}"'
            assert set(r.item_ids) == {i for t, i in zip(titles, [10, 11, 12, 13, 14, 15]) if t == r.title} - excluded


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "`k` must be an integer >= 1"),
        ({"k": 3, "num_beams": 2}, "num_beams=2 < k=3"),
        ({"mode": "greedy"}, "`mode` has to be one of"),
        ({"mode": "exact", "length_penalty": 1.0}, "needs length_penalty=0.0"),
        ({"exclude": [set()]}, r"disagree on the number of prompts \(num_prompts: 3, exclude: 1\)"),
        ({"exclude": [{999}, set(), set()]}, r"item ids \[999\] are not in the trie"),
        ({"prompts": "just a string"}, "`prompts` has to be a non-empty sequence"),
        ({"prompts": [[1, -2]]}, "prompt 0 has to be a string or a non-empty list of token ids"),
        ({"prompts": ["text"]}, "prompt 0 is a string, which needs a tokenizer"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"length_penalty": float("nan")}, "`length_penalty` must be a finite number, got nan"),
        ({"length_penalty": True}, "`length_penalty` must be a finite number, got True"),
    ],
)
def test_bad_arguments_are_clear_errors(model, kwargs, message):
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8], [9, 10], [11], [12], [13], [14], [15]], eos_token_id=EOS)
    call = {"prompts": PROMPTS, "k": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        recommend(model, None, call.pop("prompts"), trie, call.pop("k"), **call)


@pytest.mark.parametrize("exclude, zeroed, cause", [
    (None, [0, 1, 2], r"only \[2\] titles \(prompt 0: 3 titles removed by the -inf \(zero-mass\) entries of `item_log_prior\[0\]`\)"),
    ([{13}], [0, 1, 2], r"only \[1\] titles \(prompt 0: 1 title removed by `exclude`, 3 more by the -inf .* `item_log_prior\[0\]`\)"),
    ([{12, 13, 14}], [], r"only \[2\] titles \(prompt 0: after `exclude`\)"),
    ([{12, 13, 14}], [2], r"only \[2\] titles \(prompt 0: after `exclude`\)"),  # the prior's -inf item is excluded anyway
])
def test_too_few_titles_blame_what_removed_them(model, exclude, zeroed, cause):
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8], [9, 10], [11]], eos_token_id=EOS,
                                          item_ids=[10, 11, 12, 13, 14])
    prior = np.zeros((1, 5))
    prior[0, zeroed] = -np.inf
    with pytest.warns(constrained_rec.decoding.recommend.FewerTitlesWarning, match=cause):
        recommend(model, None, PROMPTS[:1], trie, 3, exclude=exclude, item_log_prior=prior)


@pytest.mark.parametrize("mode", ["beam", "exact"])
def test_a_prompt_with_fewer_titles_than_k_gets_all_it_can_reach_with_a_warning(model, mode):
    """Issue 17 item 1: k above what a prompt can reach (after `exclude`) returns those titles, warning, not an error."""
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8], [9, 10], [11], [12], [13], [14], [15]], eos_token_id=EOS)
    exclude = [set(), set(range(6)), set(range(1, 9))]  # default item ids: 0..8, in title order
    with pytest.warns(constrained_rec.decoding.recommend.FewerTitlesWarning,
                      match=r"prompts \[1, 2\] can be recommended only \[3, 1\] titles .*fewer than k=5"):
        result = recommend(model, None, PROMPTS, trie, 5, num_beams=5, exclude=exclude, mode=mode)
    assert [len(recs) for recs in result.recommendations] == [5, 3, 1]
    assert {i for r in result.recommendations[1] for i in r.item_ids} == {6, 7, 8}
    assert result.recommendations[2][0].item_ids == [0]
    with pytest.warns(constrained_rec.decoding.recommend.FewerTitlesWarning, match=r"only \[9, 9, 9\] titles"):
        whole = recommend(model, None, PROMPTS, trie, 40, num_beams=40, mode=mode)
    assert [len(recs) for recs in whole.recommendations] == [9, 9, 9]


def test_model_and_trie_mismatches_are_clear_errors(model):
    trie = TitleTrie.from_token_sequences([[5, 6], [5, VOCAB + 3]], eos_token_id=EOS)
    with pytest.raises(ValueError, match=f"trie holds token id {VOCAB + 3} but the model scores only {VOCAB}"):
        recommend(model, None, PROMPTS, trie, 1)
    training = make_tiny_llama(vocab_size=VOCAB).train()
    with pytest.raises(ValueError, match=r"training mode .* call model.eval\(\)"):
        recommend(training, None, PROMPTS, trie, 1)


def test_docstring_example_runs():
    failures, tried = doctest.testmod(constrained_rec.decoding.recommend, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


@pytest.mark.slow
def test_embedded_model_beam_equals_generate_and_exact_equals_brute_force():
    """The real SmolLM2 (a GGUF de-quantised to float32) on real titles: the same equalities as above."""
    from constrained_rec.model import load_model

    model, tokenizer = load_model()
    titles = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)",
              "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)", "Richard III (1995)",
              "Seven (Se7en) (1995)", "Usual Suspects, The (1995)", "Mighty Aphrodite (1995)", "Postino, Il (1994)",
              "French Twist (Gazon maudit) (1995)", "From Dusk Till Dawn (1996)", "White Balloon, The (1995)",
              "Antonia's Line (1995)", "Angels and Insects (1995)", "Muppet Treasure Island (1996)", "Braveheart (1995)"]
    trie = TitleTrie.from_titles(titles, tokenizer)
    prompt = 'The user has watched "Heat (1995)" and "Casino (1995)". Recommend a movie.\n### Response:\n'
    ids = torch.tensor([prompt_token_ids(tokenizer, prompt)])
    proc = TitleTrieProcessor(trie, prompt_length=ids.shape[1], pad_token_id=tokenizer.pad_token_id)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), logits_processor=LogitsProcessorList([proc]),
                         num_beams=4, num_return_sequences=3, max_new_tokens=trie.max_length, length_penalty=0.0,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         return_dict_in_generate=True, output_scores=True)
    expected = [trie.titles.title(trie.output_item_ids(row)[0]) for row in out.sequences[:, ids.shape[1] :].tolist()]
    beam = recommend(model, tokenizer, [prompt], trie, 3, num_beams=4, jump=False).recommendations[0]
    assert [r.title for r in beam] == expected
    np.testing.assert_allclose([r.score for r in beam], out.sequences_scores.tolist(), rtol=0, atol=1e-4)

    truth = {}
    for s in trie.sequences():
        full = torch.tensor([ids[0].tolist() + s])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(full).logits[0].double(), -1)
        positions = torch.arange(ids.shape[1] - 1, full.shape[1] - 1)
        truth[tuple(s)] = log_probs[positions, torch.tensor(s)].sum().item()
    exact = recommend(model, tokenizer, [prompt], trie, 3, mode="exact").recommendations[0]
    np.testing.assert_allclose([r.log_prob for r in exact], sorted(truth.values(), reverse=True)[:3], atol=1e-3)


# ---------------------------------------------------------------- the item prior inside the search
def random_log_prior(num_items, seed, zero_mass=3):
    rng = np.random.default_rng(seed)
    prior = rng.normal(0, 2, size=(len(PROMPTS), num_items))
    for row in prior:
        row[rng.choice(num_items, size=zero_mass, replace=False)] = -np.inf
    return prior


def brute_force_fused(model, trie, seqs, items, prior, weight, exclude=None):
    """Per prompt, {title: (log p_LM, log M, fused)} over every title of positive mass, by brute force in log space
    (so that masses of 1e-300 next to 1 keep their value)."""
    lm = brute_force_log_probs(model, trie)
    out = []
    for p, totals in enumerate(lm):
        excluded = exclude[p] if exclude else set()
        logs = np.array([-np.inf if i in excluded else v for i, v in zip(items, prior[p])])
        total = np.logaddexp.reduce(logs)
        title_log = {}
        for v, s in zip(logs, seqs):
            title = tuple(s) + (EOS,)
            title_log[title] = np.logaddexp(title_log.get(title, -np.inf), v - total)
        out.append({t: (totals[t], m, totals[t] + weight * m) for t, m in title_log.items() if m > -np.inf})
    return out


@pytest.mark.parametrize("weight", [0.5, 2.0])
@pytest.mark.parametrize("with_exclude", [False, True])
@pytest.mark.parametrize("lookahead", ["sum", "max"])
def test_beam_with_prior_equals_generate_with_the_prior_processor(model, weight, with_exclude, lookahead):
    seqs, items = make_catalog(0)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    prior = random_log_prior(len(items), seed=1)
    exclude = excluded_items(items) if with_exclude else None
    expected = generate_top(model, trie, k=4, num_beams=6, length_penalty=0.0, exclude=exclude, item_log_prior=prior,
                            prior_weight=weight, prior_lookahead=lookahead)
    result = recommend(model, None, PROMPTS, trie, 4, num_beams=6, jump=False, exclude=exclude, item_log_prior=prior,
                       prior_weight=weight, prior_lookahead=lookahead)
    truth = brute_force_fused(model, trie, seqs, items, prior, weight, exclude)
    constraints = ItemConstraints.build(trie, exclude=exclude, item_log_prior=prior, prior_weight=weight,
                                        prior_lookahead=lookahead) if exclude else ItemConstraints.build(
        trie, item_log_prior=prior, prior_weight=weight, prior_lookahead=lookahead)
    for p, recs in enumerate(result.recommendations):
        assert [r.token_ids for r in recs] == [list(t) for t, _ in expected[p]]
        # generate()'s totals lack the constant w * L(root) under "max"; recommend adds it back.
        offset = constraints.prior_offset(p)
        assert (offset == 0.0) == (lookahead == "sum")
        np.testing.assert_allclose([r.score - offset for r in recs], [s for _, s in expected[p]], rtol=0, atol=1e-5)
        for r in recs:
            log_prob, log_mass, fused = truth[p][tuple(r.token_ids)]
            assert r.log_prob == pytest.approx(log_prob, abs=1e-4)
            assert r.prior_log_mass == pytest.approx(log_mass, abs=1e-9)
            assert r.fused_log_prob == pytest.approx(fused, abs=1e-4) and r.score == r.fused_log_prob


@settings(max_examples=20, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(3, 7), min_size=1, max_size=4), min_size=3, max_size=20),
    seed=st.integers(0, 100),
    weight=st.sampled_from([0.3, 1.0, 3.0]),
    jump=st.booleans(),
    lookahead=st.sampled_from([None, "sum", "max"]),
    peaked=st.booleans(),
)
def test_exact_mode_with_prior_equals_brute_force(seqs, seed, weight, jump, lookahead, peaked):
    """Duplicate and prefix titles are common with few token values; exact mode proves the fused top-k under either
    bound, peaked priors included (masses of 1e-20 to e^-1000 next to 1, which prefix sums floored)."""
    items = list(range(len(seqs)))
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    prior = random_log_prior(len(items), seed, zero_mass=1)
    if peaked:
        prior = np.random.default_rng(seed).choice([0.0, -46.0, -58.0, -69.0, -1000.0], size=prior.shape)
    truth = brute_force_fused(PEAKED, trie, seqs, items, prior, weight)
    k = min(3, min(len(t) for t in truth))
    result = recommend(PEAKED, None, PROMPTS, trie, k, mode="exact", jump=jump, item_log_prior=prior,
                       prior_weight=weight, node_budget=10_000, prior_lookahead=lookahead)
    assert result.stats.proven == [k] * len(PROMPTS)
    for recs, titles in zip(result.recommendations, truth):
        best = sorted((fused for _, _, fused in titles.values()), reverse=True)[:k]
        np.testing.assert_allclose([r.fused_log_prob for r in recs], best, rtol=1e-6, atol=1e-4)
        for r in recs:
            assert titles[tuple(r.token_ids)][2] == pytest.approx(r.fused_log_prob, rel=1e-6, abs=1e-4)
            assert titles[tuple(r.token_ids)][1] == pytest.approx(r.prior_log_mass, rel=1e-12, abs=1e-12)



def brute_force_prefix_bounds(model, trie, seqs, items, prior, weight, lookahead):
    """Per prompt, {prefix: its fused bound} for every proper prefix (no EOS) of a title of positive mass:
    log p_LM(prefix) + w log of the mass of its best title ("max") or of all its titles ("sum"), by teacher forcing."""
    fused = brute_force_fused(model, trie, seqs, items, prior, weight) if weight else [
        {t: (lp, 0.0, lp) for t, lp in totals.items()} for totals in brute_force_log_probs(model, trie)]
    out = []
    for p, titles in enumerate(fused):
        width = max(len(t) for t in titles)
        ids = torch.tensor([PROMPTS[p] + list(t) + [PAD] * (width - len(t)) for t in titles])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits.double(), dim=-1)
        bounds = {}
        for row, title in enumerate(titles):
            steps = log_probs[row, torch.arange(len(PROMPTS[p]) - 1, len(PROMPTS[p]) - 1 + len(title)),
                              torch.tensor(title)].cumsum(0)
            for depth in range(1, len(title)):
                bounds.setdefault(title[:depth], (float(steps[depth - 1]), []))[1].append(titles[title][1])
        merge = max if lookahead == "max" else np.logaddexp.reduce
        out.append({h: lp + weight * merge(masses) for h, (lp, masses) in bounds.items()})
    return out, fused


@settings(max_examples=15, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(3, 8), min_size=1, max_size=5), min_size=4, max_size=25),
    seed=st.integers(0, 100),
    weight=st.sampled_from([0.0, 1.0, 3.0]),
    lookahead=st.sampled_from(["sum", "max"]),
)
def test_exact_search_counts_the_prefixes_it_expands(seqs, seed, weight, lookahead):
    """One prefix per forward, no jump: best-first search expands exactly the prefixes whose bound beats the k-th
    title's fused score (brute force: every prefix's bound by teacher forcing), one forward each."""
    items = list(range(len(seqs)))
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    prior = random_log_prior(len(items), seed, zero_mass=1)
    bounds, fused = brute_force_prefix_bounds(PEAKED, trie, seqs, items, prior, weight, lookahead)
    k = min(3, min(len(t) for t in fused))
    result = recommend(PEAKED, None, PROMPTS, trie, k, mode="exact", jump=False, num_beams=1, node_budget=10_000,
                       item_log_prior=prior if weight else None, prior_weight=weight, prior_lookahead=lookahead)
    stats = result.stats
    assert stats.proven == [k] * len(PROMPTS)
    for p, (prefixes, titles) in enumerate(zip(bounds, fused)):
        kth = sorted((f for _, _, f in titles.values()), reverse=True)[k - 1]
        surely = sum(b > kth + 1e-4 for b in prefixes.values())  # float32 sums in the search: a margin for rounding
        at_most = sum(b > kth - 1e-4 for b in prefixes.values())
        assert surely <= stats.expanded[p] <= at_most, (p, surely, stats.expanded[p], at_most)
    assert stats.search_forwards == stats.expanded
    assert stats.model_forwards == 1 + max(stats.expanded)  # the prefill, then a forward per prefix of the slowest


@pytest.mark.parametrize("jump", [None, False, True])
def test_exact_search_counts_forwards_and_tokens_per_prompt(jump):
    """Several prefixes per forward: each forward counts once for every prompt with a prefix in it, and a prompt's
    tokens are those its prefixes fed: one per prefix (its last; its ancestors' tokens are in the cache), and a
    jumped tail's whole suffix. By default (on a CPU) exact search does not jump; beam search counts none."""
    seqs, items = make_catalog(2, num_titles=30)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    result = recommend(PEAKED, None, PROMPTS, trie, 5, mode="exact", num_beams=4, jump=jump)
    stats = result.stats
    assert all(-(-n // 4) <= f <= n for n, f in zip(stats.expanded, stats.search_forwards))
    assert stats.model_forwards == 1 + max(stats.search_forwards)
    assert stats.forward_tokens == sum(len(p) for p in PROMPTS) + sum(stats.search_tokens)
    assert (stats.jumped > 0) == bool(jump)
    if not jump:
        assert stats.search_tokens == stats.expanded
    else:
        assert sum(stats.search_tokens) > sum(stats.expanded)
    beam = recommend(PEAKED, None, PROMPTS, trie, 5, num_beams=5).stats
    assert beam.expanded == beam.search_forwards == beam.search_tokens == [0] * len(PROMPTS)

def test_exact_mode_under_a_peaked_prior_is_exact(model):
    """Issue 21's probe: masses 1e-20 to 1e-30 after a mass of 1 in trie order were floored to one value by the
    prefix sums, and exact search "proved" a top-4 in the LM's order, 20 nats off."""
    seqs, items = make_catalog(0)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    order = [trie.item_ids(s)[0] for s in trie.sequences()]  # one item per title, in trie order
    prior = np.full((len(PROMPTS), len(items)), -np.inf)
    for item, log_mass in zip(order[:4], [0.0, -46.0, -58.0, -69.0]):  # 1, 1e-20, 6e-26, 1e-30
        prior[:, items.index(item)] = log_mass
    truth = brute_force_fused(model, trie, seqs, items, prior, 1.0)
    for lookahead in ("sum", "max"):
        result = recommend(model, None, PROMPTS, trie, 4, mode="exact", item_log_prior=prior, prior_weight=1.0,
                           prior_lookahead=lookahead)
        for recs, titles in zip(result.recommendations, truth):
            expected = sorted(titles, key=lambda t: -titles[t][2])
            assert [tuple(r.token_ids) for r in recs] == expected
            np.testing.assert_allclose([r.prior_log_mass for r in recs], [titles[t][1] for t in expected], rtol=1e-12,
                                       atol=1e-15)  # float64 rounding of a log near 0


def test_prior_lookahead_options_are_checked(model):
    seqs, items = make_catalog(1)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    prior = random_log_prior(len(items), seed=2, zero_mass=0)
    with pytest.raises(ValueError, match=r"`prior_lookahead` has to be None or one of \('sum', 'max'\), but is 'best'"):
        recommend(model, None, PROMPTS, trie, 4, item_log_prior=prior, prior_lookahead="best")
    with pytest.raises(ValueError, match="prior_lookahead='max' leaves a per-prompt constant .* length_penalty=1.0"):
        recommend(model, None, PROMPTS, trie, 4, item_log_prior=prior, prior_lookahead="max", length_penalty=1.0)
    constraints = ItemConstraints.build(trie, item_log_prior=prior)
    with pytest.raises(ValueError, match="`prior_lookahead='max'` disagrees with the given `constraints`, built with 'sum'"):
        recommend(model, None, PROMPTS, trie, 4, constraints=constraints, prior_lookahead="max")


def test_prior_weight_zero_is_the_plain_search_and_constraints_can_be_passed(model):
    seqs, items = make_catalog(1)
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=items)
    prior = random_log_prior(len(items), seed=2, zero_mass=0)
    plain = recommend(model, None, PROMPTS, trie, 4, num_beams=6)
    weightless = recommend(model, None, PROMPTS, trie, 4, num_beams=6, item_log_prior=prior, prior_weight=0.0)
    assert tokens_of(plain) == tokens_of(weightless)
    constraints = ItemConstraints.build(trie, num_prompts=3, item_log_prior=prior)
    assert tokens_of(recommend(model, None, PROMPTS, trie, 4, num_beams=6, constraints=constraints)) == tokens_of(
        recommend(model, None, PROMPTS, trie, 4, num_beams=6, item_log_prior=prior))
    with pytest.raises(ValueError, match="cover 3 prompts, but 2 prompts were given"):
        recommend(model, None, PROMPTS[:2], trie, 4, constraints=constraints)


# ---------------------------------------------------------------------- the model's position limit
def short_gpt2(positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=positions, n_embd=32, n_layer=1, n_head=4,
                                      bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)).eval()


@pytest.mark.parametrize("mode", ["beam", "exact"])
def test_prompts_past_learned_positions_are_an_error_before_any_forward(mode):
    """GPT-2 raised a bare IndexError (a device assert on a GPU) from its position table mid-search."""
    trie = TitleTrie.from_token_sequences([[5, 6, 7], [5, 8], [9]], eos_token_id=EOS)  # max_length 4
    model = short_gpt2(16)
    fits = [[1] + [10] * 12]  # 13 prompt tokens + 3 title tokens = 16 positions: the EOS is never fed
    assert len(recommend(model, None, fits, trie, 2, mode=mode).recommendations[0]) == 2
    with pytest.raises(ValueError, match=r"prompt 1 \(14 tokens, the longest\) and the trie's longest title \(3 tokens"
                                         r".*: 17 positions, but GPT2LMHeadModel has max_position_embeddings=16"):
        recommend(model, None, fits + [[1] + [10] * 13], trie, 2, mode=mode)


def test_generate_paths_check_positions_too():
    from constrained_rec.evaluation.recommenders import generate_unconstrained, recommend_constrained

    class Tokenizer:  # prompts as space-separated ids
        eos_token_id, pad_token_id = EOS, PAD

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1] + [int(t) for t in text.split()]}

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    trie = TitleTrie.from_token_sequences([[5, 6, 7], [5, 8], [9]], eos_token_id=EOS)
    prompt = " ".join(["10"] * 13)
    with pytest.raises(ValueError, match=": 17 positions, but GPT2LMHeadModel has max_position_embeddings=16"):
        recommend_constrained(short_gpt2(16), Tokenizer(), [prompt], trie, 2, 2, decoder="generate")
    with pytest.raises(ValueError, match=r"max_new_tokens=4 .*\): 17 positions"):
        generate_unconstrained(short_gpt2(16), Tokenizer(), [prompt], 1, 1, 0.0, trie.max_length)


def test_prompts_past_rotary_positions_warn_once_per_model_naming_the_limit():
    trie = TitleTrie.from_token_sequences([[5, 6, 7], [5, 8], [9]], eos_token_id=EOS)
    model = make_tiny_llama(vocab_size=VOCAB, max_position_embeddings=16)
    long_prompts = [[1] + [10] * 20]
    with pytest.warns(UserWarning, match=r": 24 positions, but LlamaForCausalLM has max_position_embeddings=16: "
                                         r"positions past 16 were never trained"):
        result = recommend(model, None, long_prompts, trie, 2)
    assert len(result.recommendations[0]) == 2  # it runs on, warned
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recommend(model, None, long_prompts, trie, 2)  # the same model again: no second warning
        recommend(make_tiny_llama(vocab_size=VOCAB), None, long_prompts, trie, 2)  # 256 positions: fits


def test_the_searches_refuse_a_fused_score_that_leaves_float32():
    """ItemConstraints bounds w times the prior's range by float32's largest value; a sum near it can still
    overflow, and -inf would then rank as a masked title in both searches."""
    from constrained_rec.decoding.steps import fuse

    assert fuse(np.float32(-1.0), [-2.0, -3.0], [-0.5, 0.0]).tolist() == [-3.5, -4.0]
    with pytest.raises(ValueError, match=r"a fused score left float32's range \(-3.0\d*e\+38 so far, log-prob -1.0, prior "
                                         r"increment -1e\+38\): lower prior_weight"):
        fuse(np.float32(-3e38), [-2.0, -1.0], [0.0, -1e38])


# Jumped suffixes riding the next step's forward (beam mode): the same titles and scores as a forward of their own.


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
