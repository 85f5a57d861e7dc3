"""Exact scoring of given titles: the total log-probability of each candidate title after each prompt.

Titles are scored exactly as the trie holds them (:func:`constrained_rec.trie.tokenization.title_token_ids`,
EOS included): one prefill per prompt, whose KV cache is then expanded over that prompt's candidates, which are
fed teacher-forced in batches (the same model calls as decoding, :mod:`constrained_rec.decoding.runner`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from constrained_rec.decoding.recommend import DecodeStats, checked_prompt_ids, soft_parts
from constrained_rec.decoding.runner import ModelRunner, PromptBatch, TokenTree
from constrained_rec.trie.trie import TitleTrie
from constrained_rec.validation import check_int


def _as_trie(trie_or_token_ids) -> TitleTrie:
    """The trie itself, or one built from a table of item id -> token ids (all ending in the same EOS)."""
    if isinstance(trie_or_token_ids, TitleTrie):
        return trie_or_token_ids
    if not isinstance(trie_or_token_ids, Mapping) or not trie_or_token_ids:
        raise ValueError(f"titles come from a TitleTrie or a non-empty mapping item id -> token ids (EOS last), "
                         f"not {type(trie_or_token_ids).__name__}")
    ends = {tuple(ids)[-1] if len(ids) else None for ids in trie_or_token_ids.values()}
    if len(ends) != 1 or None in ends:
        raise ValueError(f"every title's token ids must end with the same EOS id; they end with {sorted(map(str, ends))}")
    return TitleTrie.from_token_sequences([list(ids)[:-1] for ids in trie_or_token_ids.values()],
                                          eos_token_id=int(ends.pop()), item_ids=list(trie_or_token_ids))


def _score_prompt_batch(runner: ModelRunner, prompts: list[list[int]], titles: list[list[list[int]]],
                        batch_size: int, soft: list | None = None) -> list[np.ndarray]:
    """Total log-probabilities of ``titles[p]`` after ``prompts[p]``: one left-padded prefill of the prompts,
    then every title's tokens but its last are fed (decoding's ``TokenTree.score``) after its prompt's cache rows,
    ``batch_size`` titles at a time."""
    prompt = PromptBatch(prompts, runner, soft=soft)
    tree = TokenTree(prompt)
    first = torch.log_softmax(prompt.last_logits.float(), dim=-1)
    rows = [(p, t) for p in range(len(prompts)) for t in range(len(titles[p]))]
    totals = [np.zeros(len(t), dtype=np.float64) for t in titles]
    for p, t in rows:
        totals[p][t] = float(first[p, titles[p][t][0]])
    # Longest first, so that a forward pads its titles to similar lengths.
    rows = sorted((r for r in rows if len(titles[r[0]][r[1]]) > 1), key=lambda r: -len(titles[r[0]][r[1]]))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        owners = [p for p, _ in chunk]
        log_probs = tree.score(runner, owners, np.zeros((len(chunk), 0), dtype=np.int64),
                               [titles[p][t][:-1] for p, t in chunk], [titles[p][t][1:] for p, t in chunk])
        for (p, t), title_log_probs in zip(chunk, log_probs):
            totals[p][t] += title_log_probs.astype(np.float64).sum()
    return totals


def score_titles(model, tokenizer, prompts: Sequence[str | Sequence[int]], candidates: Sequence[Sequence[int]],
                 trie_or_token_ids: TitleTrie | Mapping[int, Sequence[int]], *, batch_size: int = 32,
                 prompt_batch_size: int = 4) -> list[np.ndarray]:
    """Exact total log-probability of each candidate title given each prompt, with one prefill per prompt.

    Args:
        model (`PreTrainedModel`):
            A causal LM with a KV cache, in eval mode, on any device; a PEFT model is scored with its adapter.
        tokenizer (`PreTrainedTokenizerBase` or `None`):
            Tokenizes string prompts (`tokenization.prompt_token_ids`); `None` when prompts are token ids.
        prompts (`Sequence[str | Sequence[int] | SoftPrompt]`):
            The prompts, as strings or token ids (BOS included where the model uses one), or
            `tokenization.SoftPrompt` s (prefilled by `inputs_embeds`).
        candidates (`Sequence[Sequence[int]]`):
            ``candidates[p]``: the items to score after prompt ``p`` (catalog item ids, or keys of the table).
        trie_or_token_ids (`TitleTrie` or `Mapping[int, Sequence[int]]`):
            Where a candidate's title tokens come from: the trie (exactly the ids decoding may write,
            `tokenization.title_token_ids`, EOS included) or a table from candidate to token ids.
        batch_size (`int`, defaults to 32):
            Titles fed together in one forward (each carries a copy of its prompt's cache rows).
        prompt_batch_size (`int`, defaults to 4):
            Prompts prefilled together (left-padded).

    Returns:
        `list[np.ndarray]`: per prompt, a float64 array of its candidates' log-probabilities, in order.

    Example:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from constrained_rec.decoding.scoring import score_titles
    >>> _ = torch.manual_seed(0)
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    >>> titles = {7: [5, 6, 2], 8: [9, 2]}
    >>> scores = score_titles(model, None, [[1, 20, 21], [1, 22]], [[7, 8], [8]], titles)
    >>> [s.shape for s in scores], bool(scores[0][0] < 0)
    ([(2,), (1,)], True)

    ```
    """
    batch_size = int(check_int(batch_size, "`batch_size`", least=1, numpy=True))
    prompt_batch_size = int(check_int(prompt_batch_size, "`prompt_batch_size`", least=1, numpy=True))
    if getattr(model, "training", False):
        raise ValueError("the model is in training mode (dropout is active); call model.eval() first")
    trie = _as_trie(trie_or_token_ids)
    prompt_ids = checked_prompt_ids(tokenizer, prompts, trie, model)  # also: the tokenizer's EOS is the trie's
    if isinstance(candidates, (str, bytes)) or len(candidates) != len(prompt_ids):
        raise ValueError(f"`candidates` has to hold one sequence of items per prompt ({len(prompt_ids)}), "
                         f"but is {candidates!r}")
    titles = []
    for p, items in enumerate(candidates):
        try:
            titles.append(trie.title_token_ids(items))
        except ValueError as error:
            raise ValueError(f"`candidates[{p}]`: {error}") from None
    runner = ModelRunner(model, trie, DecodeStats())
    soft = soft_parts(prompts, model)
    scores: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(prompt_ids), prompt_batch_size):
            stop = start + prompt_batch_size
            scores += _score_prompt_batch(runner, prompt_ids[start:stop], titles[start:stop], batch_size,
                                          soft[start:stop])
    return scores




def catalog_items(trie: TitleTrie) -> np.ndarray:
    return np.unique(np.asarray(trie.items_at(np.arange(trie.num_items)), dtype=np.int64))


