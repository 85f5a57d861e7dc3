"""ItemConstraints and the prior inside the mask: brute force, both kernels, every score dtype, bad input."""

from __future__ import annotations

import math
import re

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
# Peaked priors: masses of 1e-20, e^-700 or e^-10000 next to 1, far below float64's resolution of a sum near 1.
LOG_PRIOR = st.one_of(st.floats(-8, 0), st.just(-math.inf), st.sampled_from([-46.0, -700.0, -1e4]))


@st.composite
def catalogs_with_priors(draw, max_prompts=2):
    seqs = draw(st.lists(st.lists(TOKENS, min_size=1, max_size=4), min_size=1, max_size=9))
    item_ids = draw(st.permutations(list(range(50, 50 + len(seqs)))))  # builder order != sorted order
    num_prompts = draw(st.integers(1, max_prompts))
    log_prior = np.array(draw(st.lists(st.lists(LOG_PRIOR, min_size=len(seqs), max_size=len(seqs)),
                                       min_size=num_prompts, max_size=num_prompts)))
    exclude = [set(draw(st.lists(st.sampled_from(item_ids), max_size=len(seqs)))) for _ in range(num_prompts)]
    for p in range(num_prompts):  # keep one item of positive mass per prompt
        keep = draw(st.integers(0, len(seqs) - 1))
        log_prior[p, keep] = draw(st.floats(-8, 0))
        exclude[p].discard(item_ids[keep])
    return seqs, list(item_ids), log_prior, exclude


def brute_lookahead(seqs, item_ids, log_prior_row, excluded, prefix, lookahead):
    """L(prefix) by brute force, in log space: log of the (renormalised) mass of the allowed items whose titles
    start with `prefix` ("sum"), or of the largest such title's mass ("max"); -inf if there is none."""
    full = complete(seqs, EOS)
    logs = np.array([-math.inf if i in excluded else v for i, v in zip(item_ids, log_prior_row)])
    total = np.logaddexp.reduce(logs)
    titles = {tuple(s) for s in full}
    title_log = {t: np.logaddexp.reduce(logs[[s == list(t) for s in full]]) - total for t in titles}
    under = [value for t, value in title_log.items() if list(t[: len(prefix)]) == list(prefix)]
    if lookahead == "sum":
        return float(np.logaddexp.reduce(np.array(under)))
    return float(max(under))


def increments_along(proc, title, dtype=torch.float64):
    """The processor's per-token output on zero scores along `title`: the prior increments, one row per prefix."""
    out = []
    for d in range(len(title)):
        scores = torch.zeros(1, VOCAB, dtype=dtype)
        proc(torch.tensor([title[:d]], dtype=torch.long).reshape(1, d), scores)
        out.append(scores[0, title[d]].item())
    return out


@pytest.mark.parametrize("lookahead", ["sum", "max"])
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(case=catalogs_with_priors(max_prompts=1), weight=st.sampled_from([0.0, 0.5, 1.0, 2.5]))
def test_increments_are_exact_lookahead_differences_and_telescope(backend, lookahead, case, weight):
    """Each increment is w (L(h + t) - L(h)) to float64 rounding, peaked priors included (prefix sums floored a
    mass of 1e-20 next to 1), and a title's increments sum to w (log M(title) - L(root))."""
    seqs, item_ids, log_prior, exclude = case
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    proc = TitleTrieProcessor(trie, 0, exclude=exclude, item_log_prior=log_prior, prior_weight=weight,
                              backend=backend, prior_lookahead=lookahead)
    constraints = proc.constraints
    root = brute_lookahead(seqs, item_ids, log_prior[0], exclude[0], [], lookahead)
    assert constraints.prior_offset(0) == pytest.approx(weight * root, rel=1e-12, abs=1e-12)
    for seq, title in enumerate(map(list, trie.sequences())):
        log_mass = brute_lookahead(seqs, item_ids, log_prior[0], exclude[0], title, "sum")
        assert constraints.title_log_mass(0, seq) == pytest.approx(log_mass, rel=1e-12, abs=1e-12)
        if log_mass == -math.inf:  # zero mass is masked: a -inf increment on the way, or a prefix with nothing left
            try:
                assert not all(np.isfinite(increments_along(proc, title)))
            except ValueError as err:
                assert "excluded (or has zero prior mass)" in str(err)
            continue
        increments = increments_along(proc, title)
        expected = [weight * (brute_lookahead(seqs, item_ids, log_prior[0], exclude[0], title[: d + 1], lookahead)
                              - brute_lookahead(seqs, item_ids, log_prior[0], exclude[0], title[:d], lookahead))
                    for d in range(len(title))]
        assert increments == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert all(i <= 0 for i in increments)
        assert sum(increments) == pytest.approx(weight * (log_mass - root), rel=1e-9, abs=1e-9)


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
    [torch.float32, torch.float16, torch.bfloat16, torch.float64]), with_prior=st.booleans(),
    lookahead=st.sampled_from(["sum", "max"]), data=st.data())
