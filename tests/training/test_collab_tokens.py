"""Collaborative tokens (issue 23): the hybrid prompt's ids, decoding by inputs_embeds equal to the ids path, a tiny
model that learns a target from the soft token alone (and cannot with the projector's output zeroed), the adapter
folder's round trip and the refusals of a wrong or missing assistant."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train import FAST, ITEMS, WORDS, make_toy_tokenizer, tiny_model

from conftest import make_tiny_llama
from constrained_rec import TitleTrie
from constrained_rec.collaborative import Popularity, SASRec, SASRecConfig
from constrained_rec.collaborative.sasrec import SASRecNetwork
from constrained_rec.decoding.recommend import recommend, recommend_at_weights
from constrained_rec.decoding.scoring import score_titles
from constrained_rec.evaluation.recommenders import recommend_constrained
from constrained_rec.model import load_adapter
from constrained_rec.prompts import build_prompt, quoted_titles
from constrained_rec.training.batching import Example, collate, tokenize_examples
from constrained_rec.training.collab_tokens import CollabTokens, load_collab_tokens, saved_collab_tokens
from constrained_rec.training.loss import ResponseLoss
from constrained_rec.training.train import TrainConfig, train
from constrained_rec.trie.tokenization import SoftPrompt, prompt_token_ids, soft_token_ids

INSTRUCTION = "the user has watched these items , what is next :"
TARGETS = ITEMS[1:9]  # item k (1..8) is titled i{k}


def sasrec(num_items: int = 8, seed: int = 0, dim: int = 8) -> SASRec:
    """An unfitted SASRec over items 1..num_items: a real assistant with a random item embedding table."""
    torch.manual_seed(seed)
    config = SASRecConfig(dim=dim, heads=1)
    return SASRec(np.arange(1, num_items + 1), config, SASRecNetwork(num_items, config))


def hidden_dataset(n_repeats: int = 1):
    """One history title whose text says nothing ("i0", for every user); the soft token carries the history item k,
    and the target is item k's title: only the soft token tells the targets apart."""
    from datasets import Dataset

    rows = {"prompt": [], "target_title": [], "history_titles": [], "history_item_ids": []}
    for _ in range(n_repeats):
        for k, title in enumerate(TARGETS, start=1):
            rows["prompt"].append(f"{INSTRUCTION} {quoted_titles(['i0'])} next :")
            rows["target_title"].append(title)
            rows["history_titles"].append(["i0"])
            rows["history_item_ids"].append([k])
    return Dataset.from_dict(rows)


# ------------------------------------------------------------------------------------------- the hybrid prompt
@pytest.mark.parametrize("titles", [["Heat (1995)", "Casino (1995)"], ['Say "Anything" (1989)', "Babe (1995)",
                                                                        "Toy Story (1995)"], ["Ran (1985)"]])
def test_soft_positions_follow_each_title_and_leave_the_text_ids_as_they_are(smollm2_tokenizer, titles):
    from constrained_rec.prompts import history_title_spans

    prompt = build_prompt(titles)
    ids, positions = soft_token_ids(smollm2_tokenizer, prompt, history_title_spans(prompt, titles))
    assert len(positions) == len(titles)
    assert all(ids[p] == smollm2_tokenizer.eos_token_id for p in positions)
    text_ids = [t for i, t in enumerate(ids) if i not in set(positions)]
    assert text_ids == prompt_token_ids(smollm2_tokenizer, prompt)  # the text's ids, bit for bit
    for p, title in zip(positions, titles):  # each soft token comes right after its title's closing quote
        before = smollm2_tokenizer.decode(ids[:p], clean_up_tokenization_spaces=False)
        assert before.rstrip(", ").endswith(f'{title}"')


