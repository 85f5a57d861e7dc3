"""What both searches share: a found title, a prefix's allowed continuations and their fused scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from constrained_rec.decoding.constraints import ItemConstraints
from constrained_rec.trie.cursor import TrieCursor
from constrained_rec.trie.trie import TitleTrie


@dataclass
class Hypothesis:
    """A complete title found by a search: its sequence index in the trie, tokens (EOS included), scores.

    ``log_prob`` is the model's total log-probability, ``fused`` adds the prior's increments
    (``log_prob + w * log M(title)``), and ``score`` is what the search ranks by (``fused``, length-penalised
    in beam mode).
    """

    score: np.float32
    log_prob: np.float32
    fused: np.float32
    seq: int
    tokens: tuple


def allowed_children(trie: TitleTrie, constraints: ItemConstraints, prompt: int, cursor: TrieCursor):
    """The continuations prompt `prompt` may take after the prefix at `cursor` (a cursor of ints).

    Returns (tokens, children, increments): the next tokens the trie and the constraints allow, their cursors
    (one cursor of arrays), and their prior increments ``w * min(L(child) - L(prefix), 0)`` (float64; 0 without
    a prior; a tail's child is its own node, so 0), the kernels' formula (``trie_walk.prior_increment``) on the
    same per-node values, so that both paths score alike.
    """
    tokens, children = trie.children(cursor)
    keep = constraints.allowed(prompt, *trie.item_range(children))
    tokens, children = tokens[keep], children.at(keep)
    increments = np.zeros(len(tokens))
    if constraints.has_prior and len(tokens):
        parent = constraints.node_log_prior(prompt, cursor.node)[0]
        increments = constraints.prior_weight * np.minimum(constraints.node_log_prior(prompt, children.node) - parent,
                                                           0.0)
    return tokens, children, increments


def fuse(total, log_probs, increments) -> np.ndarray:
    """`total` plus each token's fused score as the processor writes it on float32 scores (log-prob plus
    increment, in float32); raises where a finite log-prob would turn into a non-finite score."""
    log_probs = np.asarray(log_probs, dtype=np.float32)
    with np.errstate(over="ignore"):
        fused = (total + (log_probs + np.asarray(increments).astype(np.float32))).astype(np.float32)
    bad = ~np.isfinite(fused) & np.isfinite(log_probs)
    if bad.any():
        raise ValueError(
            f"a fused score left float32's range ({float(np.broadcast_to(total, fused.shape)[bad][0])!r} so far, log-prob "
            f"{float(log_probs[bad][0])!r}, prior increment {float(np.asarray(increments)[bad][0])!r}): lower "
            "prior_weight"
        )
    return fused


def accumulate(start: np.float32, log_probs) -> np.float32:
    """Adds log-probabilities one at a time in float32, the order step-by-step decoding adds them."""
    total = np.float32(start)
    for value in log_probs:
        total = np.float32(total + np.float32(value))
    return total
