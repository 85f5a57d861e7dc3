"""constrained_rec.evaluation.user_signal: exact title scores, the derangement, rank/AUC, and the control's verdicts."""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import constrained_rec.evaluation.user_signal
from conftest import make_tiny_llama
from constrained_rec import TitleTrie
from constrained_rec.decoding.scoring import score_titles
from constrained_rec.evaluation.user_signal import derangement, generic_prompt, rank_and_auc, user_signal
from constrained_rec.experiment.report import plot_user_signal, signal_markdown

EOS = 2
VOCAB = 64


def naive_log_prob(model, prompt: list[int], title: list[int]) -> float:
    """Total log-probability of `title` after `prompt` from one full forward of prompt + title, no cache."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + title])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(title))
    return log_probs[positions, torch.tensor(title)].sum().item()


def random_case(seed: int, num_prompts: int, head: int = 0):
    """`head` token ids shared by every prompt (an instruction, prefilled once per batch), then each one's own."""
    rng = np.random.default_rng(seed)
    shared = [1] + rng.integers(3, VOCAB, size=head).tolist()
    prompts = [shared + rng.integers(3, VOCAB, size=rng.integers(1, 12)).tolist() for _ in range(num_prompts)]
    table = {100 + i: rng.integers(3, VOCAB, size=rng.integers(1, 7)).tolist() + [EOS] for i in range(12)}
    candidates = [rng.choice(list(table), size=rng.integers(1, 8), replace=True).tolist() for _ in prompts]
    return prompts, table, candidates


def test_doctests():
    assert doctest.testmod(constrained_rec.evaluation.user_signal, optionflags=doctest.ELLIPSIS).failed == 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), num_prompts=st.integers(1, 5), batch_size=st.integers(1, 9),
       prompt_batch_size=st.integers(1, 4), head=st.sampled_from([0, 20]))
def test_score_titles_equals_naive_forward(seed, num_prompts, batch_size, prompt_batch_size, head):
    """Left-padded prompt batches (with a shared head or not), packed titles of 2 to 7 tokens, repeated candidates."""
    model = make_tiny_llama(vocab_size=VOCAB, seed=seed % 3)
    prompts, table, candidates = random_case(seed, num_prompts, head)
    scores = score_titles(model, None, prompts, candidates, table, batch_size=batch_size,
                          prompt_batch_size=prompt_batch_size)
    for prompt, items, got in zip(prompts, candidates, scores):
        expected = [naive_log_prob(model, prompt, table[item]) for item in items]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_score_titles_uses_the_peft_adapter():
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(make_tiny_llama(vocab_size=VOCAB, seed=1), lora).eval()
    prompts, table, candidates = random_case(3, 3)
    scores = score_titles(model, None, prompts, candidates, table)
    expected = [[naive_log_prob(model, p, table[i]) for i in items] for p, items in zip(prompts, candidates)]
    with model.disable_adapter():
        base = [[naive_log_prob(model, p, table[i]) for i in items] for p, items in zip(prompts, candidates)]
    for got, want, without in zip(scores, expected, base):
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert np.abs(np.asarray(want) - np.asarray(without)).max() > 1e-3  # the adapter changes the scores


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 10, 101):
        for seed in range(20):
            pairs = derangement(n, seed)
            assert sorted(pairs.tolist()) == list(range(n))
            assert not (pairs == np.arange(n)).any()
    assert derangement(50, 4).tolist() == derangement(50, 4).tolist()


@pytest.mark.parametrize("num_users", [1, 0, True, 2.0])
def test_derangement_needs_two_users_as_an_integer(num_users):
    with pytest.raises(ValueError, match=rf"num_users must be an integer >= 2 \(a derangement pairs every user with "
                                         rf"another one and needs at least 2 users\), got {num_users!r}"):
        derangement(num_users)
    assert derangement(np.int64(2)).tolist() == [1, 0]  # numpy integers count
    assert derangement(50, 4).tolist() != derangement(50, 5).tolist()
    for bad in (1, 0, -3, 2.5, True):
        with pytest.raises(ValueError, match=repr(bad)):
            derangement(bad)


