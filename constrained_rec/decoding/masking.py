"""`mask_scores`: the one entry to the trie-mask kernels; it picks Numba or torch and owns the score bit-view."""

from __future__ import annotations

import numpy as np
import torch

from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.kernels import torch_mask, trie_walk
from constrained_rec.trie.trie import TitleTrie

BACKENDS = ("auto", "numba", "torch")
_BITS_DTYPE = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float64: torch.int64}
SCORE_DTYPES = tuple(_BITS_DTYPE)


def use_numba(backend: str, device: torch.device) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"`backend` has to be one of {BACKENDS}, but is {backend!r}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"backend='numba' needs CPU scores, got scores on {device}")
    return backend == "numba" or (backend == "auto" and device.type == "cpu")


def mask_scores(scores: torch.Tensor, generated: torch.Tensor, trie: TitleTrie, constraints: ItemConstraints,
                rows_per_prompt: int, pad_token_id: int = -1, backend: str = "auto") -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Masks `scores` to the tokens the trie allows after each row's `generated` ids, adding prior increments.

    Row ``r`` belongs to prompt ``min(r // rows_per_prompt, prompts - 1)`` of `constraints`. Scores may be
    float32, float16, bfloat16 or float64. Returns (status, depth) per row as numpy arrays (walk outcomes of
    ``kernels.trie_walk``) and the masked scores: `scores` itself, or a contiguous copy on the Numba path
    when `scores` was not contiguous.
    """
    if scores.dtype not in _BITS_DTYPE:
        raise ValueError(f"scores must be float32, float16, bfloat16 or float64, got {scores.dtype}")
    if scores.ndim != 2 or generated.ndim != 2 or generated.shape[0] != scores.shape[0]:
        raise ValueError(f"scores (rows, vocab) and generated ids (rows, steps) need the same rows, got "
                         f"{tuple(scores.shape)} and {tuple(generated.shape)}")
    if use_numba(backend, scores.device):
        scores = scores if scores.is_contiguous() else scores.contiguous()
        status, depth = _mask_numba(scores, generated, trie, constraints, rows_per_prompt, pad_token_id)
        return status, depth, scores
    status, depth = torch_mask.mask_scores_torch(
        scores, generated.to(device=scores.device, dtype=torch.long), trie.device_arrays(scores.device),
        constraints.on_device(scores.device), rows_per_prompt, pad_token_id,
    )
    return status.cpu().numpy(), depth.cpu().numpy(), scores


def _mask_numba(scores, generated, trie, constraints, rows_per_prompt, pad):
    num_rows = scores.shape[0]
    status = np.empty(num_rows, dtype=np.int64)
    depth = np.empty(num_rows, dtype=np.int64)
    ids = np.ascontiguousarray(generated.cpu().numpy(), dtype=np.int64)
    if not constraints.has_prior:
        # Masking only moves bits: one kernel for every float dtype, bfloat16 included.
        bits_dtype = _BITS_DTYPE[scores.dtype]
        neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype).view(bits_dtype).numpy()[()]
        trie_walk.mask_scores(scores.view(bits_dtype).numpy(), ids, trie.arrays(), constraints.kernel_arrays,
                              rows_per_prompt, pad, neg_inf, 0.0, status, depth)
        return status, depth
    # With a prior the kernel adds values, in float32 or float64; half precision goes through float32 (the torch
    # kernel rounds alike).
    wide = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
    neg_inf = wide.new_tensor(float("-inf")).numpy()[()]
    limit = torch.finfo(scores.dtype).max  # the range of the dtype the scores go back to
    trie_walk.mask_scores(wide.numpy(), ids, trie.arrays(), constraints.kernel_arrays, rows_per_prompt, pad, neg_inf,
                          limit, status, depth)
    if wide is not scores:
        scores.copy_(wide)
    return status, depth