def test_numba_and_torch_kernels_agree_on_any_generated_ids(case, steps, dtype, with_prior, lookahead, data):
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
    kwargs = {"item_log_prior": log_prior, "prior_lookahead": lookahead} if with_prior else {}
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
        ({"item_log_prior": np.log([[0.5, 0.25, 0.25]]), "prior_weight": 1e39},
         r"`prior_weight` 1e\+39 times prompt 0's prior log-mass range \(1.38629 nats .* beyond float32"),
        ({"item_log_prior": np.array([[0.0, -1e4, -1e4]]), "prior_weight": 2.0**1023},
         r"prior_weight` 8.98846567431158e\+307 times .* \(10000 nats .*Use prior_weight <= 3.40282e\+34"),
        ({"item_log_prior": np.array([[1e308, -1e308, 0.0]])}, r"item_log_prior\[0, 1\]` = -1e\+308 lies more than"),
        ({"item_log_prior": np.zeros((1, 3)), "prior_lookahead": "mean"}, r"prior_lookahead` has to be one of"),
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, weight", [(torch.float16, 1e4), (torch.float32, 5e36)])
def test_a_fused_score_that_leaves_the_dtype_is_an_error_not_a_mask(backend, dtype, weight):
    """Weights that pass the build's float32 check (40 nats of range): -1e4 nats of increment is beyond float16's
    65504, and -2e38 plus a score of -3e38 beyond float32. Either would read as masked (-inf), and generate()
    would go on with arbitrary titles."""
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=EOS, item_ids=[10, 11, 12])
    prior = np.array([[0.0, -20.0, -40.0]])
    proc = TitleTrieProcessor(trie, 0, item_log_prior=prior, prior_weight=weight, backend=backend)
    scores = torch.zeros(1, VOCAB, dtype=dtype)
    scores[0, 8] = -3e38 if dtype == torch.float32 else 0.0
    with pytest.raises(ValueError, match=rf"row 0: .*\(prior_weight={re.escape(repr(weight))}\) falls below the range of the scores"):
        proc(torch.zeros(1, 0, dtype=torch.long), scores)
    # In range it goes through: w = 10 leaves -400 nats at most.
    ok = TitleTrieProcessor(trie, 0, item_log_prior=prior, prior_weight=10.0, backend=backend)
    out = ok(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, VOCAB, dtype=torch.float16))
    assert torch.isfinite(out[0, [5, 8]]).all()


def test_the_prior_is_one_float64_per_trie_node_and_prompt():
    """Memory: per prompt, one value per trie node (about 1.3x the items on ml-100k), no per-item prefix sums."""
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8], [5, 6]], eos_token_id=EOS)
    constraints = ItemConstraints.build(trie, item_log_prior=np.zeros((3, 4)), prior_lookahead="max")
    assert constraints.kernel_arrays.prior_node_log.shape == (3, trie.num_nodes)
    assert constraints.kernel_arrays.prior_node_log.dtype == np.float64
    assert not constraints.kernel_arrays.prior_node_log.flags.writeable
    # The duplicate title [5, 6] holds two of the four items: the best title, half of the mass.
    assert constraints.prior_offset(0) == pytest.approx(math.log(0.5))
    assert constraints.title_log_mass(0, 0) == pytest.approx(math.log(0.5))
