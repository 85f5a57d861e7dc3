"""The evaluation loop on a tiny random Llama with the real tokenizer: recommenders, resuming, sharding, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_llama
from constrained_rec import TitleTrie
from constrained_rec.evaluation import evaluate as ev
from constrained_rec.evaluation import recommenders
from constrained_rec.evaluation.evaluate import (
    DECODERS,
    EvalConfig,
    EvalSample,
    Recommender,
    consumed_items,
    evaluate,
    method_metrics,
    training_item_counts,
)
from constrained_rec.evaluation.grounding import TitleGrounder, last_token_hidden_states
from constrained_rec.evaluation.predictions import read_predictions
from constrained_rec.evaluation.recommenders import (
    ConstrainedRecommender,
    MostPopularRecommender,
    UnconstrainedRecommender,
    prediction_record,
)
from constrained_rec.trie.tokenization import prompt_token_ids, title_token_ids

CATALOG = {1: "Heat (1995)", 2: "Heat (1995)", 3: "Casino (1995)", 4: "Heat", 5: "Toy Story (1995)",
           6: "Jumanji (1995)", 7: "GoldenEye (1995)", 8: "Babe (1995)"}


@pytest.fixture(scope="module")
def tokenizer():
    from constrained_rec.model import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=49152, seed=1)


@pytest.fixture(scope="module")
def trie(tokenizer):
    return TitleTrie.from_titles(list(CATALOG.values()), tokenizer, item_ids=list(CATALOG))


def make_samples(n: int = 5) -> list[EvalSample]:
    titles = list(CATALOG.values())
    return [EvalSample(i, 100 + i, f"### History: {titles[i % 8]}, {titles[(i + 3) % 8]}\n### Response:\n",
                       target_item_id=(i % 8) + 1, target_title=CATALOG[(i % 8) + 1],
                       exclude=frozenset({((i + 1) % 8) + 1, 3})) for i in range(n)]


def total_log_prob(model, tokenizer, prompt: str, title: str) -> float:
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    title_ids = title_token_ids(tokenizer, title)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([prompt_ids + title_ids])).logits[0].float(), dim=-1)
    return sum(log_probs[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(title_ids))


def test_consumed_items_are_everything_before_the_target_interaction():
    frame = pd.DataFrame({"user_id": [7, 7, 7, 7, 9, 9, 9], "item_id": [1, 2, 3, 4, 5, 6, 5],
                          "timestamp": range(7)})
    rows = [{"user_id": 7, "target_item_id": 4, "history_item_ids": [2, 3]},
            {"user_id": 7, "target_item_id": 3, "history_item_ids": [1, 2]},
            {"user_id": 9, "target_item_id": 5, "history_item_ids": [6]}]
    assert consumed_items(frame, rows) == [frozenset({1, 2, 3}), frozenset({1, 2}), frozenset({5, 6})]
    with pytest.raises(ValueError, match="user 8 of the evaluation samples"):
        consumed_items(frame, [{"user_id": 8, "target_item_id": 1, "history_item_ids": []}])
    with pytest.raises(ValueError, match=r"item 4 after history \[1\]\) of user 7 is not in"):
        consumed_items(frame, [{"user_id": 7, "target_item_id": 4, "history_item_ids": [1]}])


def test_training_item_counts_leave_out_held_out_rows():
    frame = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [5, 6, 5, 5, 7], "timestamp": range(5)})
    assert training_item_counts(frame, [2, 4]) == {5: 2, 6: 1}


@pytest.mark.parametrize("decoder", list(DECODERS))  # every registered decoder
def test_constrained_recommender_returns_scored_catalog_items(model, tokenizer, trie, decoder):
    config = EvalConfig(ks=(1, 3), num_beams=4, decoder=decoder)
    samples = make_samples(3)
    records = ConstrainedRecommender(model, tokenizer, trie, config)(samples)["constrained"]
    for sample, record in zip(samples, records):
        assert record["num_valid_outputs"] == record["num_outputs"] == 3
        assert len(record["item_ids"]) == 3 and not set(record["item_ids"]) & sample.exclude
        assert all(CATALOG[i] == t for i, t in zip(record["item_ids"], record["titles"]))
        assert record["scores"] == sorted(record["scores"], reverse=True)
        for title, score in zip(record["titles"], record["scores"]):  # length_penalty 0: total log-probability
            assert score == pytest.approx(total_log_prob(model, tokenizer, sample.prompt, title), abs=1e-3)


def _fused_records(model, tokenizer, trie, decoder, weight, lookahead):
    """Records of LM + prior (a random prior, ``w = weight``) on 3 samples, and each sample's brute-force fused
    score of every allowed title: log p_LM(title) + w log M(title), M the prior mass of the title's allowed items
    over the user's allowed items."""
    rng = np.random.default_rng(5)
    samples = make_samples(3)
    build_order = trie.item_ids_in_build_order().tolist()
    log_prior = np.log(rng.dirichlet(np.full(len(build_order), 0.3), size=len(samples)))
    prior = (lambda batch: log_prior[[s.index for s in batch]]) if weight else None
    config = EvalConfig(ks=(1, 3), num_beams=4, decoder=decoder)
    records = ConstrainedRecommender(model, tokenizer, trie, config, prior=prior, prior_weight=weight,
                                     prior_lookahead=lookahead)(samples)["constrained"]
    fused = []
    for sample in samples:
        allowed = {i: math.exp(log_prior[sample.index, build_order.index(i)]) for i in CATALOG if i not in sample.exclude}
        fused.append({title: total_log_prob(model, tokenizer, sample.prompt, title) + weight * math.log(
                          sum(m for i, m in allowed.items() if CATALOG[i] == title) / sum(allowed.values()))
                      for title in {CATALOG[i] for i in allowed}})
    return records, fused


