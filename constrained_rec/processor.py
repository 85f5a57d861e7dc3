"""`TitleTrieProcessor`: a transformers logits processor that only lets the model write catalog titles."""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from constrained_rec.kernels import torch_mask, trie_walk
from constrained_rec.trie import TitleTrie

_BITS_DTYPE = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float64: torch.int64}
_BACKENDS = ("auto", "numba", "torch")


class TitleTrieProcessor(LogitsProcessor):
    r"""
    [`LogitsProcessor`] that restricts generation to the titles of a [`TitleTrie`]: at every step, each row
    may only continue its generated ids along a trie path, so every finished row is a complete catalog
    title followed by EOS. Works with greedy search, sampling and beam search (any `num_beams` and
    `num_return_sequences`), batched left-padded prompts, on CPU (Numba kernel) and CUDA (torch kernel).

    The generated ids of a row are `input_ids[row, prompt_length:]`; the walk is stateless, so beams may be
    reordered freely between steps. Scores are masked in place (set to `-inf`) and returned.

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

    Raises `ValueError` during generation when a row's generated ids are not a trie path (naming the row and
    its ids), or when exclusion leaves a row no title to finish; it never leaves a row unconstrained.

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
    ):
        if not isinstance(trie, TitleTrie):
            raise ValueError(f"`trie` has to be a TitleTrie, but is {type(trie).__name__}")
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, (int, np.integer)) or prompt_length < 0:
            raise ValueError(f"`prompt_length` has to be a non-negative integer, but is {prompt_length!r}")
        if pad_token_id is not None and (not isinstance(pad_token_id, (int, np.integer)) or pad_token_id < 0):
            raise ValueError(f"`pad_token_id` has to be None or a non-negative integer, but is {pad_token_id!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"`backend` has to be one of {_BACKENDS}, but is {backend!r}")
        self.trie = trie
        self.prompt_length = int(prompt_length)
        self.pad_token_id = -1 if pad_token_id is None else int(pad_token_id)
        self.backend = backend
        if exclude is None:
            self.num_prompts, self.excluded, self.excluded_offsets = None, np.zeros(0, dtype=np.int64), np.zeros(2, dtype=np.int64)
        else:
            self.excluded, self.excluded_offsets = trie.excluded_positions(exclude)
            self.num_prompts = len(self.excluded_offsets) - 1
        self._checked_vocab: int | None = None
        self._device_tries: dict[torch.device, torch_mask.DeviceTrie] = {}
        self._device_excluded: dict[torch.device, torch.Tensor] = {}

    def _rows_per_prompt(self, num_rows: int) -> int:
        if self.num_prompts is None:
            return max(num_rows, 1)
        if num_rows % self.num_prompts:
            raise ValueError(
                f"got {num_rows} rows for {self.num_prompts} prompts in `exclude`; rows must be a multiple of the "
                "prompts (batch size x beams x returned sequences)"
            )
        return num_rows // self.num_prompts

    def _check_shapes(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> None:
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(
                f"input_ids have {input_ids.shape[1]} columns, fewer than prompt_length={self.prompt_length}; "
                "pass the padded prompt length, inputs['input_ids'].shape[1]"
            )
        if scores.dtype not in _BITS_DTYPE:
            raise ValueError(f"scores must be float32, float16, bfloat16 or float64, got {scores.dtype}")
        if self._checked_vocab != scores.shape[1]:
            if self.trie.max_token_id >= scores.shape[1]:
                raise ValueError(
                    f"the trie holds token id {self.trie.max_token_id} but scores have only {scores.shape[1]} "
                    "columns: the trie was built with another tokenizer than this model's"
                )
            self._checked_vocab = scores.shape[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._check_shapes(input_ids, scores)
        rows_per_prompt = self._rows_per_prompt(scores.shape[0])
        generated = input_ids[:, self.prompt_length :]
        use_numba = self.backend == "numba" or (self.backend == "auto" and scores.device.type == "cpu")
        if use_numba:
            if scores.device.type != "cpu":
                raise ValueError(f"backend='numba' needs CPU scores, got scores on {scores.device}")
            scores = scores if scores.is_contiguous() else scores.contiguous()
            status, depth = self._mask_numba(generated, scores, rows_per_prompt)
        else:
            status, depth = self._mask_torch(generated, scores, rows_per_prompt)
        self._raise_for_bad_rows(generated, status, depth, rows_per_prompt)
        return scores

    def _mask_numba(self, generated: torch.Tensor, scores: torch.Tensor, rows_per_prompt: int):
        num_rows = scores.shape[0]
        status = np.empty(num_rows, dtype=np.int64)
        depth = np.empty(num_rows, dtype=np.int64)
        bits_dtype = _BITS_DTYPE[scores.dtype]
        neg_inf_bits = torch.tensor(float("-inf"), dtype=scores.dtype).view(bits_dtype).item()
        trie = self.trie
        trie_walk.mask_scores(
            scores.view(bits_dtype).numpy(),
            np.ascontiguousarray(generated.cpu().numpy(), dtype=np.int64),
            *trie.walk_arrays(),
            trie.seq_item_offsets,
            self.excluded,
            self.excluded_offsets,
            rows_per_prompt,
            trie.eos_token_id,
            self.pad_token_id,
            neg_inf_bits,
            status,
            depth,
        )
        return status, depth

    def _mask_torch(self, generated: torch.Tensor, scores: torch.Tensor, rows_per_prompt: int):
        device = scores.device
        if device not in self._device_tries:
            trie = self.trie
            self._device_tries[device] = torch_mask.DeviceTrie.from_arrays(
                *trie.walk_arrays(), trie.seq_item_offsets, device=device
            )
            prompts = np.repeat(np.arange(len(self.excluded_offsets) - 1), np.diff(self.excluded_offsets))
            keys = prompts * (trie.num_items + 1) + self.excluded
            self._device_excluded[device] = torch.as_tensor(keys, dtype=torch.long, device=device)
        status, depth = torch_mask.mask_scores_torch(
            scores,
            generated.to(device=device, dtype=torch.long),
            self._device_tries[device],
            self._device_excluded[device],
            self.trie.num_items,
            rows_per_prompt,
            self.trie.eos_token_id,
            self.pad_token_id,
        )
        return status.cpu().numpy(), depth.cpu().numpy()

    def _raise_for_bad_rows(self, generated, status: np.ndarray, depth: np.ndarray, rows_per_prompt: int) -> None:
        bad = np.flatnonzero((status == trie_walk.OFF_TRIE) | (status == trie_walk.NOTHING_ALLOWED))
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
        raise ValueError(
            f"row {row} (prompt {row // rows_per_prompt}): every title that continues the generated ids {ids} is "
            "excluded; no catalog title can be finished"
        )
