"""Text-free assistants: exact fits, normalised log-probabilities, catalog order, persistence, no leakage."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp

from constrained_rec.collaborative import (
    EASE,
    AssistantData,
    AssistantRecommender,
    DamagedAssistantError,
    SASRec,
    SASRecConfig,
    assistant_data,
    ease_weights,
    fit_assistant,
    histories_before,
    load_assistant,
    sample_rows,
)
from constrained_rec.collaborative.base import exclusion_mask, target_ranks
from constrained_rec.data import InteractionData, SplitConfig, split_positions
from constrained_rec.evaluation.evaluate import EvalConfig, EvalSample, training_item_counts
from constrained_rec.evaluation.metrics import ndcg
from constrained_rec.evaluation.recommenders import MostPopularRecommender

TINY_SASREC = {"dim": 8, "max_length": 6, "batch_size": 16, "max_epochs": 2}
ITEM_IDS = np.arange(3, 3 + 7 * 15, 7)  # non-contiguous ids, so a column is never mistaken for an id


def tiny_data(seed: int = 0, users: int = 40, length: int = 9) -> InteractionData:
    """Random users over 15 items with skewed popularity; titles listed in descending id order."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(ITEM_IDS) + 1)
    rows = []
    for user in range(users):
        items = rng.choice(ITEM_IDS, size=length, replace=False, p=weights / weights.sum())
        rows += [(user, int(item), t) for t, item in enumerate(items)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    titles = {int(i): f"Item {i}" for i in ITEM_IDS[::-1]}
    return InteractionData.from_frame(frame, titles)


def fit(name: str, data: InteractionData, seed: int = 0):
    options = {"sasrec": TINY_SASREC, "ease": {"l2_grid": (0.5, 5.0, 50.0)}}.get(name, {})
    return fit_assistant(name, data, SplitConfig(), seed=seed, **options)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def fitted(data):
    return {name: fit(name, data) for name in ("popularity", "ease", "sasrec")}


# ------------------------------------------------------------------------------------------- EASE
def reference_ease(x: np.ndarray, l2: float) -> np.ndarray:
    """Column by column: ridge regression of item j on every other item (the constraint diag(B) = 0)."""
    items = x.shape[1]
    weights = np.zeros((items, items))
    for j in range(items):
        others = np.delete(np.arange(items), j)
        a = x[:, others]
        weights[others, j] = np.linalg.solve(a.T @ a + l2 * np.eye(items - 1), a.T @ x[:, j])
    return weights


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), users=st.integers(1, 12), items=st.integers(2, 9),
       l2=st.floats(0.05, 100.0))
def test_ease_weights_equal_the_constrained_ridge_reference(seed, users, items, l2):
    x = (np.random.default_rng(seed).random((users, items)) < 0.4).astype(np.float64)
    np.testing.assert_allclose(ease_weights(x, l2), reference_ease(x, l2), rtol=1e-7, atol=1e-9)


def test_ease_fit_chooses_lambda_and_temperature_on_validation(data):
    view = assistant_data(data)
    grid = (0.5, 5.0, 50.0)
    ease = EASE.fit(view, l2_grid=grid)
    column = {int(i): j for j, i in enumerate(view.item_ids)}
    x = np.zeros((len(view.train_sequences), len(view.item_ids)))
    for row, sequence in enumerate(view.train_sequences):
        x[row, [column[int(i)] for i in sequence]] = 1.0
    histories = [np.array([column[int(i)] for i in h]) for h in view.validation_histories]
    targets = np.array([column[int(i)] for i in view.validation_targets])
    excluded = exclusion_mask(histories, len(view.item_ids))
    by_l2 = {}
    for l2 in grid:
        scores = excluded @ reference_ease(x, l2)
        by_l2[l2] = ndcg(target_ranks(scores, excluded, targets), 10).mean()
    assert ease.l2 == max(grid, key=lambda l2: (by_l2[l2], -grid.index(l2)))
    np.testing.assert_allclose(list(ease.fit_info["validation_ndcg@10_by_l2"].values()), list(by_l2.values()),
                               atol=1e-6)
    # The temperature maximises the targets' likelihood among non-history items: a nearby one does worse.
    scores = np.where(excluded, -np.inf, excluded @ ease.weights.astype(np.float64))

    def log_likelihood(temperature):
        return np.mean(log_softmax(scores / temperature, axis=1)[np.arange(len(targets)), targets])

    best = log_likelihood(ease.temperature)
    assert best == pytest.approx(ease.fit_info["validation_log_likelihood"], abs=1e-6)
    assert best >= max(log_likelihood(ease.temperature * 1.2), log_likelihood(ease.temperature / 1.2))
    history = [int(view.item_ids[0]), int(view.item_ids[4])]
    expected = log_softmax(exclusion_mask([np.array([0, 4])], len(view.item_ids)) @ ease.weights.astype(np.float64)
                           / ease.temperature, axis=1)
    np.testing.assert_allclose(ease.item_log_probs([history]), expected, atol=1e-5)