def test_soft_prompts_are_checked():
    with pytest.raises(ValueError, match="one embedding row per soft position"):
        SoftPrompt([1, 5, 6], [1, 2], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="sorted, distinct indices"):
        SoftPrompt([1, 5, 6], [2, 1], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sorted, distinct indices"):
        SoftPrompt([1, 5, 6], [3], torch.zeros(1, 4))
    model = make_tiny_llama()
    trie = TitleTrie.from_token_sequences([[5, 6], [7]], eos_token_id=2)
    with pytest.raises(ValueError, match="4-wide embeddings, but the model's input embeddings are 32-wide"):
        recommend(model, None, [SoftPrompt([1, 5, 6], [1], torch.zeros(1, 4))], trie, k=1)


# ------------------------------------------------------------------------ decoding: inputs_embeds == the ids path
def _prompts(model):
    """Token-id prompts with a shared head, and the same as SoftPrompts whose soft rows are the ids' own embeddings."""
    head = [1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]
    prompts = [head + [31, 32, 33, 34], head + [35, 36], head + [37, 38, 39, 40, 41], head[:4] + [42, 43]]
    table = model.get_input_embeddings().weight.detach()
    soft = [SoftPrompt(p, [3, len(p) - 2], table[[p[3], p[-2]]].clone()) for p in prompts]
    return prompts, soft


def _trie():
    sequences = [[5, 6, 7], [5, 9], [11, 12, 13, 14], [11, 12], [15], [16, 17], [5, 6, 8], [18, 19, 20]]
    return TitleTrie.from_token_sequences(sequences, eos_token_id=2, item_ids=list(range(100, 108)))


def _same(a, b):
    for x, y in zip(a.recommendations, b.recommendations):
        assert [r.item_ids for r in x] == [r.item_ids for r in y]
        np.testing.assert_allclose([r.log_prob for r in x], [r.log_prob for r in y], atol=1e-5)


@pytest.mark.parametrize("mode", ["beam", "exact"])
def test_soft_prompts_with_the_token_embeddings_decode_as_the_ids(mode):
    model, trie = make_tiny_llama(), _trie()
    prompts, soft = _prompts(model)
    prior = np.log(np.random.default_rng(0).dirichlet(np.ones(8), size=len(prompts)))
    options = dict(k=4, num_beams=5, mode=mode, exclude=[{100}, set(), {103}, set()], item_log_prior=prior,
                   prior_weight=2.0, batch_size=3)
    _same(recommend(model, None, prompts, trie, **options), recommend(model, None, soft, trie, **options))
    # the soft rows are read: other embeddings there give other scores
    generator = torch.Generator().manual_seed(0)
    other = [SoftPrompt(s.ids, s.positions, torch.randn(s.embeds.shape, generator=generator)) for s in soft]
    changed = recommend(model, None, other, trie, **options)
    assert any(abs(a.log_prob - b.log_prob) > 1e-3 for x, y in zip(changed.recommendations,
               recommend(model, None, prompts, trie, **options).recommendations) for a, b in zip(x, y))


def test_soft_prompts_score_and_sweep_as_the_ids():
    model, trie = make_tiny_llama(), _trie()
    prompts, soft = _prompts(model)
    candidates = [[100, 101, 102], [103, 104], [105, 106, 107], [100, 107]]
    for a, b in zip(score_titles(model, None, prompts, candidates, trie), score_titles(model, None, soft, candidates, trie)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    prior = np.log(np.random.default_rng(1).dirichlet(np.ones(8), size=len(prompts)))
    for a, b in zip(recommend_at_weights(model, None, prompts, trie, 3, [1.0, 4.0], item_log_prior=prior),
                    recommend_at_weights(model, None, soft, trie, 3, [1.0, 4.0], item_log_prior=prior)):
        _same(a, b)


def test_generate_with_soft_prompts_reads_inputs_embeds_with_the_same_prompt_length():
    tokenizer = make_toy_tokenizer()
    model = make_tiny_llama(vocab_size=len(WORDS))
    trie = TitleTrie.from_titles(TARGETS, tokenizer, item_ids=list(range(1, 9)))
    texts = [f"{INSTRUCTION} i3 i4 next :", "i5 next :"]
    table = model.get_input_embeddings().weight.detach()
    soft = [SoftPrompt(ids, [2], table[[ids[2]]].clone()) for ids in (prompt_token_ids(tokenizer, t) for t in texts)]
    for decoder in ("generate", "beam", "exact"):
        by_text, _, _ = recommend_constrained(model, tokenizer, texts, trie, 3, 3, exclude=[{1}, set()], decoder=decoder)
        by_soft, invalid, _ = recommend_constrained(model, tokenizer, soft, trie, 3, 3, exclude=[{1}, set()],
                                                    decoder=decoder)
        assert invalid == [0, 0]
        assert [[r.item_ids for r in p] for p in by_text] == [[r.item_ids for r in p] for p in by_soft]
        np.testing.assert_allclose([r.score for p in by_text for r in p], [r.score for p in by_soft for r in p],
                                   atol=1e-4)


# ------------------------------------------------------------------------------------------------ training
def test_loss_with_soft_tokens_is_the_full_forward_with_inputs_embeds():
    model, tokens = tiny_model(), CollabTokens.from_assistant(sasrec(), tiny_model(), seed=0)
    prefix = list(range(3, 14))  # 11 shared tokens: shared, then cut before the first soft position (9)
    examples = [Example(prefix + [20, 2, 21, 30, 31, 2], 9 + 6 - 2, soft_positions=(9, 12), soft_items=(0, 5)),
                Example(prefix + [22, 23, 2, 32, 2], 11 + 5 - 2, soft_positions=(13,), soft_items=(3,))]
    batch = collate(examples, pad_token_id=0)
    assert batch.shared_prefix_length == 9 and batch.soft_positions.tolist() == [9, 12, 17 + 13]
    loss = ResponseLoss(model, tokens)(*batch.tensors())
    embeds = model.get_input_embeddings()(batch.input_ids).detach().clone()
    with torch.no_grad():
        embeds.view(-1, embeds.shape[-1])[batch.soft_positions] = tokens(batch.soft_items)
        logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    log_probs = torch.log_softmax(logits.float(), -1).reshape(-1, logits.shape[-1])
    torch.testing.assert_close(loss.detach(), -log_probs[batch.positions, batch.targets].sum(), atol=1e-4, rtol=1e-5)
    loss.backward()
    assert tokens.projector.weight.grad.abs().sum() > 0  # the projector trains with the loss
    with pytest.raises(ValueError, match="built without their CollabTokens"):
        ResponseLoss(model)(*batch.tensors())


def test_history_targets_move_with_the_soft_positions():
    from test_history_loss import copy_dataset

    tokenizer, tokens = make_toy_tokenizer(), CollabTokens.from_assistant(sasrec(24), tiny_model())
    data = copy_dataset(6, seed=0)
    data = data.add_column("history_item_ids", [[ITEMS.index(t[0])] * len(t) for t in data["history_titles"]])
    plain = tokenize_examples(tokenizer, data, history=True)
    soft = tokenize_examples(tokenizer, data, history=True, collab=tokens)
    for a, b in zip(plain, soft):
        assert [a.ids[i] for i in a.history_targets] == [b.ids[i] for i in b.history_targets]
        assert len(b.soft_positions) == len(b.soft_items) > 0 and b.prompt_length == a.prompt_length + len(b.soft_positions)
        assert b.ids[b.prompt_length:] == a.ids[a.prompt_length:]


def _accuracy(model, tokens, tokenizer, data) -> float:
    """How often the target's first token is the argmax after the prompt (decoding's trie picks among titles)."""
    examples = tokenize_examples(tokenizer, data, collab=tokens)
    batch = collate(examples, tokenizer.pad_token_id)
    embeds = model.get_input_embeddings()(batch.input_ids).detach().clone()
    with torch.no_grad():
        embeds.view(-1, embeds.shape[-1])[batch.soft_positions] = tokens(batch.soft_items)
        logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    first = torch.tensor([e.prompt_length for e in examples]) + torch.arange(len(examples)) * batch.input_ids.shape[1]
    # the response is '"', title, '"', EOS: the title token is predicted at prompt_length (after the quote)
    predicted = logits.reshape(-1, logits.shape[-1])[first].argmax(-1)
    return (predicted == batch.input_ids.view(-1)[first + 1]).float().mean().item()


def _fit(tokens, zero: bool) -> float:
    tokenizer, model = make_toy_tokenizer(), tiny_model().train()
    if zero:  # the projector's output zeroed: every prompt reads the same
        with torch.no_grad():
            tokens.projector.weight.zero_()
            tokens.projector.bias.zero_()
        tokens.projector.requires_grad_(False)
    examples = tokenize_examples(tokenizer, hidden_dataset(), collab=tokens)
    loss = ResponseLoss(model, tokens)
    optimizer = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        batch = collate(examples, tokenizer.pad_token_id)
        optimizer.zero_grad()
        (loss(*batch.tensors()) / len(batch.targets)).backward()
        optimizer.step()
    return _accuracy(model.eval(), tokens, tokenizer, hidden_dataset())


def test_a_tiny_model_learns_the_target_from_the_soft_token_alone_and_not_without_it():
    learned = _fit(CollabTokens.from_assistant(sasrec(), tiny_model(), seed=0), zero=False)
    zeroed = _fit(CollabTokens.from_assistant(sasrec(), tiny_model(), seed=0), zero=True)
    # 8 targets behind one prompt text: without the soft token at most one of them can be the argmax
    assert zeroed <= 1 / len(TARGETS) and learned >= 0.75, (learned, zeroed)


# ------------------------------------------------------------------------------------- the adapter folder
def test_train_saves_the_projector_with_the_adapter_and_loads_it_back(tmp_path):
    tokenizer, assistant = make_toy_tokenizer(), sasrec()
    tokens = CollabTokens.from_assistant(assistant, tiny_model(), seed=0)
    before = tokens.projector.weight.detach().clone()
    config = TrainConfig(**FAST, max_steps=3, checkpoint_every=100)
    result = train(tiny_model(), tokenizer, hidden_dataset(), config, eval_dataset=hidden_dataset(), output_dir=tmp_path,
                   collab=tokens)
    assert not torch.equal(before, tokens.projector.weight)  # trained
    saved = json.loads((tmp_path / "train_config.json").read_text())["collab_tokens"]
    assert saved == saved_collab_tokens(tmp_path) == tokens.describe()
    assert saved["assistant"] == "sasrec" and saved["hidden_size"] == 32 and saved["dim"] == 8
    loaded = load_collab_tokens(tmp_path, assistant)
    torch.testing.assert_close(loaded.projector.weight, tokens.projector.weight.detach())
    model, _ = load_adapter(tmp_path, base_model=tiny_model())
    data = hidden_dataset()
    prompts = [t.soft_prompt(tokenizer, p, i, h) for t in (tokens, loaded)
               for p, i, h in zip(data["prompt"], data["history_item_ids"], data["history_titles"])]
    trie = TitleTrie.from_titles(TARGETS, tokenizer, item_ids=list(range(1, 9)))
    own = score_titles(result.model.eval(), None, prompts[:8], [[1, 2, 3]] * 8, trie)
    reloaded = score_titles(model, None, prompts[8:], [[1, 2, 3]] * 8, trie)
    for a, b in zip(own, reloaded):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="train_on_inputs=True would teach the placeholder ids"):
        train(tiny_model(), tokenizer, hidden_dataset(), TrainConfig(**FAST, train_on_inputs=True, max_steps=1),
              output_dir=tmp_path / "x", collab=tokens)


def test_another_or_no_assistant_is_refused(tmp_path):
    tokens = CollabTokens.from_assistant(sasrec(seed=0), tiny_model())
    tokens.save(tmp_path)
    with pytest.raises(ValueError, match="'sasrec' assistant of fingerprint .* but this assistant is 'sasrec' of"):
        load_collab_tokens(tmp_path, sasrec(seed=1))  # another fit: other item embeddings
    popularity = Popularity(np.arange(1, 9), np.ones(8))
    for call in (lambda: load_collab_tokens(tmp_path, popularity),
                 lambda: CollabTokens.from_assistant(popularity, tiny_model())):
        with pytest.raises(ValueError, match="the 'popularity' assistant has no item embeddings"):
            call()
    with pytest.raises(ValueError, match="trained without collaborative tokens"):
        load_collab_tokens(tmp_path / "nothing", sasrec())
    with pytest.raises(ValueError, match="item 99 has no embedding in the 'sasrec' assistant's catalog of 8 items"):
        tokens.columns([1, 99])
    with pytest.raises(ValueError, match="the 'ease' assistant's item embeddings must be a finite"):
        CollabTokens("ease", [1, 2], np.ones((3, 4)), 32)


def test_soft_samples_carry_each_users_tokens():
    from constrained_rec.evaluation.evaluate import EvalSample, sample_digest

    tokenizer, tokens = make_toy_tokenizer(), CollabTokens.from_assistant(sasrec(), tiny_model())
    data = hidden_dataset()
    samples = [EvalSample(i, i, p, i + 1, t) for i, (p, t) in enumerate(zip(data["prompt"], data["target_title"]))]
    soft = tokens.soft_samples(tokenizer, samples, data)
    assert [s.prompt.item_ids for s in soft] == [(k,) for k in range(1, 9)]
    assert [s.prompt.text for s in soft] == data["prompt"] and [s.target_item_id for s in soft] == list(range(1, 9))
    assert sample_digest(soft) != sample_digest(samples)  # a resumed evaluation tells them apart
    with pytest.raises(ValueError, match="3 split rows for 8 samples"):
        tokens.soft_samples(tokenizer, samples, list(data)[:3])


def test_the_user_signal_control_reads_each_users_soft_tokens_and_none_in_the_generic_prompt():
    from constrained_rec.evaluation.user_signal import user_signal

    model = make_tiny_llama()
    trie = TitleTrie.from_token_sequences([[5 + i, 20 + i] for i in range(8)], eos_token_id=2, item_ids=range(8))
    table = model.get_input_embeddings().weight.detach()
    ids = [[1, 5 + u, 20 + u, 3, 40 + u] for u in range(4)]
    users = [SimpleNamespace(user_id=u, prompt=p, target_item_id=u + 1, exclude={u}) for u, p in enumerate(ids)]
    soft = [SimpleNamespace(**{**vars(s), "prompt": SoftPrompt(p, [4], table[[p[4]]].clone())})
            for s, p in zip(users, ids)]
    plain, hybrid = (user_signal(model, None, u, trie, num_candidates=3, generic=[1, 3]) for u in (users, soft))
    for condition in ("own", "other", "generic"):
        assert plain["per_user"]["rank"][condition] == hybrid["per_user"]["rank"][condition]
    # with other soft rows the own and other prompts change, the generic prompt (no tokens) does not
    generator = torch.Generator().manual_seed(0)
    moved = [SimpleNamespace(**{**vars(s), "prompt": SoftPrompt(s.prompt.ids, [4], 30 * torch.randn(1, 32,
                                                                 generator=generator))}) for s in soft]
    changed = user_signal(model, None, moved, trie, num_candidates=3, generic=[1, 3])
    assert changed["per_user"]["rank"]["generic"] == plain["per_user"]["rank"]["generic"]
    assert changed["per_user"]["rank"]["own"] != plain["per_user"]["rank"]["own"]
