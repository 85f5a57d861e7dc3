"""ItemConstraints and the prior inside the mask: brute force, both kernels, every score dtype, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brute import complete
from constrained_rec import TitleTrie, TitleTrieProcessor
from constrained_rec.decoding.constraints import ItemConstraints

EOS, PAD = 2, 0
VOCAB = 12
BACKENDS = ["numba", "torch"]
TOKENS = st.integers(min_value=3, max_value=6)  # few values: shared, duplicate and prefix titles are common


@st.composite
def catalogs_with_priors(draw, max_prompts=2):
    seqs = draw(st.lists(st.lists(TOKENS, min_size=1, max_size=4), min_size=1, max_size=9))
    item_ids = draw(st.permutations(list(range(50, 50 + len(seqs)))))  # builder order != sorted order
    num_prompts = draw(st.integers(1, max_prompts))
    log_prior = np.array(draw(st.lists(st.lists(st.one_of(st.floats(-8, 0), st.just(-math.inf)),
                                                min_size=len(seqs), max_size=len(seqs)),
                                       min_size=num_prompts, max_size=num_prompts)))
    exclude = [set(draw(st.lists(st.sampled_from(item_ids), max_size=len(seqs)))) for _ in range(num_prompts)]
    for p in range(num_prompts):  # keep one item of positive mass per prompt
        keep = draw(st.integers(0, len(seqs) - 1))
        log_prior[p, keep] = draw(st.floats(-8, 0))
        exclude[p].discard(item_ids[keep])
    return seqs, list(item_ids), log_prior, exclude


def brute_mass(seqs, item_ids, log_prior_row, excluded, title):
    """M(title) by brute force: the renormalised prior mass of the allowed items with exactly this title."""
    full = complete(seqs, EOS)
    mass = np.array([0.0 if i in excluded else math.exp(v) for i, v in zip(item_ids, log_prior_row)])
    return sum(m for m, s in zip(mass, full) if s == list(title)) / mass.sum()


def increments_along(proc, title, dtype=torch.float64):
    """The processor's per-token output on zero scores along `title`: the prior increments, one row per prefix."""
    out = []
    for d in range(len(title)):
        scores = torch.zeros(1, VOCAB, dtype=dtype)
        proc(torch.tensor([title[:d]], dtype=torch.long).reshape(1, d), scores)
        out.append(scores[0, title[d]].item())
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(case=catalogs_with_priors(max_prompts=1), weight=st.sampled_from([0.0, 0.5, 1.0, 2.5]))
def test_increments_telescope_to_weighted_log_mass(backend, case, weight):
    seqs, item_ids, log_prior, exclude = case
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    proc = TitleTrieProcessor(trie, 0, exclude=exclude, item_log_prior=log_prior, prior_weight=weight, backend=backend)
    for title in map(list, trie.sequences()):
        mass = brute_mass(seqs, item_ids, log_prior[0], exclude[0], title)
        if mass == 0:  # zero mass is masked: a -inf increment on the way, or a prefix with nothing left
            try:
                assert not all(np.isfinite(increments_along(proc, title)))
            except ValueError as err:
                assert "excluded (or has zero prior mass)" in str(err)
            continue
        increments = increments_along(proc, title)
        assert all(i <= 0 for i in increments)
        assert sum(increments) == pytest.approx(weight * math.log(mass), abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(case=catalogs_with_priors(), steps=st.integers(0, 4), data=st.data())
def test_zero_mass_is_exclusion(backend, case, steps, data):
    """A prior of -inf on a set of items masks exactly what excluding them masks."""
    seqs, item_ids, log_prior, _ = case
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    zero = [{i for i, v in zip(item_ids, row) if v == -math.inf} for row in log_prior]
    with_prior = TitleTrieProcessor(trie, 0, item_log_prior=log_prior, backend=backend)
    with_exclude = TitleTrieProcessor(trie, 0, exclude=zero, backend=backend)
    paths = [p for p in complete(seqs, EOS)]
    rows = [data.draw(st.sampled_from(paths))[:steps] for _ in range(len(zero))]
    rows = [(r + [PAD] * steps)[:steps] for r in rows]
    ids = torch.tensor(rows, dtype=torch.long).reshape(len(rows), steps)
    outcomes = []
    for proc in (with_prior, with_exclude):
        try:
            outcomes.append(torch.isfinite(proc(ids, torch.zeros(len(rows), VOCAB))))
        except ValueError as err:
            outcomes.append(str(err).split(":")[0])
    assert outcomes[0] == outcomes[1] if isinstance(outcomes[0], str) else torch.equal(outcomes[0], outcomes[1])


@settings(max_examples=80, deadline=None)
@given(case=catalogs_with_priors(), steps=st.integers(0, 4), dtype=st.sampled_from(
    [torch.float32, torch.float16, torch.bfloat16, torch.float64]), with_prior=st.booleans(), data=st.data())
def test_numba_and_torch_kernels_agree_on_any_generated_ids(case, steps, dtype, with_prior, data):
    """Rows drawn from the whole vocabulary (off-trie rows too) and trie paths: same scores or the same error."""
    seqs, item_ids, log_prior, exclude = case
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    rows_per_prompt = data.draw(st.integers(1, 3))
    paths = complete(seqs, EOS)
    rows = []
    for _ in range(len(exclude) * rows_per_prompt):
        if data.draw(st.booleans()):
            rows.append(data.draw(st.lists(st.integers(0, 40), min_size=steps, max_size=steps)))
        else:
            rows.append((data.draw(st.sampled_from(paths)) + [PAD] * steps)[:steps])
    ids = torch.cat([torch.full((len(rows), 1), 7), torch.tensor(rows, dtype=torch.long).reshape(len(rows), steps)], 1)
    scores = torch.randn(len(rows), 41).to(dtype)
    kwargs = {"item_log_prior": log_prior} if with_prior else {}
    outs = []
    for backend in BACKENDS:
        proc = TitleTrieProcessor(trie, 1, exclude=exclude, pad_token_id=PAD, backend=backend, **kwargs)
        try:
            outs.append(proc(ids, scores.clone()))
        except ValueError as err:
            outs.append(str(err))
    if isinstance(outs[0], str) or isinstance(outs[1], str):
        assert outs[0] == outs[1]
    else:
        assert torch.equal(torch.isfinite(outs[0]), torch.isfinite(outs[1]))
        torch.testing.assert_close(outs[0].double(), outs[1].double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_prior_in_every_score_dtype(backend, dtype):
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=EOS, item_ids=[10, 11, 12])
    prior = np.log([[0.5, 0.25, 0.25]])
    proc = TitleTrieProcessor(trie, 0, item_log_prior=prior, prior_weight=2.0, backend=backend)
    scores = torch.full((1, VOCAB), 1.0, dtype=dtype)
    out = proc(torch.zeros(1, 0, dtype=torch.long), scores)
    assert out.dtype == dtype
    expected = {5: 1 + 2 * math.log(0.75), 8: 1 + 2 * math.log(0.25)}
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [5, 8]
    for token, value in expected.items():
        assert out[0, token].item() == pytest.approx(value, rel=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6)
    # Under [5]: 6 holds 2/3 of the mass, 7 a third; a tail adds nothing; a finished row gets no increment.
    out = proc(torch.tensor([[5], [8]]), torch.zeros(2, VOCAB, dtype=dtype))
    assert out[0, 6].item() == pytest.approx(2 * math.log(2 / 3), rel=1e-2)
    assert out[1, EOS].item() == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"item_log_prior": np.array([[0.0, -np.inf, -1.0], [-np.inf] * 3])}, r"item_log_prior\[1\]` puts no mass"),
        ({"item_log_prior": np.array([[0.0, 0.0, -np.inf]]), "exclude": [{10, 11}]}, r"item_log_prior\[0\]` puts no mass"),
        ({"item_log_prior": np.array([[0.0, np.nan, 0.0]])}, r"item_log_prior\[0, 1\]` is NaN"),
        ({"item_log_prior": np.array([[0.0, np.inf, 0.0]])}, r"item_log_prior\[0, 1\]` is \+inf"),
        ({"item_log_prior": np.zeros((1, 2))}, r"shape \(prompts, 3\) .* but has shape \(1, 2\)"),
        ({"item_log_prior": np.zeros(3)}, r"but has shape \(3,\)"),
        ({"item_log_prior": [[0.0, 0.0, 0.0], [0.0, 0.0]]}, r"shape \(prompts, 3\), but its rows have the lengths \[3, 2\]"),
        ({"item_log_prior": [[0.0, 0.0], 0.0]}, r"shape \(prompts, 3\), but its rows have the lengths \[2, None\]"),
        ({"item_log_prior": np.zeros((1, 3), dtype=int)}, "has to hold floats, but has dtype int"),
        ({"item_log_prior": torch.zeros(1, 3, dtype=torch.long)}, "has to hold floats, but has dtype torch.int64"),
        ({"item_log_prior": np.zeros((1, 3)), "prior_weight": -1.0}, "prior_weight` has to be a finite number >= 0"),
        ({"item_log_prior": np.zeros((1, 3)), "prior_weight": math.inf}, "but is inf"),
        ({"item_log_prior": np.zeros((1, 3)), "prior_weight": True}, "but is True"),
        ({"item_log_prior": np.zeros((2, 3)), "exclude": [set()]}, r"exclude: 1, item_log_prior: 2"),
        ({"exclude": [{1.5}]}, r"exclude\[0\]` holds 1.5 \(float\); item ids are ints"),
        ({"exclude": [{"10"}]}, r"holds '10' \(str\)"),
        ({"exclude": [{True}]}, r"holds True \(bool\)"),
        ({"exclude": [{99}]}, r"item ids \[99\] are not in the trie's catalog"),
        ({"exclude": [{10, 11, 12}]}, r"exclude\[0\]` excludes all 3 catalog items"),
    ],
)
def test_bad_constraints_are_clear_errors(kwargs, message):
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=EOS, item_ids=[10, 11, 12])
    with pytest.raises(ValueError, match=message):
        ItemConstraints.build(trie, **kwargs)
    with pytest.raises(ValueError, match=message):
        TitleTrieProcessor(trie, 0, **kwargs)


