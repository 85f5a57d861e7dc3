"""`TitleTrieProcessor`: a transformers logits processor that only lets the model write catalog titles."""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.decoding.masking import BACKENDS, mask_scores
from constrained_rec.kernels import trie_walk
from constrained_rec.trie.trie import TitleTrie
from constrained_rec.validation import check_int


class TitleTrieProcessor(LogitsProcessor):
    r"""
    [`LogitsProcessor`] that restricts generation to the titles of a [`TitleTrie`]: at every step, each row
    may only continue its generated ids along a trie path, so every finished row is a complete catalog
    title followed by EOS. Works with greedy search, sampling and beam search (any `num_beams` and
    `num_return_sequences`), batched left-padded prompts, on CPU (Numba kernel) and CUDA (torch kernel).

    The generated ids of a row are `input_ids[row, prompt_length:]`; the walk is stateless, so beams may be
    reordered freely between steps. Scores are masked in place (set to `-inf`) and returned.

    **Prompts given as embeddings** (`generate(inputs_embeds=...)`, e.g. prompts with collaborative soft tokens,
    `tokenization.SoftPrompt`): pass the prompts' `input_ids` (placeholders at the soft positions) alongside
    `inputs_embeds`; `generate()` then reads the embeddings for the prompt and keeps `input_ids` as the first
    columns of every row, so `prompt_length` is `input_ids.shape[1]` as without them (what
    `evaluation.recommenders` does). With `inputs_embeds` alone the rows hold only the generated ids: pass
    `prompt_length=0`, and with per-prompt inputs give `exclude`/`item_log_prior` for the batch's prompts in order
    (rows cannot be matched to prompts by their ids then, so no such check is made).

    With `item_log_prior` (a collaborative assistant's item distribution, per prompt), an allowed token `t`
    after the prefix `h` scores `s(t) + prior_weight * (log M(h + t) - log M(h))`, where `M(h)` is the prior mass
    of the items whose titles start with `h` (see `constrained_rec.decoding.constraints`); along a title this adds
    `prior_weight * log M(title)` to the model's score, and items of zero mass are excluded. With
    `prior_lookahead="max"`, `M(h)` is instead the mass of the best title under `h`: titles then compete by the
    best title they can still become, and each title's total lacks the per-prompt constant
    `constraints.prior_offset(prompt)`: the same for every title of a prompt, so complete titles rank as under
    `"sum"` (with `length_penalty=0`), while partial titles compete differently (and sampling draws each token
    differently); `generate()`'s sequence scores are higher by `-prior_offset(prompt)`.

    **Rows and prompts.** With per-prompt inputs (`exclude`, `item_log_prior`) for `P` prompts, the `rows` of a
    step are `P` consecutive groups of `rows / P` rows (batch x beams x returned sequences, as `generate()` lays
    them out): row `r` belongs to prompt `r // (rows / P)`. Rows of one group must share their prompt ids
    (`input_ids[:, :prompt_length]`); otherwise the inputs cover fewer prompts than the batch, and the call raises
    rather than re-map them.

    **Other processors.** transformers runs the processors it builds from `generate()` options (`no_repeat_ngram_size`,
    `min_new_tokens`, `bad_words_ids`, `repetition_penalty`, ...) before any passed in `logits_processor`, and the
    sampling warpers (`temperature`, `top_k`, `top_p`) after them (transformers 5). So warpers choose among the
    allowed tokens only and sampling stays exact, but bans reach this processor first: where one has removed every
    token the trie allows for a running row, no catalog title can continue, and the call raises naming the row and
    those tokens. `min_new_tokens` longer than a title (it bans EOS), `no_repeat_ngram_size` (titles repeat prompt
    n-grams, e.g. years) and `bad_words_ids` covering title tokens are therefore incompatible with exact catalog
    decoding. Passing this processor last in `logits_processor` is the best order (any custom processor after it
    could ban tokens unseen); score-only processors such as `repetition_penalty` are harmless.

    Args:
        trie (`TitleTrie`):
            The catalog's titles, tokenized exactly as the model writes them.
        prompt_length (`int`):
            Length of the (padded) prompt, `inputs["input_ids"].shape[1]`.
        exclude (`Sequence[Collection[int]]`, *optional*):
            One collection of item ids per prompt that must not be recommended to it (e.g. the user's history).
            Rows map to prompts as `row // (rows / prompts)`. A title stays allowed while one of its items is not
            excluded. Every id must be a catalog item.
        pad_token_id (`int`, *optional*):
            Besides EOS, the id a finished row may emit (greedy and sampling pad finished rows).
        backend (`str`, *optional*, defaults to `"auto"`):
            `"numba"` (CPU scores), `"torch"` (any device) or `"auto"` (Numba on CPU, torch elsewhere).
        item_log_prior (array-like of shape `(prompts, trie.num_items)`, *optional*):
            Per prompt, a log-probability per catalog item: column `j` is the `j`-th item id the trie was built with.
            `-inf` is zero mass (the item is excluded). Need not be normalised.
        prior_weight (`float`, *optional*, defaults to 1.0):
            `w` >= 0, the weight of the prior's log-mass.
        prior_lookahead (`str`, *optional*, defaults to `"sum"`):
            `"sum"` or `"max"`: what a partial title's increments look ahead to (see above).
        constraints (`ItemConstraints`, *optional*):
            Instead of `exclude`/`item_log_prior`/`prior_weight`: constraints already built for `trie`.

    Raises `ValueError` during generation when a row's generated ids are not a trie path (naming the row and
    its ids), when exclusion leaves a row no title to finish, when another processor already banned every
    token the trie allows at a row, or when a fused score left the scores' dtype (a `prior_weight` too large
    for float16 scores); it never leaves a row unconstrained.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList
    >>> from constrained_rec import TitleTrie, TitleTrieProcessor

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    >>> titles = [[5, 6, 7], [5, 9], [11, 12, 13, 14]]
    >>> trie = TitleTrie.from_token_sequences(titles, eos_token_id=2, item_ids=[100, 200, 300])
    >>> inputs = {"input_ids": torch.tensor([[1, 20, 21], [0, 1, 22]]), "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]])}
    >>> proc = TitleTrieProcessor(trie, prompt_length=3, exclude=[{100}, set()])
    >>> out = model.generate(**inputs, logits_processor=LogitsProcessorList([proc]), num_beams=2,
    ...     num_return_sequences=2, max_new_tokens=trie.max_length, do_sample=False)
    >>> recommended = [trie.output_item_ids(row[3:].tolist()) for row in out]
    >>> all(len(items) == 1 for items in recommended)  # every output is a catalog title
    True
    >>> [100] in recommended[:2]  # item 100 was excluded for the first prompt
    False

    ```
    """

    def __init__(
        self,
        trie: TitleTrie,
        prompt_length: int,
        exclude: Sequence[Collection[int]] | None = None,
        pad_token_id: int | None = None,
        backend: str = "auto",
        item_log_prior=None,
        prior_weight: float = 1.0,
        prior_lookahead: str = "sum",
        constraints: ItemConstraints | None = None,
    ):
        if not isinstance(trie, TitleTrie):
            raise ValueError(f"`trie` has to be a TitleTrie, but is {type(trie).__name__}")
        check_int(prompt_length, "`prompt_length`", least=0, numpy=True)
        check_int(pad_token_id, "`pad_token_id`", least=0, none=True, numpy=True)
        if backend not in BACKENDS:
            raise ValueError(f"`backend` has to be one of {BACKENDS}, but is {backend!r}")
        if constraints is None:
            constraints = ItemConstraints.build(trie, exclude=exclude, item_log_prior=item_log_prior,
                                                prior_weight=prior_weight, prior_lookahead=prior_lookahead)
        elif not isinstance(constraints, ItemConstraints) or exclude is not None or item_log_prior is not None:
            raise ValueError("pass either `constraints` (an ItemConstraints) or `exclude`/`item_log_prior`, not both")
        constraints.check_trie(trie)
        self.trie = trie
        self.constraints = constraints
        self.prompt_length = int(prompt_length)
        self.pad_token_id = -1 if pad_token_id is None else int(pad_token_id)
        self.backend = backend
        self._checked_vocab: int | None = None

    @property
    def num_prompts(self) -> int | None:
        return self.constraints.num_prompts

    def _check_shapes(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> None:
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(
                f"input_ids have {input_ids.shape[1]} columns, fewer than prompt_length={self.prompt_length}; "
                "pass the padded prompt length, inputs['input_ids'].shape[1]"
            )
        if self._checked_vocab != scores.shape[1]:
            width = scores.shape[1]
            if self.trie.max_token_id >= width:
                raise ValueError(
                    f"the trie holds token id {self.trie.max_token_id} but scores have only {width} "
                    "columns: the trie was built with another tokenizer than this model's"
                )
            for name, value in (("pad_token_id", self.pad_token_id), ("the trie's EOS id", self.trie.eos_token_id)):
                if value >= width:
                    raise ValueError(f"{name} {value} is not a column of the scores, which have {width} (ids 0 to "
                                     f"{width - 1}); pass this model's pad/EOS ids")
            self._checked_vocab = width

    def _check_row_prompts(self, input_ids: torch.LongTensor, rows_per_prompt: int) -> None:
        """Rows mapped to one prompt must share its prompt ids; otherwise the per-prompt inputs are too short."""
        if self.num_prompts is None or rows_per_prompt == 1 or self.prompt_length == 0:
            return
        prompts = input_ids[:, : self.prompt_length].reshape(self.num_prompts, rows_per_prompt, self.prompt_length)
        differs = (prompts != prompts[:, :1]).any(dim=2).any(dim=1)
        if bool(differs.any()):
            p = int(differs.nonzero()[0, 0])
            raise ValueError(
                f"`exclude`/`item_log_prior` cover {self.num_prompts} prompts, so each owns {rows_per_prompt} consecutive "
                f"rows, but the rows of prompt {p} (rows {p * rows_per_prompt} to {(p + 1) * rows_per_prompt - 1}) "
                "hold different prompts: give one entry per prompt of the batch (row r belongs to prompt "
                "r // (rows / prompts))"
            )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._check_shapes(input_ids, scores)
        rows_per_prompt = self.constraints.rows_per_prompt(scores.shape[0])
        self._check_row_prompts(input_ids, rows_per_prompt)
        generated = input_ids[:, self.prompt_length :]
        status, depth, scores = mask_scores(scores, generated, self.trie, self.constraints, rows_per_prompt,
                                            self.pad_token_id, self.backend)
        self._raise_for_bad_rows(generated, status, depth, rows_per_prompt)
        return scores

    def _raise_for_bad_rows(self, generated, status: np.ndarray, depth: np.ndarray, rows_per_prompt: int) -> None:
        bad = np.flatnonzero(status >= trie_walk.OFF_TRIE)
        if len(bad) == 0:
            return
        row = int(bad[0])
        ids = generated[row].tolist()
        if status[row] == trie_walk.OFF_TRIE:
            raise ValueError(
                f"row {row}: generated ids {ids} are not a path of the title trie (token {ids[depth[row]]} at "
                f"position {int(depth[row])} is not allowed there); was the processor applied from the first "
                f"generated token, with prompt_length={self.prompt_length}?"
            )
        if status[row] == trie_walk.PRIOR_OVERFLOW:
            raise ValueError(
                f"row {row}: after the generated ids {ids}, a finite score plus its prior increment (prior_weight="
                f"{self.constraints.prior_weight!r}) falls below the range of the scores' dtype and would read as "
                "masked; lower prior_weight or score in float32"
            )
        if status[row] == trie_walk.ALL_BANNED:
            allowed = self.trie.next_tokens(ids)
            raise ValueError(
                f"row {row}: another logits processor already scored -inf every token the trie allows after the "
                f"generated ids {ids} (tokens {allowed[:20]}), so no catalog title can continue. generate() options "
                "that ban tokens (no_repeat_ngram_size, min_new_tokens, bad_words_ids, top_k/top_p when sampling) run "
                "before this processor; turn them off for catalog decoding (see the TitleTrieProcessor docstring)"
            )
        raise ValueError(
            f"row {row} (prompt {row // rows_per_prompt}): every title that continues the generated ids {ids} is "
            "excluded (or has zero prior mass); no catalog title can be finished"
        )
