"""Teacher outputs: what a student recommender (SASRec and kin) distils from the generative LLM recommender.

Per user (an :class:`~constrained_rec.evaluation.evaluate.EvalSample`), :func:`teacher_outputs` records

- the constrained top-K (:func:`constrained_rec.decoding.recommend.recommend`, the user's consumed items excluded): item ids
  best first with, per item, its title's ``log_prob`` (total log-probability of the title's tokens, EOS
  included, under the LM alone), ``prior_log_mass`` (``log M(title)`` of the collaborative prior, 0 without
  one), ``fused_log_prob`` (``log_prob + prior_weight * prior_log_mass``, what the search ranks by) and
  ``title_rank`` (the 0-based rank of its title). A title several items share gives each of them a row; rows
  stop at K items;
- optionally, the exact title log-probabilities of a given candidate set
  (:func:`constrained_rec.evaluation.user_signal.score_titles`, the user-signal control's scorer).

The file is a NumPy ``.npz`` (no pickles): ragged rows are padded, item ids with -1 and scores with NaN::

    user_ids, sample_index, target_item_ids   (n,)    int64
    topk_item_ids, topk_title_rank             (n, K)  int64
    topk_log_prob, topk_prior_log_mass, topk_fused_log_prob  (n, K)  float64
    candidate_item_ids                         (n, C)  int64   (C = 0 without candidates)
    candidate_log_prob                         (n, C)  float64
    metadata                                   JSON text: format, base model, catalog fingerprint, K, beams, ...

:meth:`TeacherOutputs.load` (or :func:`load_teacher_outputs`) reads it back and checks the format and shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

TEACHER_FORMAT = "constrained-rec-teacher/1"
_INT_ARRAYS = ("user_ids", "sample_index", "target_item_ids", "topk_item_ids", "topk_title_rank", "candidate_item_ids")
_FLOAT_ARRAYS = ("topk_log_prob", "topk_prior_log_mass", "topk_fused_log_prob", "candidate_log_prob")


@dataclass
class TeacherOutputs:
    """The arrays of a teacher file (see the module docstring) and its ``metadata``."""

    user_ids: np.ndarray
    sample_index: np.ndarray
    target_item_ids: np.ndarray
    topk_item_ids: np.ndarray
    topk_title_rank: np.ndarray
    topk_log_prob: np.ndarray
    topk_prior_log_mass: np.ndarray
    topk_fused_log_prob: np.ndarray
    candidate_item_ids: np.ndarray
    candidate_log_prob: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.user_ids)
        for name in _INT_ARRAYS + _FLOAT_ARRAYS:
            array = np.asarray(getattr(self, name), dtype=np.int64 if name in _INT_ARRAYS else np.float64)
            setattr(self, name, array)
            if len(array) != n:
                raise ValueError(f"teacher outputs: {name} has {len(array)} rows, user_ids {n}")
        for prefix in ("topk", "candidate"):
            names = [f.name for f in fields(self) if f.name.startswith(prefix)]
            shapes = {getattr(self, name).shape for name in names}
            if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                raise ValueError(f"teacher outputs: {names} must be 2-D arrays of one shape, got {sorted(shapes)}")

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` file (the suffix is added when missing)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _INT_ARRAYS + _FLOAT_ARRAYS}
        metadata = {"format": TEACHER_FORMAT, **self.metadata}
        with open(path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz"), "wb") as file:
            np.savez(file, metadata=np.array(json.dumps(metadata)), **arrays)
            return Path(file.name)

    @classmethod
    def load(cls, path: str | Path) -> "TeacherOutputs":
        """Read a file written by :meth:`save`; another file is an error naming what is wrong."""
        with np.load(path, allow_pickle=False) as archive:
            missing = [n for n in ("metadata",) + _INT_ARRAYS + _FLOAT_ARRAYS if n not in archive.files]
            if missing:
                raise ValueError(f"{path} is not a teacher-outputs file: it lacks {missing}")
            metadata = json.loads(str(archive["metadata"]))
            if metadata.get("format") != TEACHER_FORMAT:
                raise ValueError(f"{path}: format {metadata.get('format')!r}, expected {TEACHER_FORMAT!r}")
            return cls(**{n: archive[n] for n in _INT_ARRAYS + _FLOAT_ARRAYS}, metadata=metadata)


def load_teacher_outputs(path: str | Path) -> TeacherOutputs:
    """:meth:`TeacherOutputs.load`."""
    return TeacherOutputs.load(path)


def _padded(rows: Sequence[Sequence], width: int, fill, dtype) -> np.ndarray:
    array = np.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        array[i, :len(row)] = row
    return array


def _topk_rows(recommendations, k: int) -> list[list[tuple]]:
    """Per user, ``(item, title rank, log_prob, prior_log_mass, fused)`` of its titles' items, at most ``k``."""
    rows = []
    for recs in recommendations:
        row = []
        for rank, rec in enumerate(recs):
            for item in rec.item_ids:
                if len(row) < k:
                    row.append((item, rank, rec.log_prob, rec.prior_log_mass, rec.fused_log_prob))
        rows.append(row)
    return rows