def test_prior_columns_follow_the_builder_order():
    # Titles are sorted internally ([3] < [9]); column 0 is item 70, the first id given.
    trie = TitleTrie.from_token_sequences([[9], [3]], eos_token_id=EOS, item_ids=[70, 20])
    proc = TitleTrieProcessor(trie, 0, item_log_prior=np.log([[0.9, 0.1]]))
    out = proc(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, VOCAB, dtype=torch.float64))
    assert out[0, 9].item() == pytest.approx(math.log(0.9)) and out[0, 3].item() == pytest.approx(math.log(0.1))


def test_constraints_are_consumed_unchanged_and_checked_against_their_trie():
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=EOS, item_ids=[10, 11, 12])
    other = TitleTrie.from_token_sequences([[5, 6], [8]], eos_token_id=EOS)
    constraints = ItemConstraints.build(trie, exclude=[{12}])
    scores = TitleTrieProcessor(trie, 0, constraints=constraints)(torch.zeros(1, 0, dtype=torch.long),
                                                                  torch.zeros(1, VOCAB))
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [5]
    with pytest.raises(ValueError, match="were built for TitleTrie"):
        TitleTrieProcessor(other, 0, constraints=constraints)
    with pytest.raises(ValueError, match="not both"):
        TitleTrieProcessor(trie, 0, constraints=constraints, exclude=[set()])
    assert not constraints.kernel_arrays.excluded.flags.writeable
