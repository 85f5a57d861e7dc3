"""Brute-force references over a plain list of sequences, for the property tests."""

from __future__ import annotations


def complete(seqs, eos):
    return [list(s) + [eos] for s in seqs]


def allowed_next(seqs, eos, prefix, item_ids=None, excluded=frozenset()):
    """Tokens t such that prefix + [t] starts a full sequence with at least one item not excluded."""
    item_ids = list(range(len(seqs))) if item_ids is None else list(item_ids)
    prefix = list(prefix)
    out = set()
    for item, full in zip(item_ids, complete(seqs, eos)):
        if item in excluded or len(full) <= len(prefix) or full[: len(prefix)] != prefix:
            continue
        out.add(full[len(prefix)])
    return sorted(out)


def items_of(seqs, eos, generated, item_ids=None):
    item_ids = list(range(len(seqs))) if item_ids is None else list(item_ids)
    generated = list(generated)
    if not generated or generated[-1] != eos:
        generated = generated + [eos]
    return sorted(i for i, full in zip(item_ids, complete(seqs, eos)) if full == generated)


def is_path(seqs, eos, prefix):
    prefix = list(prefix)
    return any(full[: len(prefix)] == prefix for full in complete(seqs, eos))
