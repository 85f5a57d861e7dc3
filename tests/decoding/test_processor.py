"""TitleTrieProcessor: masks equal brute force (both kernels), errors, and real generate() calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from brute import allowed_next, complete
from conftest import make_tiny_llama
from constrained_rec import TitleTrie, TitleTrieProcessor

EOS, PAD = 2, 0
VOCAB = 12
TOKENS = st.integers(min_value=3, max_value=VOCAB - 1)
BACKENDS = ["numba", "torch"]


@st.composite
def batches(draw):
    """A catalog, a beam layout, per-prompt exclusions and generated rows that are trie paths or finished."""
    seqs = draw(st.lists(st.lists(TOKENS, min_size=1, max_size=5), min_size=1, max_size=10))
    item_ids = list(range(100, 100 + len(seqs)))
    num_prompts = draw(st.integers(1, 3))
    rows_per_prompt = draw(st.integers(1, 4))
    exclude = None
    if draw(st.booleans()):
        exclude = [set(draw(st.lists(st.sampled_from(item_ids), max_size=len(seqs) - 1))) for _ in range(num_prompts)]
    steps = draw(st.integers(0, 6))
    paths = complete(seqs, EOS)
    rows = []
    for r in range(num_prompts * rows_per_prompt):
        excluded = exclude[r // rows_per_prompt] if exclude else set()
        live = [p for p, item in zip(paths, item_ids) if item not in excluded]
        path = draw(st.sampled_from(live))
        # Rows that finished earlier carry padding after EOS; rows still running are a proper prefix.
        row = (path + [PAD] * steps)[:steps] if len(path) <= steps else path[:steps]
        rows.append(row)
    return seqs, item_ids, exclude, rows_per_prompt, rows


def expected_allowed(seqs, item_ids, exclude, rows_per_prompt, row_index, row):
    if EOS in row:
        return [PAD, EOS]
    excluded = exclude[row_index // rows_per_prompt] if exclude else frozenset()
    return allowed_next(seqs, EOS, row, item_ids, excluded)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(batch=batches(), prompt_length=st.integers(0, 3), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_mask_equals_brute_force(backend, batch, prompt_length, dtype):
    seqs, item_ids, exclude, rows_per_prompt, rows = batch
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    proc = TitleTrieProcessor(trie, prompt_length=prompt_length, exclude=exclude, pad_token_id=PAD, backend=backend)
    prompt = torch.full((len(rows), prompt_length), 1, dtype=torch.long)
    input_ids = torch.cat([prompt, torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)], dim=1)
    scores = torch.randn(len(rows), VOCAB).to(dtype)
    original = scores.clone()
    out = proc(input_ids, scores)
    for r, row in enumerate(rows):
        allowed = expected_allowed(seqs, item_ids, exclude, rows_per_prompt, r, row)
        finite = torch.isfinite(out[r]).nonzero().flatten().tolist()
        assert finite == allowed, (r, row)
        assert torch.equal(out[r, allowed], original[r, allowed])
        assert (out[r][~torch.isfinite(out[r])] == float("-inf")).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_off_the_trie_is_an_error_naming_it(backend):
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7]], eos_token_id=EOS)
    proc = TitleTrieProcessor(trie, prompt_length=1, backend=backend)
    input_ids = torch.tensor([[1, 5, 6], [1, 5, 9]])
    with pytest.raises(ValueError, match=r"row 1: generated ids \[5, 9\] are not a path .*token 9 at position 1"):
        proc(input_ids, torch.zeros(2, VOCAB))


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclusion_reaching_a_dead_end_is_an_error(backend):
    # Row 0 already chose the prefix [5]; both titles below it are excluded for its prompt.
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=EOS, item_ids=[1, 2, 3])
    proc = TitleTrieProcessor(trie, prompt_length=0, exclude=[{1, 2}], backend=backend)
    with pytest.raises(ValueError, match=r"row 0 \(prompt 0\): every title that continues .* \[5\] is excluded"):
        proc(torch.tensor([[5]]), torch.zeros(1, VOCAB))
    # At the root the same exclusion leaves item 3.
    scores = proc(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, VOCAB))
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [8]


def test_exclusion_of_every_item_is_refused_up_front():
    trie = TitleTrie.from_token_sequences([[5], [6]], eos_token_id=EOS, item_ids=[1, 2])
    with pytest.raises(ValueError, match=r"exclude\[1\]` excludes all 2 catalog items"):
        TitleTrieProcessor(trie, prompt_length=0, exclude=[{1}, {1, 2}])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt_length": -1}, "prompt_length` must be an integer >= 0, got -1"),
        ({"prompt_length": 2.5}, "got 2.5"),
        ({"exclude": [{99}]}, r"item ids \[99\] are not in the trie's catalog"),
        ({"exclude": "abc"}, "one collection of item ids per prompt"),
        ({"exclude": [5]}, r"exclude\[0\]` has to be a collection of item ids, but is 5"),
        ({"backend": "cuda"}, "backend` has to be one of"),
        ({"pad_token_id": -2}, "pad_token_id"),
    ],
)
def test_init_validates(kwargs, message):
    trie = TitleTrie.from_token_sequences([[5], [6]], eos_token_id=EOS)
    kwargs.setdefault("prompt_length", 0)
    with pytest.raises(ValueError, match=message):
        TitleTrieProcessor(trie, **kwargs)


def test_call_validates_vocab_rows_and_prompt_length():
    trie = TitleTrie.from_token_sequences([[5], [60]], eos_token_id=EOS)
    with pytest.raises(ValueError, match="token id 60 but scores have only 12 columns"):
        TitleTrieProcessor(trie, prompt_length=0)(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, VOCAB))
    proc = TitleTrieProcessor(trie, prompt_length=0, exclude=[set(), set()])
    with pytest.raises(ValueError, match="got 3 rows for 2 prompts"):
        proc(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 64))
    with pytest.raises(ValueError, match="fewer than prompt_length=4"):
        TitleTrieProcessor(trie, prompt_length=4)(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 64))


# ---------------------------------------------------------------- generate() with a tiny random Llama
CATALOG = [[5, 6, 7], [5, 6], [5, 9, 10, 11], [12, 13], [12, 14, 15], [20], [21, 22, 23, 24, 25], [5, 6, 7, 8]]
ITEMS = list(range(1000, 1000 + len(CATALOG)))


def left_padded_batch():
    return {
        "input_ids": torch.tensor([[1, 30, 31, 32], [0, 0, 1, 33], [0, 1, 34, 35]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mode", [{"do_sample": False}, {"do_sample": True, "top_k": 0}, {"num_beams": 4, "num_return_sequences": 4}]
)
def test_generate_yields_complete_catalog_titles(backend, mode):
    model = make_tiny_llama(vocab_size=40)
    trie = TitleTrie.from_token_sequences(CATALOG, eos_token_id=EOS, item_ids=ITEMS)
    inputs = left_padded_batch()
    exclude = [{1000, 1003}, set(), {1005}]
    proc = TitleTrieProcessor(trie, prompt_length=inputs["input_ids"].shape[1], exclude=exclude, pad_token_id=PAD,
                              backend=backend)
    torch.manual_seed(0)
    out = model.generate(**inputs, logits_processor=LogitsProcessorList([proc]), max_new_tokens=trie.max_length,
                         pad_token_id=PAD, eos_token_id=EOS, **mode)
    per_prompt = out.shape[0] // 3
    for prompt in range(3):
        rows = out[prompt * per_prompt : (prompt + 1) * per_prompt, inputs["input_ids"].shape[1] :].tolist()
        items = [trie.output_item_ids(row) for row in rows]
        assert all(len(i) == 1 for i in items), rows  # a complete catalog title, every time
        assert not {i[0] for i in items} & exclude[prompt]
        titles = [tuple(row[: row.index(EOS) + 1]) for row in rows]
        assert len(set(titles)) == len(titles)  # beams are distinct titles


def test_unconstrained_tiny_model_does_not_write_titles_by_itself():
    """Guards the test above: without the processor the same model does not produce catalog titles."""
    model = make_tiny_llama(vocab_size=40)
    trie = TitleTrie.from_token_sequences(CATALOG, eos_token_id=EOS, item_ids=ITEMS)
    out = model.generate(**left_padded_batch(), max_new_tokens=trie.max_length, do_sample=False,
                         pad_token_id=PAD, eos_token_id=EOS)
    assert not all(trie.output_item_ids(row[4:].tolist()) for row in out)


@pytest.mark.parametrize("with_prior", [None, "sum", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_numba_and_torch_kernels_agree_on_a_larger_catalog(with_prior, dtype):
    """Wide nodes (the dense pass, with the prior under either lookahead) need a catalog this large."""
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 500, size=rng.integers(1, 8)).tolist() for _ in range(3000)]
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    paths = complete(seqs, EOS)
    exclude = [set(rng.choice(3000, size=200, replace=False).tolist()) for _ in range(8)]
    rows = []
    for prompt in range(8):  # 8 prompts x 8 rows, each row on a path of an item its prompt keeps
        kept = [i for i in range(3000) if i not in exclude[prompt]]
        for _ in range(8):
            path = paths[kept[rng.integers(len(kept))]]
            rows.append((path + [PAD] * 4)[:4])
    input_ids = torch.tensor(rows)
    scores = torch.randn(64, 512).to(dtype)
    prior = {"item_log_prior": rng.normal(size=(8, 3000)), "prior_lookahead": with_prior} if with_prior else {}
    outs = []
    for depth in (0, 1, 4):  # the root (wide), one token in (wide and narrow nodes), deeper
        for backend in BACKENDS:
            proc = TitleTrieProcessor(trie, 0, exclude=exclude, pad_token_id=PAD, backend=backend, **prior)
            outs.append(proc(input_ids[:, :depth], scores.clone()))
        torch.testing.assert_close(outs[-2].double(), outs[-1].double(), rtol=1e-6, atol=0)
        assert torch.equal(torch.isfinite(outs[-2]), torch.isfinite(outs[-1]))
        assert torch.isinf(outs[-1]).any() and torch.isfinite(outs[-1]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_nodes_with_few_children_for_the_vocabulary_keep_exactly_their_allowed_scores(dtype):
    """A wide node (over 64 children) with fewer than vocab / 8 of them is masked by a fill and a put-back,
    not a column-by-column select: same allowed tokens and scores as brute force, with exclusions."""
    rng = np.random.default_rng(1)
    seqs = [rng.integers(3, 150, size=rng.integers(1, 6)).tolist() for _ in range(600)]
    item_ids = list(range(600))
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    exclude = [set(rng.choice(600, size=100, replace=False).tolist()) for _ in range(4)]
    paths = complete(seqs, EOS)
    rows = []
    for prompt in range(4):
        kept = [i for i in item_ids if i not in exclude[prompt]]
        rows += [paths[kept[rng.integers(len(kept))]][:1] for _ in range(3)]
    for depth in (0, 1):
        proc = TitleTrieProcessor(trie, 0, exclude=exclude, pad_token_id=PAD, backend="numba")
        scores = torch.randn(12, 4096).to(dtype)
        out = proc(torch.tensor(rows)[:, :depth], scores.clone())
        for r, row in enumerate(rows):
            allowed = allowed_next(seqs, EOS, row[:depth], item_ids, exclude[r // 3])
            assert torch.isfinite(out[r]).nonzero().flatten().tolist() == allowed
            assert torch.equal(out[r, allowed], scores[r, allowed])
            assert (out[r][~torch.isfinite(out[r])] == float("-inf")).all()


@pytest.mark.parametrize("vocab", [160, 600, 4096])  # few non-children, neither few, few children
@pytest.mark.parametrize("with_prior", [False, True])
def test_every_fill_of_a_wide_node_masks_exactly(vocab, with_prior):
    """The root of this catalog is wide (about 147 children), and the rows of four prompts with their own exclusions
    sit there together: at vocab 160 only the non-children are written -inf (no prior), at 4096 the row is filled
    and its allowed scores put back, at 600 it is selected (or, with a prior, rewritten in one pass). Without a
    prior the allowed tokens are brute force's and their scores untouched; with one the Numba kernel equals the
    torch kernel bit for bit (both add the float32-rounded increment in float32)."""
    rng = np.random.default_rng(2)
    seqs = [rng.integers(3, 150, size=rng.integers(1, 6)).tolist() for _ in range(600)]
    item_ids = list(range(600))
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    exclude = [set(rng.choice(600, size=150, replace=False).tolist()) for _ in range(4)]
    prior = {"item_log_prior": rng.normal(size=(4, 600)) * 3} if with_prior else {}
    scores = torch.randn(12, vocab)
    scores[::5, 3:6] = float("-inf")  # tokens another processor banned
    ids = torch.zeros(12, 0, dtype=torch.long)
    outs = [TitleTrieProcessor(trie, 0, exclude=exclude, pad_token_id=PAD, backend=backend, **prior)(ids, scores.clone())
            for backend in BACKENDS]
    assert torch.equal(outs[0], outs[1])
    for r in range(12):
        allowed = allowed_next(seqs, EOS, [], item_ids, exclude[r // 3])
        assert len(allowed) > 64  # a wide node
        kept = torch.isfinite(outs[0][r]).nonzero().flatten().tolist()
        assert set(kept) == set(allowed) - ({3, 4, 5} if r % 5 == 0 else set())
        assert (outs[0][r][~torch.isfinite(outs[0][r])] == float("-inf")).all()
        if not with_prior:
            assert torch.equal(outs[0][r, allowed], scores[r, allowed])


@pytest.mark.parametrize("vocab", [600, 4096])  # the dense pass and the sparse put-back
def test_a_fused_score_that_leaves_float32_at_a_wide_node_is_an_error(vocab):
    """Row 1 only: the overflow is found by either fill of a wide node (row 0 stays fine)."""
    rng = np.random.default_rng(3)
    seqs = [rng.integers(3, 150, size=rng.integers(1, 6)).tolist() for _ in range(600)]
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    first = seqs[0][0]
    prior = np.where([s[0] == first for s in seqs], -30.0, 0.0)[None]  # the child at `first`: about -30 nats
    scores = torch.zeros(2, vocab)
    scores[1, first] = -3e38  # -3e38 plus 5e36 * -30 is beyond float32
    for weight, fails in ((1.0, False), (5e36, True)):
        proc = TitleTrieProcessor(trie, 0, item_log_prior=prior, prior_weight=weight, backend="numba")
        if fails:
            with pytest.raises(ValueError, match=r"row 1: .* falls below the range of the scores"):
                proc(torch.zeros(2, 0, dtype=torch.long), scores.clone())
        else:
            assert torch.isfinite(proc(torch.zeros(2, 0, dtype=torch.long), scores.clone())[1, first])


# ---------------------------------------------------------------- hardening (issue 10)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "pad, eos, message",
    [(10**12, EOS, f"pad_token_id {10**12} is not a column of the scores, which have 32"),
     (32, EOS, "pad_token_id 32 is not a column of the scores, which have 32"),
     (PAD, 40, "the trie holds token id 40 but scores have only 32 columns")],  # EOS ends every title
)
def test_pad_or_eos_outside_the_scores_is_an_error(backend, pad, eos, message):
    trie = TitleTrie.from_token_sequences([[5, 6], [7]], eos_token_id=eos)
    proc = TitleTrieProcessor(trie, 1, pad_token_id=pad, backend=backend)
    with pytest.raises(ValueError, match=message):
        proc(torch.tensor([[1, 7, eos]]), torch.zeros(1, 32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_id_beyond_the_trie_tokens_is_off_the_trie(backend):
    # With edge keys parent * (max token + 2) + token, id 13 after the root aliased node 1's edge to 4.
    trie = TitleTrie.from_token_sequences([[3, 4], [3, 5], [4, 6], [4, 7]], eos_token_id=EOS)
    proc = TitleTrieProcessor(trie, 1, backend=backend)
    with pytest.raises(ValueError, match=r"row 0: generated ids \[13\] are not a path"):
        proc(torch.tensor([[1, 13]]), torch.zeros(1, 32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclude_for_fewer_prompts_than_the_batch_is_an_error(backend):
    trie = TitleTrie.from_token_sequences([[5], [6], [7]], eos_token_id=EOS, item_ids=[1, 2, 3])
    proc = TitleTrieProcessor(trie, 2, exclude=[{1}, {2}], backend=backend)
    four_prompts = torch.tensor([[1, 20], [1, 21], [1, 22], [1, 23]])  # greedy: one row per prompt
    with pytest.raises(ValueError, match=r"cover 2 prompts, so each owns 2 consecutive rows, but the rows of prompt 0"):
        proc(four_prompts, torch.zeros(4, VOCAB))
    two_prompts_two_beams = torch.tensor([[1, 20], [1, 20], [1, 21], [1, 21]])
    scores = proc(two_prompts_two_beams, torch.zeros(4, VOCAB))
    assert torch.isfinite(scores).nonzero()[:, 1].tolist() == [6, 7, 6, 7, 5, 7, 5, 7]


@pytest.mark.parametrize(
    "options",
    [{"no_repeat_ngram_size": 2}, {"bad_words_ids": [[6]]}, {"min_new_tokens": 8}],
    ids=["no_repeat_ngram", "bad_words", "min_new_tokens"],
)
@pytest.mark.parametrize("mode", [{"do_sample": False}, {"num_beams": 2}])
def test_processors_that_ban_every_allowed_token_give_a_clear_error(options, mode):
    # Every title starts [5, 6], a bigram of the prompt; min_new_tokens bans EOS after the longest title.
    model = make_tiny_llama(vocab_size=40)
    trie = TitleTrie.from_token_sequences([[5, 6, 7], [5, 6]], eos_token_id=EOS)
    inputs = {"input_ids": torch.tensor([[1, 5, 6, 9]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    proc = TitleTrieProcessor(trie, prompt_length=4, pad_token_id=PAD)
    with pytest.raises(ValueError, match=r"row \d: another logits processor already scored -inf every token the trie "
                                         r"allows after the generated ids \[5(, 6, 7)?\] \(tokens \[(6|2)\]\)"):
        model.generate(**inputs, logits_processor=LogitsProcessorList([proc]), max_new_tokens=trie.max_length,
                       pad_token_id=PAD, eos_token_id=EOS, **options, **mode)


def test_sampling_warpers_run_after_the_processor():
    """transformers applies top_k / top_p after the passed processors: they pick among allowed tokens only."""
    model = make_tiny_llama(vocab_size=40)
    trie = TitleTrie.from_token_sequences(CATALOG, eos_token_id=EOS, item_ids=ITEMS)
    inputs = left_padded_batch()
    proc = TitleTrieProcessor(trie, prompt_length=inputs["input_ids"].shape[1], pad_token_id=PAD)
    torch.manual_seed(0)
    for options in ({"top_k": 1}, {"top_p": 0.05, "top_k": 0}):
        out = model.generate(**inputs, logits_processor=LogitsProcessorList([proc]), do_sample=True,
                             max_new_tokens=trie.max_length, pad_token_id=PAD, eos_token_id=EOS,
                             num_return_sequences=3, **options)
        assert all(len(trie.output_item_ids(row[4:].tolist())) == 1 for row in out)