def test_rank_and_auc_by_hand():
    assert rank_and_auc(0.0, [-1.0, -2.0]) == (1.0, 1.0)
    assert rank_and_auc(-5.0, [-1.0, -2.0]) == (3.0, 0.0)
    assert rank_and_auc(-1.0, [-1.0, -1.0, -1.0]) == (2.5, 0.5)  # all tied: the middle
    assert rank_and_auc(-2.0, [-1.0, -2.0, -3.0, -4.0]) == (2.5, 0.625)
    rng = np.random.default_rng(0)
    for _ in range(50):
        others = rng.integers(0, 4, size=rng.integers(1, 8)).astype(float)
        rank, auc = rank_and_auc(float(rng.integers(0, 4)), others)
        assert rank == pytest.approx(1 + len(others) * (1 - auc))
    with pytest.raises(ValueError, match="at least one"):
        rank_and_auc(0.0, [])


# ------------------------------------------------------------------- a synthetic task: copy the history's genre
# Items have a genre token and an identity token; a title is [genre, identity, EOS]. A user's history holds items of
# one genre and the target is another item of that genre, so a model that reads the history puts the genre first.
NUM_GENRES, PER_GENRE = 5, 8
SEP, BOS = 3, 1


def genre_of(item: int) -> int:
    return item // PER_GENRE


def synthetic_catalog():
    items = list(range(NUM_GENRES * PER_GENRE))
    titles = {item: [10 + genre_of(item), 20 + item, EOS] for item in items}
    trie = TitleTrie.from_token_sequences([titles[i][:-1] for i in items], eos_token_id=EOS, item_ids=items)
    return items, titles, trie


def synthetic_users(num_users: int, seed: int, titles):
    rng = np.random.default_rng(seed)
    users = []
    for user in range(num_users):
        genre = int(rng.integers(NUM_GENRES))
        chosen = rng.choice(PER_GENRE, size=5, replace=False) + genre * PER_GENRE
        history, target = chosen[:4].tolist(), int(chosen[4])
        prompt = [BOS] + [t for item in history for t in titles[item][:-1]] + [SEP]
        users.append(SimpleNamespace(user_id=user, prompt=prompt, target_item_id=target, exclude=frozenset(history)))
    return users