@pytest.mark.parametrize("weight, lookahead", [(0.0, None), (4.0, None), (4.0, "sum")])
def test_the_exact_decoder_is_the_brute_force_top_k_under_the_fused_score(model, tokenizer, trie, weight, lookahead):
    """Issue 21 item 4: --decoder exact returns the top-K of every catalog title by fused score, proven, under either
    bound (None: its default, max)."""
    records, fused = _fused_records(model, tokenizer, trie, "exact", weight, lookahead)
    for record, scores_of in zip(records, fused):
        best = sorted(scores_of, key=scores_of.get, reverse=True)[:3]
        got = list(dict.fromkeys(record["titles"]))  # a title of two items fills two of the K = 3 items
        assert got == best[: len(got)] and len(record["item_ids"]) == 3
        assert record["budget_exhausted"] is False and record["proven"] == 3
        assert 0 < record["search_forwards"] <= record["nodes_expanded"] == record["search_tokens"]  # a token each
        scores = {title: score for title, score in zip(record["titles"], record["scores"])}
        assert [scores[t] for t in got] == pytest.approx([scores_of[t] for t in got], abs=1e-3)


@pytest.mark.parametrize("decoder", ["beam", "generate"])
def test_every_decoder_scores_titles_by_the_fused_score_under_the_max_lookahead(model, tokenizer, trie, decoder):
    """Issue 21 item 4: under prior_lookahead="max" a decoder's scores are still the titles' full fused scores (the
    per-prompt constant the lookahead leaves out of the search is added back, generate() included)."""
    records, fused = _fused_records(model, tokenizer, trie, decoder, 4.0, "max")
    for record, scores_of in zip(records, fused):
        assert len(record["titles"]) == 3
        assert record["scores"] == pytest.approx([scores_of[t] for t in record["titles"]], abs=1e-3)


def test_an_exhausted_exact_search_is_recorded_and_counted(model, tokenizer, trie, monkeypatch):
    """Issue 21 item 4: a user whose top-K exact search cannot prove within its node budget says so in its record
    (budget_exhausted, proven), a warning names the user, and metrics.json counts such users."""
    monkeypatch.setattr(recommenders, "EXACT_NODE_BUDGET", 1)
    config = EvalConfig(ks=(1, 3), num_beams=4, decoder="exact")
    with pytest.warns(UserWarning, match=r"constrained: exact search's node budget \(1 prefixes\) left the top-3 of "
                                         r"2 user\(s\) unproven: user 100 \(0 proven, \d items\), user 101"):
        records = ConstrainedRecommender(model, tokenizer, trie, config)(make_samples(2))["constrained"]
    assert all(r["budget_exhausted"] is True and r["proven"] < 3 for r in records)
    assert all(r["nodes_expanded"] == 1 and r["search_forwards"] == 1 and r["search_tokens"] == 1 for r in records)
    rows = [{"method": "m", "seconds": 1.0, **r} for r in records]
    figures = method_metrics(rows, config, catalog_size=8, popularity={i: 50.0 for i in CATALOG})["m"]
    assert figures["budget_exhausted"] == 2
    assert figures["nodes_expanded"] == figures["search_forwards"] == {"mean": 1.0, "median": 1.0, "max": 1}
    beam = ConstrainedRecommender(model, tokenizer, trie, EvalConfig(ks=(1, 3), num_beams=4))(make_samples(2))
    rows = [{"method": "m", "seconds": 1.0, **r} for r in beam["constrained"]]
    figures = method_metrics(rows, config, catalog_size=8, popularity={i: 50.0 for i in CATALOG})["m"]
    assert "budget_exhausted" not in figures and "nodes_expanded" not in figures