# ----------------------------------------------------------------------------------- the interface
@pytest.mark.parametrize("name", ["popularity", "ease", "sasrec"])
def test_item_log_probs_are_normalised_float32_rows_in_sorted_catalog_order(fitted, data, name):
    assistant = fitted[name]
    assert assistant.item_ids.tolist() == sorted(data.titles)
    histories = [[int(ITEM_IDS[0])], [int(i) for i in ITEM_IDS[[4, 2, 9]]], [int(ITEM_IDS[-1])] * 3]
    log_probs = assistant.item_log_probs(histories)
    assert log_probs.dtype == np.float32 and log_probs.shape == (3, len(ITEM_IDS))
    np.testing.assert_allclose(logsumexp(log_probs.astype(np.float64), axis=1), 0.0, atol=1e-5)
    assert np.isfinite(log_probs).all()


def test_popularity_column_j_is_item_ids_j(data):
    popularity = fit("popularity", data)
    view = assistant_data(data)
    counts = pd.Series(np.concatenate(view.train_sequences)).value_counts()
    expected = np.array([counts.get(int(i), 0) + 1.0 for i in popularity.item_ids])
    np.testing.assert_allclose(np.exp(popularity.item_log_probs([[3]])[0].astype(np.float64)),
                               expected / expected.sum(), rtol=1e-6)


@pytest.mark.parametrize("name", ["popularity", "ease", "sasrec"])
def test_save_load_round_trip_gives_identical_outputs(fitted, tmp_path, name):
    assistant = fitted[name]
    histories = [[int(i) for i in ITEM_IDS[:5]], [int(ITEM_IDS[7])]]
    assistant.save(tmp_path / name)
    loaded = load_assistant(tmp_path / name)
    assert type(loaded) is type(assistant)
    assert np.array_equal(loaded.item_ids, assistant.item_ids)
    assert np.array_equal(loaded.item_log_probs(histories), assistant.item_log_probs(histories))
    with pytest.raises(ValueError, match="not a 'ease'" if name != "ease" else "not a 'sasrec'"):
        (SASRec if name == "ease" else EASE).load(tmp_path / name)


@pytest.mark.parametrize("name", ["popularity", "ease", "sasrec"])
def test_a_save_killed_midway_leaves_no_partial_folder_and_damage_is_named(fitted, tmp_path, name, monkeypatch):
    """Issue 17 item 2: the assistant is written to a temporary folder and renamed; a kill while writing leaves the
    earlier folder (here none) and nothing half-written; a damaged folder is a DamagedAssistantError naming it."""
    assistant = fitted[name]
    target = tmp_path / "assistant"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", killed)
    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        assistant.save(target)
    assert not target.exists() and not list(tmp_path.iterdir())  # no partial folder, no temporary left behind
    monkeypatch.undo()
    assistant.save(target)
    assistant.save(target)  # over an earlier save: replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["assistant"]
    weights = next(p for p in target.iterdir() if p.name != "assistant.json")
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])  # what a killed write left before
    with pytest.raises(DamagedAssistantError, match=re.escape(str(target))):
        load_assistant(target)
    weights.unlink()
    with pytest.raises(DamagedAssistantError, match=re.escape(str(target))):
        load_assistant(target)
    (target / "assistant.json").write_text('{"kind": "popul')
    with pytest.raises(DamagedAssistantError, match="is not readable JSON"):
        load_assistant(target)