def train_to_copy(model, users, titles, steps: int = 300):
    """Plain teacher-forced training on prompt + target title; loss on the title tokens."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sequences = [u.prompt + titles[u.target_item_id] for u in users]
    ids = torch.tensor(sequences)  # every synthetic sequence has the same length
    prompt_length = len(users[0].prompt)
    labels = ids.clone()
    labels[:, :prompt_length] = -100
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(len(sequences), (32,), generator=generator)
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def copy_task():
    items, titles, trie = synthetic_catalog()
    train_users = synthetic_users(400, seed=1, titles=titles)
    eval_users = synthetic_users(60, seed=2, titles=titles)
    trained = train_to_copy(make_tiny_llama(vocab_size=VOCAB, seed=0), train_users, titles)
    # Large initial weights make the untrained model's scores depend on the prompt (noise, not signal): with the
    # default ones every prompt gives nearly the same distribution and the test below would be vacuous.
    untrained = make_tiny_llama(vocab_size=VOCAB, seed=0, initializer_range=0.5)
    return SimpleNamespace(trie=trie, users=eval_users, trained=trained, untrained=untrained)


def run_signal(model, task, **kwargs):
    return user_signal(model, None, task.users, task.trie, num_candidates=10, seed=0, generic=[BOS, SEP], **kwargs)


def test_a_model_trained_to_copy_the_history_shows_a_user_signal(copy_task):
    signal = run_signal(copy_task.trained, copy_task)
    difference = signal["differences"]["own_minus_other"]
    assert difference["auc"]["ci"][0] > 0 and difference["mean_rank"]["ci"][1] < 0
    assert signal["conditions"]["own"]["auc"]["value"] > 0.7
    assert signal["differences"]["own_minus_generic"]["auc"]["ci"][0] > 0
    assert "reads the user's history" in signal_markdown(signal)


def test_an_untrained_model_shows_no_user_signal(copy_task):
    signal = run_signal(copy_task.untrained, copy_task)
    low, high = signal["differences"]["own_minus_other"]["auc"]["ci"]
    assert low < 0 < high
    ranks = signal["per_user"]["rank"]
    assert np.mean(np.asarray(ranks["own"]) != np.asarray(ranks["other"])) > 0.5  # the prompt does matter
    assert "No user-specific signal" in signal_markdown(signal)


def test_candidates_are_seeded_and_avoid_the_history(copy_task):
    first = run_signal(copy_task.untrained, copy_task)
    again = run_signal(copy_task.untrained, copy_task)
    assert first["per_user"] == again["per_user"]
    seen = []

    def record(sample, n, banned):
        assert banned >= sample.exclude | {sample.target_item_id}
        allowed = [i for i in range(NUM_GENRES * PER_GENRE) if i not in banned]
        seen.append(allowed[:n])
        return allowed[:n]

    proposed = run_signal(copy_task.untrained, copy_task, proposer=record)
    assert len(seen) == len(copy_task.users) and proposed["candidates"] == "proposed by record"
    per_user = proposed["per_user"]
    assert per_user["other_user_id"] != per_user["user_id"]
    assert all(a != b for a, b in zip(per_user["other_user_id"], per_user["user_id"]))


def test_report_renders_and_plots(copy_task, tmp_path):
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signal = run_signal(copy_task.trained, copy_task)
    json.dumps(signal, allow_nan=False)  # metrics.json refuses NaN
    text = signal_markdown(signal)
    assert text.count("\n| ") == 6 and "among 11 candidates" in text
    figure, axis = plt.subplots()
    plot_user_signal(axis, signal)
    figure.savefig(tmp_path / "signal.png")
    plt.close(figure)
    assert len(axis.patches) == 3


def test_bad_input_names_the_value(copy_task):
    model, trie, users = copy_task.untrained, copy_task.trie, copy_task.users
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match=f"num_candidates.*{bad!r}"):
            user_signal(model, None, users, trie, num_candidates=bad, generic=[BOS, SEP])
    with pytest.raises(ValueError, match="at least 2 users.*1"):
        user_signal(model, None, users[:1], trie, generic=[BOS, SEP])
    unknown = [SimpleNamespace(**{**vars(users[0]), "target_item_id": 999})] + users[1:3]
    with pytest.raises(ValueError, match="999"):
        user_signal(model, None, unknown, trie, generic=[BOS, SEP])
    with pytest.raises(ValueError, match="only .* fewer than num_candidates=40"):
        user_signal(model, None, users[:3], trie, num_candidates=40, generic=[BOS, SEP])
    with pytest.raises(ValueError, match="proposer named items \\[777\\]"):
        user_signal(model, None, users[:3], trie, num_candidates=2, generic=[BOS, SEP],
                    proposer=lambda sample, n, banned: [777, 0])
    with pytest.raises(ValueError, match="candidates\\[0\\].*item ids \\[5\\] are not in the trie's catalog"):
        score_titles(model, None, [[1, 2]], [[5]], {4: [7, EOS]})
    with pytest.raises(ValueError, match="token id 500"):
        score_titles(model, None, [[1, 500]], [[4]], {4: [7, EOS]})
    with pytest.raises(ValueError, match="batch_size.*0"):
        score_titles(model, None, [[1, 2]], [[4]], {4: [7, EOS]}, batch_size=0)


def test_generic_prompt_is_the_project_prompt_without_history():
    from constrained_rec.prompts import build_prompt

    prompt = generic_prompt("video games")
    with_history = build_prompt(["Doom"], "video games")
    assert prompt == with_history.replace(' "Doom"', "")
    assert "Doom" not in prompt and prompt.endswith("### Response:\n")


# ------------------------------------------------------------------------------- the embedded model, real data
@pytest.mark.slow
def test_score_titles_equals_naive_forward_on_the_embedded_model():
    from constrained_rec.data import load_interactions
    from constrained_rec.experiment.catalog import catalog_trie
    from constrained_rec.model import load_model
    from constrained_rec.prompts import build_prompt
    from constrained_rec.trie.tokenization import prompt_token_ids

    data = load_interactions("ml-100k")
    model, tokenizer = load_model()
    trie = catalog_trie(data, tokenizer)
    titles = sorted(data.titles)
    prompts = [build_prompt([data.titles[i] for i in titles[:3]]), build_prompt([data.titles[titles[10]]])]
    candidates = [titles[20:25], titles[100:102]]
    scores = score_titles(model, tokenizer, prompts, candidates, trie, batch_size=3)
    for prompt, items, got in zip(prompts, candidates, scores):
        ids = prompt_token_ids(tokenizer, prompt)
        expected = [naive_log_prob(model, ids, tokens) for tokens in trie.title_token_ids(items)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3)