def teacher_outputs(model, tokenizer, trie, samples: Sequence, k: int, *, num_beams: int | None = None,
                    exclude_history: bool = True, item_log_prior=None, prior_weight: float = 1.0,
                    candidates: Sequence[Sequence[int]] | None = None, batch_size: int = 8,
                    metadata: dict | None = None) -> TeacherOutputs:
    """The teacher outputs of ``model`` for ``samples`` (:class:`~constrained_rec.evaluation.evaluate.EvalSample`).

    Args:
        model, tokenizer, trie: the LM (in eval mode), its tokenizer and the catalog trie.
        samples: the users; their ``exclude`` sets are kept out of the top-K when ``exclude_history``.
        k (`int`): items per user in the top-K (titles are decoded with beam search, ``num_beams`` >= ``k``).
        item_log_prior (array `(len(samples), trie.num_items)`, *optional*), prior_weight (`float`): a
            collaborative prior fused into the search (see :func:`constrained_rec.decoding.recommend.recommend`).
        candidates (`Sequence[Sequence[int]]`, *optional*): per user, catalog item ids whose exact title
            log-probability is recorded (:func:`constrained_rec.evaluation.user_signal.score_titles`).
        metadata (`dict`, *optional*): more fields for the file's metadata.
    """
    from constrained_rec.decoding.recommend import recommend
    from constrained_rec.decoding.scoring import score_titles
    from constrained_rec.hf import base_model_name

    if candidates is not None and len(candidates) != len(samples):
        raise ValueError(f"got candidates for {len(candidates)} users and {len(samples)} samples; "
                         "give one list per user")
    prompts = [s.prompt for s in samples]
    result = recommend(model, tokenizer, prompts, trie, k, num_beams=num_beams,
                       exclude=[s.exclude for s in samples] if exclude_history else None,
                       item_log_prior=item_log_prior, prior_weight=prior_weight, batch_size=batch_size)
    rows = _topk_rows(result.recommendations, k)
    columns = [[[entry[c] for entry in row] for row in rows] for c in range(5)]
    candidates = [list(c) for c in candidates] if candidates is not None else [[] for _ in samples]
    scored = score_titles(model, tokenizer, prompts, candidates, trie) if any(candidates) else [[] for _ in samples]
    width = max((len(c) for c in candidates), default=0)
    return TeacherOutputs(
        user_ids=[s.user_id for s in samples], sample_index=[s.index for s in samples],
        target_item_ids=[s.target_item_id for s in samples],
        topk_item_ids=_padded(columns[0], k, -1, np.int64), topk_title_rank=_padded(columns[1], k, -1, np.int64),
        topk_log_prob=_padded(columns[2], k, np.nan, np.float64),
        topk_prior_log_mass=_padded(columns[3], k, np.nan, np.float64),
        topk_fused_log_prob=_padded(columns[4], k, np.nan, np.float64),
        candidate_item_ids=_padded(candidates, width, -1, np.int64),
        candidate_log_prob=_padded(scored, width, np.nan, np.float64),
        metadata={"base_model": base_model_name(model), "catalog_fingerprint": trie.fingerprint(), "k": k,
                  "num_beams": num_beams or k, "prior": item_log_prior is not None,
                  "prior_weight": float(prior_weight), "exclude_history": exclude_history, **(metadata or {})})
