"""The trie's search API (`TrieCursor`, root / children / item_range / completion) and its item questions
(title_token_ids, items_with_same_title, item_ids_in_build_order), against brute force (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trie import EOS, catalogs

from brute import allowed_next, complete
from constrained_rec import TitleTrie, TrieCursor
from constrained_rec.kernels.trie_walk import TrieArrays
from constrained_rec.trie.trie import _ARRAYS


def _ids(seqs, item_ids):
    return list(range(len(seqs))) if item_ids is None else list(item_ids)


def _items_under(seqs, item_ids, prefix):
    return sorted(i for i, full in zip(_ids(seqs, item_ids), complete(seqs, EOS)) if full[: len(prefix)] == prefix)


@settings(max_examples=200, deadline=None)
@given(catalogs())
def test_cursors_walk_every_path_of_brute_force(catalog):
    seqs, item_ids = catalog
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    fulls = complete(seqs, EOS)
    stack, reached = [([], trie.root())], set()
    while stack:
        prefix, cursor = stack.pop()
        assert cursor.depth == len(prefix)
        lo, hi = trie.item_range(cursor)
        assert sorted(trie.items_at(np.arange(lo, hi))) == _items_under(seqs, item_ids, prefix)
        completions = {tuple(full[len(prefix):]) for full in fulls if full[: len(prefix)] == prefix}
        assert bool(cursor.is_tail) == (len(completions) == 1)
        if cursor.is_tail:
            assert trie.completion(cursor) == list(completions.pop())
        else:
            with pytest.raises(ValueError, match="not a tail"):
                trie.completion(cursor)
        if prefix and prefix[-1] == EOS:
            reached.add(tuple(prefix))
            with pytest.raises(ValueError, match="past the EOS"):
                trie.children(cursor)
            continue
        tokens, children = trie.children(cursor)
        assert tokens.tolist() == allowed_next(seqs, EOS, prefix)
        assert children.depth == len(prefix) + 1 and len(children.node) == len(tokens)
        stack += [(prefix + [int(t)], children.at(c)) for c, t in enumerate(tokens)]
    assert reached == {tuple(full) for full in fulls}


@settings(max_examples=200, deadline=None)
@given(catalogs(), st.data())
def test_title_token_ids_and_same_titles_match_brute_force(catalog, data):
    seqs, item_ids = catalog
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    ids, fulls = _ids(seqs, item_ids), complete(seqs, EOS)
    asked = data.draw(st.lists(st.integers(0, len(ids) - 1), max_size=2 * len(ids)))
    assert trie.title_token_ids([ids[j] for j in asked]) == [fulls[j] for j in asked]
    for j, item in enumerate(ids):
        assert trie.items_with_same_title(item) == sorted(i for i, full in zip(ids, fulls) if full == fulls[j])
    assert trie.item_ids_in_build_order().tolist() == ids
    for seq, tokens in enumerate(trie.sequences()):
        lo, hi = trie.sequence_item_range(seq)
        assert sorted(trie.items_at(np.arange(lo, hi))) == _items_under(seqs, item_ids, tokens)
    all_lo, all_hi = trie.sequence_item_range(np.arange(len(trie)))
    assert all_lo.tolist() == [int(trie.sequence_item_range(s)[0]) for s in range(len(trie))]
    assert all_hi[-1] == trie.num_items and (all_lo[1:] == all_hi[:-1]).all()


def test_unknown_items_are_named():
    trie = TitleTrie.from_token_sequences([[5, 6], [7]], eos_token_id=EOS, item_ids=[10, 20])
    with pytest.raises(ValueError, match=r"item ids \[99\] are not in the trie's catalog of 2 items"):
        trie.title_token_ids([10, 99])
    with pytest.raises(ValueError, match=r"item ids \[30\]"):
        trie.items_with_same_title(30)
    with pytest.raises(ValueError, match="1.0"):
        trie.title_token_ids([1.0])
    assert trie.title_token_ids([]) == []


def test_cursor_helpers():
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=EOS)
    root = trie.root()
    assert root == TrieCursor(0, 0, 3, 0) and not root.is_tail
    tokens, children = trie.children(root)
    assert tokens.tolist() == [5, 8] and children.is_tail.tolist() == [False, True]
    assert children.at(np.array([False, True])).seq_lo.tolist() == [2]
    assert children.at(0) == TrieCursor(int(children.node[0]), 0, 2, 1)
    assert all(type(value) is int for value in children.at(0))
    many = root.repeat(3)
    assert many.node.tolist() == [0, 0, 0] and many.seq_hi.tolist() == [3, 3, 3] and many.depth == 0
    joined = TrieCursor.concatenate([children, children.at(np.array([1]))])
    assert joined.seq_lo.tolist() == [0, 2, 2] and joined.depth == 1
    with pytest.raises(ValueError, match=r"one depth.*\[0, 1\]"):
        TrieCursor.concatenate([children, many])


def test_the_arrays_are_private():
    trie = TitleTrie.from_token_sequences([[5, 6], [7]], eos_token_id=EOS)
    assert [name for name in _ARRAYS if hasattr(trie, name)] == []
    kernel = trie.arrays()  # the kernels' view: the stored arrays themselves, no copies
    assert isinstance(kernel, TrieArrays) and kernel.eos == EOS
    assert all(getattr(kernel, name) is getattr(trie._arrays, name) for name in kernel._fields if name != "eos")
