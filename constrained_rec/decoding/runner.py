"""The model side of constrained decoding: explicit-cache forwards, prompt prefill, teacher forcing."""

from __future__ import annotations

import copy
import inspect

import torch

from constrained_rec.hf import cache_keyword, causal_lm, left_pad
from constrained_rec.trie.trie import TitleTrie

# The price of one more forward, in padded tokens: on a CPU a forward costs about its tokens, on an
# accelerator mostly its launch. Rows of different lengths are split into forwards by it (length_groups).
CPU_FORWARD_COST_TOKENS = 16
ACCELERATOR_FORWARD_COST_TOKENS = 4096


class ModelRunner:
    """Calls the model with an explicit cache, position ids and mask; counts forwards and tokens."""

    def __init__(self, model, trie: TitleTrie, stats):
        self.model = model
        self.trie = trie
        self.stats = stats
        lm = causal_lm(model)
        self.cache_kwarg = cache_keyword(lm)
        self.keeps_logits = "logits_to_keep" in inspect.signature(lm.forward).parameters
        self.device = model.get_input_embeddings().weight.device
        on_cpu = self.device.type == "cpu"
        self.forward_cost = CPU_FORWARD_COST_TOKENS if on_cpu else ACCELERATOR_FORWARD_COST_TOKENS
        self.checked_vocab = False

    def __call__(self, input_ids, attention_mask, position_ids, cache=None, last_only=False):
        kwargs = {"use_cache": True}
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        if last_only and self.keeps_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        self.stats.model_forwards += 1
        self.stats.forward_tokens += int(attention_mask[:, -input_ids.shape[1] :].sum())
        if not self.checked_vocab:
            if self.trie.max_token_id >= out.logits.shape[-1]:
                raise ValueError(
                    f"the trie holds token id {self.trie.max_token_id} but the model scores only "
                    f"{out.logits.shape[-1]} tokens: the trie was built with another tokenizer than this model's"
                )
            self.checked_vocab = True
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            raise ValueError(f"{type(self.model).__name__} returned no KV cache; recommend() needs a model with one")
        return out.logits, new_cache


def select_rows(cache, rows: torch.Tensor):
    """A new cache holding `rows` of `cache` (repeats allowed), leaving `cache` untouched."""
    if hasattr(cache, "layers"):
        forked = copy.copy(cache)
        forked.layers = [copy.copy(layer) for layer in cache.layers]  # reorder_cache rebinds their tensors
    else:
        forked = copy.deepcopy(cache)
    forked.reorder_cache(rows)
    return forked


class PromptBatch:
    """A left-padded batch of prompts, prefilled once: its cache, mask, lengths and last-position logits."""

    def __init__(self, prompts: list[list[int]], runner: ModelRunner):
        ids, mask = left_pad(prompts, pad_token_id=0)  # padding is masked out: any id does
        ids, mask = ids.to(runner.device), mask.to(runner.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() numbers left-padded prompts
        logits, self.cache = runner(ids, mask, positions, last_only=True)
        self.last_logits = logits[:, -1, :]
        self.mask = mask
        self.lengths = mask.sum(-1)  # real tokens per prompt: the position of the first generated token
        self.device = runner.device

    def rows_mask(self, prompts: torch.Tensor, generated: int, new: torch.Tensor) -> torch.Tensor:
        """Attention mask for rows of `prompts` with `generated` tokens cached and a block `new` of new tokens."""
        done = torch.ones((len(prompts), generated), dtype=torch.long, device=self.device)
        return torch.cat([self.mask[prompts], done, new], dim=1)


def length_groups(lengths: list[int], forward_cost: int) -> list[list[int]]:
    """Splits rows into forwards so that padded tokens plus `forward_cost` per forward is least.

    Rows sorted by length are cut into contiguous groups (dynamic programming over the cut points); a group
    costs `forward_cost + rows * longest`. Returns the row indices of each group.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0] + [None] * n  # best[j]: least cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + forward_cost + (j - i) * lengths[order[i]]
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def teacher_forced(runner, prompt: PromptBatch, cache, cache_rows: list[int], row_prompts: list[int],
                    generated: int, fed: list[list[int]], scored: list[list[int] | None]) -> list:
    """Feeds each row's tokens `fed` after `generated` tokens held in row `cache_rows[i]` of `cache`.

    Returns, per row, the float32 log-probabilities of its tokens `scored` (scored[i][j] at the position
    that predicts it: `len(fed[i]) - len(scored[i]) + j`), or, where scored[i] is None, the log-softmax of
    the last position's logits (the distribution over the next token). Rows are right-padded into as few
    forwards as pays (`length_groups`); `cache` itself is left untouched.
    """
    out = [None] * len(fed)
    for group in length_groups([len(f) for f in fed], runner.forward_cost):
        width = max(len(fed[i]) for i in group)
        ids = torch.full((len(group), width), runner.trie.eos_token_id, dtype=torch.long)
        new = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            ids[row, : len(fed[i])] = torch.tensor(fed[i])
            new[row, : len(fed[i])] = 1
        prompts = torch.tensor([row_prompts[i] for i in group], device=prompt.device)
        ids, new = ids.to(prompt.device), new.to(prompt.device)
        mask = prompt.rows_mask(prompts, generated, new)
        positions = (prompt.lengths[prompts] + generated)[:, None] + torch.arange(width, device=prompt.device)
        forked = select_rows(cache, torch.tensor([cache_rows[i] for i in group], device=prompt.device))
        logits, _ = runner(ids, mask, positions, cache=forked)
        rows, cols = [], []
        for row, i in enumerate(group):
            count = 1 if scored[i] is None else len(scored[i])
            rows += [row] * count
            cols += range(len(fed[i]) - count, len(fed[i]))
        log_probs = torch.log_softmax(logits[rows, cols].float(), dim=-1)
        at = 0
        for i in group:
            if scored[i] is None:
                out[i] = log_probs[at]
                at += 1
            else:
                wanted = torch.tensor(scored[i], device=log_probs.device)
                out[i] = log_probs[torch.arange(at, at + len(wanted), device=log_probs.device), wanted].cpu().numpy()
                at += len(wanted)
    return out