def test_sasrec_is_deterministic_for_a_seed(data, fitted):
    histories = [[int(i) for i in ITEM_IDS[:4]], [int(ITEM_IDS[9]), int(ITEM_IDS[2])]]
    state = torch.random.get_rng_state()
    again = fit("sasrec", data, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    assert np.array_equal(again.item_log_probs(histories), fitted["sasrec"].item_log_probs(histories))
    assert again.fit_info["history"] == fitted["sasrec"].fit_info["history"]
    other = fit("sasrec", data, seed=1)
    assert not np.array_equal(other.item_log_probs(histories), again.item_log_probs(histories))


def test_sasrec_sees_at_most_max_length_items(fitted):
    sasrec = fitted["sasrec"]
    length = sasrec.config.max_length
    recent = [int(i) for i in ITEM_IDS[:length]]
    assert np.array_equal(sasrec.item_log_probs([[int(ITEM_IDS[-1])] * 4 + recent]), sasrec.item_log_probs([recent]))


# --------------------------------------------------------------------------------------- no leakage
def test_only_training_interactions_are_fitted():
    # Item 500 is only ever a validation target, item 600 only a test target: neither may be counted.
    frame = pd.DataFrame({
        "user_id": [1, 1, 1, 1, 2, 2, 2, 2],
        "item_id": [10, 20, 500, 600, 20, 10, 30, 600],
        "timestamp": [1, 2, 3, 4, 1, 2, 3, 4],
    })
    data = InteractionData.from_frame(frame, {i: f"t{i}" for i in (10, 20, 30, 500, 600)})
    view = assistant_data(data)
    assert [s.tolist() for s in view.train_sequences] == [[10, 20], [20, 10]]
    assert view.validation_targets.tolist() == [500, 30]
    assert [h.tolist() for h in view.validation_histories] == [[10, 20], [20, 10]]
    popularity = fit_assistant("popularity", data)
    assert dict(zip(popularity.item_ids.tolist(), popularity.counts.tolist())) == {10: 2, 20: 2, 30: 0, 500: 0, 600: 0}
    row = popularity.item_log_probs([[10]])[0]
    assert row[3] == row[4] == row[2] < row[0]
    # The same rows as the pipeline's held-out ones.
    positions = split_positions(data, SplitConfig())
    held_out = np.r_[positions["validation"], positions["test"]]
    assert dict(training_item_counts(data.interactions, held_out)) == {10: 2, 20: 2}


def test_ease_never_sees_held_out_targets(data):
    """Changing only the validation and test targets leaves EASE's fitted weights unchanged."""
    frame = data.interactions.copy()
    positions = split_positions(data, SplitConfig())
    items = frame["item_id"].to_numpy().copy()
    items[positions["test"]] = ITEM_IDS[0]
    items[positions["validation"]] = ITEM_IDS[-1]
    frame["item_id"] = items
    changed = InteractionData.from_frame(frame, data.titles)
    grid = {"l2_grid": (5.0,)}
    assert np.array_equal(fit_assistant("ease", data, **grid).weights, fit_assistant("ease", changed, **grid).weights)


def test_sample_rows_locate_the_targets_of_make_splits(data):
    from constrained_rec.data import make_splits

    config = SplitConfig(max_history=3)
    splits = make_splits(data, config)
    positions = split_positions(data, config)
    for split in ("validation", "test"):
        rows = sample_rows(data, splits[split])
        assert rows.tolist() == positions[split].tolist()
        full = histories_before(data, rows)
        assert [h[-3:].tolist() for h in full] == [list(h) for h in splits[split]["history_item_ids"]]
    with pytest.raises(ValueError, match="no interaction of user 0 has target 3 after history"):
        sample_rows(data, [{"user_id": 0, "target_item_id": 3, "history_item_ids": [999]}])


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", ["popularity", "ease", "sasrec"])
def test_unknown_item_in_a_history_is_an_error_naming_it(fitted, name):
    with pytest.raises(ValueError, match="item id 4 in a history"):
        fitted[name].item_log_probs([[int(ITEM_IDS[0])], [int(ITEM_IDS[1]), 4]])


def test_unknown_assistant_or_option_is_an_error(data):
    with pytest.raises(ValueError, match="unknown assistant 'bpr'.*'ease'"):
        fit_assistant("bpr", data)
    with pytest.raises(ValueError, match="'epochs'"):
        fit_assistant("sasrec", data, epochs=3)
    with pytest.raises(ValueError, match="'l2'"):
        fit_assistant("ease", data, l2=3.0)
    with pytest.raises(ValueError, match="history 1 is empty"):
        SASRec.fit(assistant_data(data), SASRecConfig(**TINY_SASREC)).item_log_probs([[3], []])
    view = assistant_data(data)
    no_validation = AssistantData(view.item_ids, view.train_sequences, [], np.zeros(0, np.int64))
    for assistant in (EASE, SASRec):
        with pytest.raises(ValueError, match="no validation samples"):
            assistant.fit(no_validation)


# ------------------------------------------------------------------------------------- as recommender
def test_recommender_ranks_the_whole_catalog_excluding_history(data, fitted):
    rows = split_positions(data, SplitConfig())["test"]
    histories = histories_before(data, rows)
    frame = data.interactions
    samples = [EvalSample(i, int(frame["user_id"].iat[r]), "", int(frame["item_id"].iat[r]),
                          data.titles[int(frame["item_id"].iat[r])], frozenset(h.tolist()))
               for i, (r, h) in enumerate(zip(rows.tolist(), histories))]
    config = EvalConfig(ks=(1, 5))
    ease = fitted["ease"]
    records = AssistantRecommender(ease, histories, data.titles, config)(samples)["ease"]
    log_probs = ease.item_log_probs(histories)
    for record, sample, scores in zip(records, samples, log_probs):
        allowed = [j for j in np.lexsort((np.arange(len(scores)), -scores)) if ease.item_ids[j] not in sample.exclude]
        assert record["item_ids"] == [int(ease.item_ids[j]) for j in allowed[:5]]
        assert record["scores"] == [float(scores[j]) for j in allowed[:5]]
    # Popularity is the evaluation's most-popular, record for record.
    held_out = np.r_[split_positions(data, SplitConfig())["validation"], rows]
    popular = MostPopularRecommender(training_item_counts(frame, held_out), data.titles, config)(samples)
    ours = AssistantRecommender(fitted["popularity"], histories, data.titles, config)(samples)["popularity"]
    for mine, theirs in zip(ours, popular["most-popular"]):
        assert mine.keys() == theirs.keys()
        assert {k: v for k, v in mine.items() if k != "scores"} == {k: v for k, v in theirs.items() if k != "scores"}


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.slow
def test_sasrec_beats_popularity_on_ml100k_validation():
    from constrained_rec.data import load_interactions

    data = load_interactions("ml-100k")
    view = assistant_data(data)
    sasrec = fit_assistant("sasrec", data, max_epochs=5)
    popularity = fit_assistant("popularity", data)
    columns = [np.searchsorted(view.item_ids, h) for h in view.validation_histories]
    targets = np.searchsorted(view.item_ids, view.validation_targets)
    excluded = exclusion_mask(columns, len(view.item_ids))

    def validation_ndcg(assistant):
        return ndcg(target_ranks(assistant.item_log_probs(view.validation_histories), excluded, targets), 10).mean()

    assert validation_ndcg(sasrec) == pytest.approx(sasrec.fit_info["validation_ndcg@10"], abs=1e-6)
    assert validation_ndcg(sasrec) > validation_ndcg(popularity) + 0.01