def test_duplicate_titles_expand_to_all_their_items(model, tokenizer):
    catalog = {1: "Heat (1995)", 2: "Heat (1995)"}
    trie = TitleTrie.from_titles(list(catalog.values()), tokenizer, item_ids=list(catalog))
    config = EvalConfig(ks=(1,), exclude_history=False)
    records = ConstrainedRecommender(model, tokenizer, trie, config)(make_samples(1))["constrained"]
    assert records[0]["item_ids"] == [1]  # K = 1 item, the first of the title's two
    config = EvalConfig(ks=(1,))
    sample = EvalSample(0, 1, "Response:\n", 2, "Heat (1995)", exclude=frozenset({1}))
    assert ConstrainedRecommender(model, tokenizer, trie, config)([sample])["constrained"][0]["item_ids"] == [2]


@pytest.mark.parametrize("decoder", list(DECODERS))  # every registered decoder
def test_a_user_with_fewer_titles_than_k_gets_them_with_a_warning_naming_the_user(model, tokenizer, trie, decoder):
    """Issue 17 item 1: a long history on a small catalog leaves a user 2 titles for K = 5; the evaluation gives that
    user 2 recommendations (the missing ranks count as misses) and names the user, and a user who consumed every
    item gets an empty list; nobody's decoding is lost."""
    config = EvalConfig(ks=(1, 5), num_beams=5, decoder=decoder)
    samples = make_samples(3)
    short = EvalSample(3, 777, samples[0].prompt, 5, CATALOG[5], exclude=frozenset(set(CATALOG) - {5, 6}))
    everything = EvalSample(4, 778, samples[1].prompt, 5, CATALOG[5], exclude=frozenset(CATALOG))
    with pytest.warns(UserWarning, match=r"constrained: 2 user\(s\) got fewer than K=5 recommendations.*user 777 "
                                         r"\(2\), user 778 \(0\).*missing ranks as misses"):
        records = ConstrainedRecommender(model, tokenizer, trie, config)(samples + [short, everything])["constrained"]
    assert [len(r["item_ids"]) for r in records] == [5, 5, 5, 2, 0]
    assert set(records[3]["item_ids"]) == {5, 6} and records[3]["num_valid_outputs"] == records[3]["num_outputs"] == 2
    assert records[4]["num_outputs"] == 0
    rows = [{"method": "m", "seconds": 0.0, **r} for r in records[3:]]
    figures = method_metrics(rows, config, catalog_size=8, popularity={i: 50.0 for i in CATALOG})["m"]
    assert figures["hr@5"]["value"] == pytest.approx(0.5) and figures["validity_rate"] == 1.0


def test_k_larger_than_the_catalog_is_an_error(model, tokenizer, trie):
    with pytest.raises(ValueError, match="K = 20 is larger than the catalog's 7 distinct titles"):
        ConstrainedRecommender(model, tokenizer, trie, EvalConfig(ks=(1, 20)))
    with pytest.raises(ValueError, match="K = 9 is larger than the catalog of 8 items"):
        MostPopularRecommender({}, CATALOG, EvalConfig(ks=(9,)))
    with pytest.raises(ValueError, match=r"num_beams must be an integer >= max\(ks\) = 5"):
        EvalConfig(ks=(1, 5), num_beams=3)


