"""The model side of constrained decoding: explicit-cache forwards, the prompt prefill (its shared head once),
and the token tree, through which every search feeds tokens after the prompts' cache without copying it per beam."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import torch

from constrained_rec.hf import cache_keyword, causal_lm, left_pad
from constrained_rec.trie.trie import TitleTrie

# The price of one more forward, in padded tokens: on a CPU a forward costs about its tokens, on an
# accelerator mostly its launch. A batch's shared prompt head is prefilled apart only when that saves more.
CPU_FORWARD_COST_TOKENS = 16
# Attention implementations that add a custom 4D mask (TokenTree's) to the scores (None: a model that predates them).
MASKED_ATTENTION = (None, "eager", "sdpa")
ACCELERATOR_FORWARD_COST_TOKENS = 4096


class ModelRunner:
    """Calls the model with an explicit cache, position ids and mask; counts forwards and tokens."""

    def __init__(self, model, trie: TitleTrie, stats):
        self.model = model
        self.trie = trie
        self.stats = stats
        lm = causal_lm(model)
        attention = getattr(lm.config, "_attn_implementation", None)
        if attention not in MASKED_ATTENTION:
            raise ValueError(
                f"decoding feeds beams after their prompt through a 4D attention mask, which the {attention!r} "
                f"attention of {type(lm).__name__} does not take; load the model with attn_implementation one of "
                f"{sorted(a for a in MASKED_ATTENTION if a)}"
            )
        self.cache_kwarg = cache_keyword(lm)
        self.keeps_logits = "logits_to_keep" in inspect.signature(lm.forward).parameters
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        on_cpu = self.device.type == "cpu"
        self.forward_cost = CPU_FORWARD_COST_TOKENS if on_cpu else ACCELERATOR_FORWARD_COST_TOKENS
        self.checked_vocab = False

    def __call__(self, input_ids, attention_mask, position_ids, cache=None, last_only=False, real_tokens=None,
                 inputs_embeds=None):
        """`attention_mask`: 2D (padding) or 4D (additive, as `TokenTree` builds it, with `real_tokens` given).
        With `inputs_embeds` (`(rows, len, hidden)`) the model reads them instead of `input_ids`' embeddings."""
        kwargs = {"use_cache": True}
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        if last_only and self.keeps_logits:
            kwargs["logits_to_keep"] = 1
        if inputs_embeds is None:
            kwargs["input_ids"] = input_ids
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        out = self.model(attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        self.stats.model_forwards += 1
        if real_tokens is None:
            real_tokens = int(attention_mask[:, -input_ids.shape[1] :].sum())
        self.stats.forward_tokens += real_tokens
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


def select_rows(cache, rows: torch.Tensor | None):
    """A new cache holding `rows` of `cache` (repeats allowed; None: all, without copying a tensor), leaving
    `cache` untouched by whatever is fed after the new one."""
    if hasattr(cache, "layers"):
        forked = copy.copy(cache)
        forked.layers = [copy.copy(layer) for layer in cache.layers]  # reorder_cache and forwards rebind their tensors
    else:
        forked = copy.deepcopy(cache)
    if rows is not None:
        forked.reorder_cache(rows)
    return forked


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """The length of the longest common prefix of the prompts' token ids, short of every prompt's last token
    (each prompt keeps a token of its own, whose logits start the search)."""
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    shared = 0
    while shared < limit and all(p[shared] == first[shared] for p in prompts):
        shared += 1
    return shared


def soft_inputs(model, ids: torch.Tensor, soft: list, offsets: list[int]):
    """The input embeddings of the left-padded `ids`, where prompt `p`'s soft tokens (`soft[p]`: `(positions,
    embeds)` or None; positions in the prompt's ids) replace the token embeddings at `offsets[p] + positions`;
    None where no prompt has a soft token (the ids path)."""
    if not any(s is not None and len(s[0]) for s in soft):
        return None
    embeds = model.get_input_embeddings()(ids)
    for row, (part, offset) in enumerate(zip(soft, offsets)):
        if part is not None and len(part[0]):
            columns = torch.as_tensor(part[0], dtype=torch.long, device=ids.device) + offset
            embeds[row, columns] = part[1].to(device=embeds.device, dtype=embeds.dtype)
    return embeds


class PromptBatch:
    """A batch of prompts, prefilled once: its cache (a row per prompt), mask, lengths and last-position logits.

    The head the prompts share (their longest common prefix of token ids, `shared`) is prefilled once, in one
    row, and its cache copied to every prompt's row; the prompts' own remainders are then left-padded and
    prefilled after it, with explicit position ids (a remainder starts at position `shared` whatever its
    padding) and a mask that skips the padding between the head and the remainder. The head is shared only
    when it saves more tokens than a forward costs (`ModelRunner.forward_cost`) and `share_prefix` is on.

    `soft` (per prompt `(positions, embeds)` or None, from `tokenization.SoftPrompt`) prefills the remainders by
    `inputs_embeds`: the token embeddings with each soft position's row replaced. The shared head stops before
    the first soft position of any prompt (soft tokens differ between prompts whatever their placeholder id).
    """

    def __init__(self, prompts: list[list[int]], runner: ModelRunner, share_prefix: bool = True, soft=None):
        soft = soft or [None] * len(prompts)
        shared = shared_prefix_length(prompts) if len(prompts) > 1 else 0
        shared = min([shared] + [int(s[0][0]) for s in soft if s is not None and len(s[0])])
        if not share_prefix or (len(prompts) - 1) * shared <= runner.forward_cost:
            shared = 0
        cache = None
        if shared:
            head = torch.tensor([prompts[0][:shared]], device=runner.device)
            _, cache = runner(head, torch.ones_like(head), torch.arange(shared, device=runner.device)[None],
                              last_only=True)
            cache.reorder_cache(torch.zeros(len(prompts), dtype=torch.long, device=runner.device))
        ids, mask = left_pad([p[shared:] for p in prompts], pad_token_id=0)  # padding is masked out: any id does
        ids, mask = ids.to(runner.device), mask.to(runner.device)
        positions = shared + (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() numbers left padding
        embeds = soft_inputs(runner.model, ids, soft, [ids.shape[1] - len(p) for p in prompts])
        mask = torch.cat([torch.ones((len(prompts), shared), dtype=mask.dtype, device=mask.device), mask], dim=1)
        logits, self.cache = runner(ids, mask, positions, cache=cache, last_only=True, inputs_embeds=embeds)
        self.last_logits = logits[:, -1, :]
        self.shared = shared
        self.mask = mask.bool().cpu().numpy()  # (prompts, cache positions): which hold the prompt's tokens
        self.lengths = mask.sum(-1).cpu().numpy()  # real tokens per prompt: the position of the first generated token


# What one more batch row costs in a packed forward besides its tokens: its copy of a cache row.
BATCH_ROW_COST_TOKENS = 2


class TokenTree:
    """The prompts' KV cache, one row per prompt, and every token fed after them as a tree of segments.

    A segment is a run of tokens fed after a prompt and after `ancestors`, cache positions of tokens fed
    earlier (a beam's generated prefix). All segments of a prompt go into its row (or a copy of it), side by
    side, and a 4D mask lets each token see only its prompt, its ancestors and the tokens before it in its
    own segment, at the position ids it would have alone. The beams of a prompt thus share its cache rows:
    no per-beam copy, reorder or growth of the prompt's keys and values, which step by step beam search
    otherwise pays on every step (the model's work per token is the same).
    """

    def __init__(self, prompt: PromptBatch):
        self.prompt = prompt
        self.cache = prompt.cache
        self.row_prompt = np.arange(len(prompt.lengths))  # the prompt of each cache row (sorted)
        self.width = prompt.mask.shape[1]  # cache positions filled so far

    def keep_prompts(self, prompts: np.ndarray) -> None:
        """Drops the cache rows of every prompt not in `prompts` (sorted, unique)."""
        if len(prompts) < len(self.row_prompt):
            rows = np.searchsorted(self.row_prompt, prompts)
            self.cache.reorder_cache(torch.from_numpy(rows).to(self.prompt_device))
            self.row_prompt = self.row_prompt[rows]

    @property
    def prompt_device(self):
        return self.prompt.last_logits.device

    def step(self, runner: ModelRunner, prompts: np.ndarray, ancestors: np.ndarray, tokens: np.ndarray, riding=None):
        """Feeds one token per beam (beams grouped by prompt; every prompt of the tree has beams or riding
        segments) and keeps them.

        `riding` (optional): segments `(prompts, ancestors, fed, scored)` to score in the same forward, as
        `score` takes them (their ancestors as many as the beams'). They go beside their prompt's beams or into
        copies of its cache row, whichever pads less (`_pack`); no later token sees them.

        Returns the beams' next-token logits (beams, vocab), the cache positions their tokens took, and the
        riding segments' log-probabilities as `score` returns them (an empty list without).
        """
        rows = np.searchsorted(self.row_prompt, prompts)
        slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # the beam's place among its prompt's beams
        num_rows = len(self.row_prompt)
        bins = [np.flatnonzero(rows == r).tolist() for r in range(num_rows)]
        fed, bin_rows, cache = [[t] for t in tokens.tolist()], np.arange(num_rows), self.cache
        if riding is not None:
            ride_prompts, ride_ancestors, ride_fed, _ = riding
            bin_rows, ride_bins = _pack(np.searchsorted(self.row_prompt, ride_prompts), [len(f) for f in ride_fed],
                                        kept=np.bincount(rows, minlength=num_rows))
            bins = [(bins[b] if b < num_rows else []) + [len(fed) + i for i in ride] for b, ride in enumerate(ride_bins)]
            fed, prompts = fed + ride_fed, np.concatenate([prompts, ride_prompts])
            ancestors = np.concatenate([ancestors, ride_ancestors])
            if len(bin_rows) > num_rows:
                cache = select_rows(self.cache, torch.from_numpy(bin_rows).to(self.prompt_device))
        logits, starts = self._forward(runner, cache, bin_rows, bins, fed, prompts, ancestors)
        if cache is not self.cache:
            cache.reorder_cache(torch.arange(num_rows, device=self.prompt_device))  # the copies' rows leave
            self.cache = cache
        positions = self.width + slot
        self.width += logits.shape[1]
        ridden = [] if riding is None else _log_probs(logits, starts[len(rows) :], riding[2], riding[3])
        return logits[rows, slot], positions, ridden

    def score(self, runner: ModelRunner, prompts: list[int], ancestors: np.ndarray, fed: list[list[int]],
              scored: list[list[int] | None]) -> list:
        """Feeds each segment's tokens `fed[i]` after prompt `prompts[i]` and its `ancestors[i]` (cache
        positions), leaving the tree as it was.

        Returns, per segment, the float32 log-probabilities of its tokens `scored` (scored[i][j] at the position
        that predicts it: `len(fed[i]) - len(scored[i]) + j`), or, where scored[i] is None, the log-softmax of its
        last position's logits (the distribution over the next token).
        """
        rows = np.searchsorted(self.row_prompt, np.asarray(prompts))
        bin_rows, bins = _pack(rows, [len(f) for f in fed])
        same = np.array_equal(bin_rows, np.arange(len(self.row_prompt)))
        forked = select_rows(self.cache, None if same else torch.from_numpy(bin_rows).to(self.prompt_device))
        logits, starts = self._forward(runner, forked, bin_rows, bins, fed, np.asarray(prompts), ancestors)
        return _log_probs(logits, starts, fed, scored)

    def _forward(self, runner, cache, bin_rows, bins, fed, prompts, ancestors):
        """One forward of the segments packed in `bins` (segment indices per batch row; row b extends the cache
        row `bin_rows[b]`). Returns the logits (bins, width, vocab) and each segment's (bin, first column)."""
        lengths = [len(f) for f in fed]
        width = max(sum(lengths[i] for i in b) for b in bins)
        ids = np.full((len(bins), width), self.prompt_eos(runner), dtype=np.int64)
        positions = np.zeros((len(bins), width), dtype=np.int64)
        seen = np.zeros((len(bins), width, self.width + width), dtype=bool)
        seen[:, :, : self.prompt.mask.shape[1]] = self.prompt.mask[self.row_prompt[bin_rows]][:, None, :]
        generated = ancestors.shape[1]
        starts = np.zeros((len(fed), 2), dtype=np.int64)
        causal = np.tril(np.ones((width, width), dtype=bool))
        for b, segments in enumerate(bins):
            at = 0
            for i in segments:
                n = lengths[i]
                ids[b, at : at + n] = fed[i]
                positions[b, at : at + n] = self.prompt.lengths[prompts[i]] + generated + np.arange(n)
                seen[b, at : at + n, ancestors[i]] = True
                seen[b, at : at + n, self.width + at : self.width + at + n] = causal[:n, :n]
                starts[i] = (b, at)
                at += n
            seen[b, at:, self.width + at : self.width + width] = causal[: width - at, : width - at]  # padding sees itself
        device = self.prompt_device
        mask = torch.zeros(seen.shape, dtype=runner.dtype, device=device)
        mask.masked_fill_(~torch.from_numpy(seen).to(device), torch.finfo(runner.dtype).min)
        logits, _ = runner(torch.from_numpy(ids).to(device), mask[:, None], torch.from_numpy(positions).to(device),
                           cache=cache, real_tokens=sum(lengths))
        return logits, starts

    @staticmethod
    def prompt_eos(runner: ModelRunner) -> int:
        return runner.trie.eos_token_id


def _pack(rows: np.ndarray, lengths: list[int], kept=None) -> tuple[np.ndarray, list[list[int]]]:
    """Packs segments (cache row, length) into batch rows of one cache row each, padded to the fullest.

    Per cache row, longest first into the first batch row with room (first-fit decreasing) under a capacity;
    of a few capacities (multiples of the longest segment, fractions of a cache row's tokens) the one with the
    fewest padded tokens wins, each batch row counting `BATCH_ROW_COST_TOKENS` more for its copy of the cache.
    `kept` (tokens per cache row, one entry per cache row): batch row `r` extends cache row `r` in place and
    already holds `kept[r]` tokens; segments fill it before new batch rows (which then copy every kept row
    too: the forward's cache is a copy of them all).
    """
    kept = np.zeros(0, dtype=np.int64) if kept is None else np.asarray(kept, dtype=np.int64)
    by_row: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        by_row.setdefault(int(rows[i]), []).append(i)
    longest = max(list(lengths) + kept.tolist())
    totals = [sum(lengths[i] for i in segments) + (int(kept[row]) if row < len(kept) else 0)
              for row, segments in by_row.items()]
    capacities = {longest * m for m in range(1, 9)} | {-(-t // k) for t in totals for k in range(1, 5)}
    best = None
    for capacity in sorted(c for c in capacities if c >= longest):
        bins, fills, bin_rows = [[] for _ in kept], kept.tolist(), list(range(len(kept)))
        for row in sorted(by_row):
            own = [row] if row < len(kept) else []
            for i in by_row[row]:
                b = next((b for b in own if fills[b] + lengths[i] <= capacity), None)
                if b is None:
                    bins.append([])
                    fills.append(0)
                    bin_rows.append(row)
                    b = len(bins) - 1
                    own.append(b)
                bins[b].append(i)
                fills[b] += lengths[i]
        copies = len(bins) if len(bins) > len(kept) else 0
        cost = len(bins) * max(fills) + (copies + len(kept)) * BATCH_ROW_COST_TOKENS
        if best is None or cost < best[0]:
            best = (cost, np.array(bin_rows, dtype=np.int64), bins)
    return best[1], best[2]


def _log_probs(logits: torch.Tensor, starts: np.ndarray, fed: list[list[int]], scored: list[list[int] | None]) -> list:
    """Per segment, the log-probabilities `TokenTree.score` returns, from the packed logits: a scored token's
    logit less its position's log-sum-exp. The log-sum-exp is taken per segment over the positions that score
    a token only (never the padding, nor a prefix's earlier positions), a few rows at a time: the same values
    as one call over every position, without its temporaries the size of all the logits."""
    out = []
    for i, (b, at) in enumerate(starts.tolist()):
        end = at + len(fed[i])
        first = end - (1 if scored[i] is None else len(scored[i]))
        rows = logits[b, first:end].float()
        log_norm = torch.logsumexp(rows, dim=-1)
        if scored[i] is None:
            out.append(rows[0] - log_norm[0])
        else:
            wanted = torch.tensor(scored[i], device=logits.device)
            out.append((rows[torch.arange(len(wanted), device=logits.device), wanted] - log_norm).cpu().numpy())
    return out