def test_zero_shot_switches_the_adapter_off(tokenizer, trie):
    from peft import LoraConfig, get_peft_model

    config = EvalConfig(ks=(1, 3), num_beams=3)
    samples = make_samples(2)
    base = ConstrainedRecommender(make_tiny_llama(vocab_size=49152, seed=1), tokenizer, trie, config)(samples)
    tuned = get_peft_model(make_tiny_llama(vocab_size=49152, seed=1),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    zero_shot = ConstrainedRecommender(tuned, tokenizer, trie, config, use_adapter=False)(samples)
    def scores(records):
        return [s for r in records for s in r["scores"]]

    assert scores(zero_shot["zero-shot-constrained"]) == pytest.approx(scores(base["constrained"]), abs=1e-4)
    adapted = ConstrainedRecommender(tuned, tokenizer, trie, config)(samples)["constrained"]
    assert scores(adapted) != pytest.approx(scores(base["constrained"]), abs=1e-4)


def test_unconstrained_recommender_grounds_exactly_and_by_l2(model, tokenizer, trie):
    config = EvalConfig(ks=(1, 3), num_beams=3)
    grounder = TitleGrounder(CATALOG, last_token_hidden_states(model, tokenizer, list(CATALOG.values())))
    samples = make_samples(2)
    out = UnconstrainedRecommender(model, tokenizer, trie, grounder, config)(samples)
    for sample, exact, l2 in zip(samples, out["unconstrained-exact"], out["unconstrained-l2"]):
        valid = [grounder.is_valid(text) for text in exact["generated"]]
        assert exact["num_outputs"] == 3 and exact["num_valid_outputs"] == sum(valid)
        expected = [i for text in exact["generated"] for i in grounder.exact(text, sample.exclude)]
        assert exact["item_ids"] == list(dict.fromkeys(expected))[:3]
        # l2: the catalog ranked by distance to the top beam's embedding, history skipped
        assert len(l2["item_ids"]) == 3 and not set(l2["item_ids"]) & sample.exclude
        assert l2["scores"] == sorted(l2["scores"], reverse=True)
        assert l2["generated"] == exact["generated"][:1] and l2["num_valid_outputs"] == int(valid[0])


def test_most_popular_skips_history():
    config = EvalConfig(ks=(1, 3))
    counts = {5: 10, 3: 7, 1: 7, 8: 1}
    records = MostPopularRecommender(counts, CATALOG, config)(make_samples(1))["most-popular"]
    assert records[0]["item_ids"] == [5, 1, 8]  # 3 and 2 are excluded; ties by item id
    assert records[0]["scores"] == [10, 7, 1]


class CountingRecommender:
    """Ranks the catalog by a fixed order and records which samples it was asked for."""

    names = ("fixed",)

    def __init__(self, fail_after_batches: int | None = None):
        self.config = EvalConfig(ks=(1, 3), batch_size=2)
        self.calls: list[int] = []
        self.fail_after_batches = fail_after_batches

    def __call__(self, samples):
        if self.fail_after_batches is not None and len(self.calls) >= 2 * self.fail_after_batches:
            raise KeyboardInterrupt
        self.calls += [s.index for s in samples]
        return {"fixed": [prediction_record(s, [s.target_item_id, 1, 2][: 1 + s.index % 3], ["t"] * (1 + s.index % 3),
                                     [0.0] * (1 + s.index % 3), 1, 1) for s in samples]}


def test_interrupted_evaluation_resumes_without_redoing_samples(tmp_path):
    samples = make_samples(7)
    first = CountingRecommender(fail_after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate([first], samples, tmp_path, identity={"run": 1}, show_progress=False)
    assert first.calls == [0, 1, 2, 3]
    part = tmp_path / "predictions.part0.jsonl"
    with open(part, "a") as file:  # an interruption in the middle of writing a line
        file.write('{"method": "fixed", "sam')
    second = CountingRecommender()
    records = evaluate([second], samples, tmp_path, identity={"run": 1}, show_progress=False)
    assert second.calls == [4, 5, 6]
    assert [r["sample"] for r in records] == list(range(7))
    assert not part.exists()
    assert [json.loads(line)["sample"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()] == list(range(7))
    third = CountingRecommender()  # everything is done: nothing is recomputed
    evaluate([third], samples, tmp_path, identity={"run": 1}, show_progress=False)
    assert third.calls == []


def test_resuming_with_other_settings_is_an_error(tmp_path):
    evaluate([CountingRecommender()], make_samples(2), tmp_path, identity={"num_beams": 10}, show_progress=False)
    with pytest.raises(ValueError, match="num_beams: 10 -> 20"):
        evaluate([CountingRecommender()], make_samples(2), tmp_path, identity={"num_beams": 20}, show_progress=False)
    with pytest.raises(ValueError, match="samples:"):
        evaluate([CountingRecommender()], make_samples(3), tmp_path, identity={"num_beams": 10}, show_progress=False)


def test_two_recommenders_with_one_method_name_are_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"method names must be unique across recommenders .* \['fixed', 'fixed'\]"):
        evaluate([CountingRecommender(), CountingRecommender()], make_samples(2), tmp_path, show_progress=False)
    assert isinstance(CountingRecommender(), Recommender)  # the protocol: names + __call__


def test_damaged_predictions_are_an_error(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"method": "fixed", "sample": 0}\nnot json\n{"method": "fixed", "sample": 1}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2 is not a JSON record"):
        read_predictions(tmp_path)


class FakeProcessState:
    """One of ``world`` processes; ``barrier(rank)`` stands for accelerate's wait_for_everyone."""

    def __init__(self, rank: int, world: int, barrier):
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0
        self.barrier = barrier

    def wait_for_everyone(self):
        self.barrier(self.process_index)


def test_sharded_processes_take_disjoint_samples_and_the_main_one_merges(tmp_path, monkeypatch):
    samples = make_samples(5)
    recommenders = {rank: CountingRecommender() for rank in (0, 1)}
    results, waits = {}, []

    def run(rank: int) -> None:
        monkeypatch.setattr(ev, "process_state", lambda: FakeProcessState(rank, 2, barrier))
        results[rank] = evaluate([recommenders[rank]], samples, tmp_path, show_progress=False)

    def barrier(rank: int) -> None:
        waits.append(rank)
        if waits == [0, 0]:  # the main process is done with its shard: the other one runs now
            run(1)

    run(0)
    assert recommenders[0].calls == [0, 2, 4] and recommenders[1].calls == [1, 3]
    assert results[1] is None
    assert [r["sample"] for r in results[0]] == [0, 1, 2, 3, 4]
    assert list(tmp_path.glob("predictions.part*")) == []


def test_method_metrics_from_records():
    config = EvalConfig(ks=(1, 2), bootstrap_resamples=100)
    record = {"method": "m", "target_item_id": 5, "num_outputs": 2, "seconds": 0.5}
    records = [{**record, "item_ids": [5, 1], "num_valid_outputs": 2},
               {**record, "item_ids": [1, 5], "num_valid_outputs": 1},
               {**record, "item_ids": [2, 3], "num_valid_outputs": 2},
               {**record, "method": "p", "item_ids": [1, 2], "num_outputs": 0, "num_valid_outputs": 0}]
    figures = method_metrics(records, config, catalog_size=10, popularity={i: 10.0 * i for i in range(1, 11)})
    m = figures["m"]
    assert m["users"] == 3 and m["hr@1"]["value"] == pytest.approx(1 / 3) and m["hr@2"]["value"] == pytest.approx(2 / 3)
    assert m["ndcg@2"]["value"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["validity_rate"] == pytest.approx(5 / 6)
    assert m["coverage@2"] == pytest.approx(0.4)  # K stops at 2: the top-2 (items beyond max K never exist)
    assert m["popularity_percentile@2"] == pytest.approx((50 + 10 + 10 + 50 + 20 + 30) / 6)
    assert m["users_per_s"] == pytest.approx(2.0)
    assert figures["p"]["validity_rate"] is None


def test_coverage_is_labelled_with_the_cut_off_it_measures():
    """Issue 17 item 12: with --k 1 every method recommends one item, and the report called its coverage @10."""
    from constrained_rec.experiment.report import markdown_report

    records = [{"method": "m", "target_item_id": 5, "num_outputs": 1, "num_valid_outputs": 1, "seconds": 0.5,
                "item_ids": [item]} for item in (5, 1, 1)]
    figures = method_metrics(records, EvalConfig(ks=(1,), bootstrap_resamples=10), catalog_size=10,
                             popularity={i: 10.0 * i for i in range(1, 11)})["m"]
    assert figures["coverage@1"] == pytest.approx(0.2) and figures["popularity_percentile@1"] == pytest.approx(70 / 3)
    assert not any(name.endswith("@10") for name in figures)
    report = markdown_report({"methods": {"m": figures}})
    assert "coverage@1 |" in report and "catalog coverage of the top-1 |" in report and "@10" not in report
