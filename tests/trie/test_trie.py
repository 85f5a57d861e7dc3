"""TitleTrie against brute force over the list of sequences (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brute import allowed_next, complete, items_of
from constrained_rec import TitleTrie

EOS = 2
TOKENS = st.integers(min_value=0, max_value=9).filter(lambda t: t != EOS)


@st.composite
def catalogs(draw, max_items=12, max_len=6):
    """Small vocabularies so that shared prefixes, duplicates and prefix titles are common."""
    seqs = draw(st.lists(st.lists(TOKENS, min_size=1, max_size=max_len), min_size=1, max_size=max_items))
    if draw(st.booleans()):
        item_ids = draw(st.lists(st.integers(-1000, 10**12), min_size=len(seqs), max_size=len(seqs), unique=True))
    else:
        item_ids = None
    return seqs, item_ids


@settings(max_examples=200, deadline=None)
@given(catalogs())
def test_complete_paths_equal_input_set(catalog):
    seqs, item_ids = catalog
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    expected = sorted({tuple(s) for s in complete(seqs, EOS)})
    assert [tuple(s) for s in trie.sequences()] == expected
    assert len(trie) == len(expected)
    assert trie.max_length == max(len(s) for s in seqs) + 1
    assert trie.num_items == len(seqs)


@settings(max_examples=200, deadline=None)
@given(catalogs(), st.data())
def test_next_tokens_matches_brute_force(catalog, data):
    seqs, item_ids = catalog
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    paths = complete(seqs, EOS)
    for _ in range(20):
        if data.draw(st.booleans()):  # a prefix of a real path (possibly complete)
            path = data.draw(st.sampled_from(paths))
            prefix = path[: data.draw(st.integers(0, len(path)))]
        else:  # arbitrary ids, mostly not trie paths
            prefix = data.draw(st.lists(st.integers(0, 10), max_size=7))
        assert trie.next_tokens(prefix) == allowed_next(seqs, EOS, prefix)


@settings(max_examples=200, deadline=None)
@given(catalogs())
def test_item_ids_of_duplicates_and_prefix_titles(catalog):
    seqs, item_ids = catalog
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    for s in seqs:
        expected = items_of(seqs, EOS, s, item_ids)
        assert sorted(trie.item_ids(s)) == expected  # EOS optional ...
        assert sorted(trie.item_ids(list(s) + [EOS])) == expected  # ... or present
        assert sorted(trie.output_item_ids(list(s) + [EOS, EOS, 0])) == expected
        assert sorted(trie.item_ids(list(s)[:-1])) == items_of(seqs, EOS, list(s)[:-1], item_ids)


def test_prefix_title_stays_generable():
    heat, heat_1995 = [7, 8], [7, 8, 9, 10]
    trie = TitleTrie.from_token_sequences([heat_1995, heat], eos_token_id=EOS, item_ids=[1995, 1])
    assert trie.next_tokens([7, 8]) == [EOS, 9]
    assert trie.item_ids(heat) == [1]
    assert trie.item_ids(heat_1995) == [1995]


def test_same_title_for_two_items_is_one_path():
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 6], [5, 7]], eos_token_id=EOS, item_ids=[30, 10, 20])
    assert len(trie) == 2 and trie.num_items == 3
    assert sorted(trie.item_ids([5, 6])) == [10, 30]


@settings(max_examples=50, deadline=None)
@given(catalogs())
def test_save_load_round_trip(tmp_path_factory, catalog):
    seqs, item_ids = catalog
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    folder = tmp_path_factory.mktemp("trie")
    trie.save(folder)
    loaded = TitleTrie.load(folder)
    assert loaded.fingerprint() == trie.fingerprint()
    assert list(loaded.sequences()) == list(trie.sequences())
    for s in seqs:
        assert loaded.item_ids(s) == trie.item_ids(s)
        for cut in range(len(s) + 1):
            assert loaded.next_tokens(s[:cut]) == trie.next_tokens(s[:cut])
    assert isinstance(loaded._arrays.seq_tokens, np.memmap)


class CharTokenizer:  # one token per character (its code point + 3, so never EOS), EOS = 2
    eos_token_id = EOS

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": [ord(c) + 3 for c in texts]}
        return {"input_ids": [[ord(c) + 3 for c in t] for t in texts]}


def test_titles_index_round_trip(tmp_path):
    titles = ["Heat (1995)", "Heat", "Heat (1995)"]
    trie = TitleTrie.from_titles(titles, CharTokenizer(), item_ids=[7, 8, 9])
    trie.save(tmp_path)
    for t in (trie, TitleTrie.load(tmp_path)):
        assert sorted(t.titles.items_for_title("Heat (1995)")) == [7, 9]
        assert t.titles.items_for_title("Heat (199") == []
        assert t.titles.title(8) == "Heat"
        with pytest.raises(KeyError, match="item 99"):
            t.titles.title(99)
    assert trie.item_ids([ord(c) + 3 for c in '"Heat"']) == [8]


@settings(max_examples=100, deadline=None)
# Lone surrogates (category Cs) are refused by design: a test of its own checks that message.
@given(st.lists(st.text(st.sampled_from("ab\x00\x01\x02") | st.characters(exclude_categories=["Cs"]), min_size=1,
                        max_size=6).filter(str.strip), min_size=1, max_size=8))  # tokenization refuses blank titles
def test_any_title_text_round_trips(tmp_path_factory, titles):
    """NUL (where marisa-trie keys end) and the escape character itself come back exactly."""
    trie = TitleTrie.from_titles(titles, CharTokenizer())
    folder = tmp_path_factory.mktemp("titles")
    trie.save(folder)
    for t in (trie, TitleTrie.load(folder)):
        for item, title in enumerate(titles):
            assert t.titles.title(item) == title
            assert t.titles.items_for_title(title) == [i for i, other in enumerate(titles) if other == title]
        assert t.titles.items_for_title("\x00".join(titles) + "\x00") == []


@pytest.mark.parametrize(
    "titles, item_ids, message",
    [
        ("ABC", None, "titles must be a sequence of title strings"),
        (b"AB", None, "titles must be a sequence of title strings"),
        (["A", 5], None, r"title 1 is 5 \(int\); every title must be a str"),
        (["A", None], None, r"title 1 is None"),
        (["A", "B"], [1, 1.5], r"item_ids\[1\] is 1.5"),
        (["A", "\udc80"], None, "title 1 .* lone surrogate"),
    ],
)
def test_bad_titles_are_named(titles, item_ids, message):
    with pytest.raises(ValueError, match=message):
        TitleTrie.from_titles(titles, CharTokenizer(), item_ids=item_ids)


def test_fingerprint_changes_with_the_catalog():
    a = TitleTrie.from_token_sequences([[5, 6], [7]], eos_token_id=EOS)
    b = TitleTrie.from_token_sequences([[5, 6], [8]], eos_token_id=EOS)
    c = TitleTrie.from_token_sequences([[5, 6], [7]], eos_token_id=EOS, item_ids=[0, 5])
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3
    assert a.fingerprint() == TitleTrie.from_token_sequences([[7], [5, 6]], eos_token_id=EOS, item_ids=[1, 0]).fingerprint()


@settings(max_examples=200, deadline=None)
@given(catalogs(), st.randoms(use_true_random=False))
def test_build_positions_map_given_order_to_positions(catalog, rng):
    seqs, item_ids = catalog
    ids = list(range(len(seqs))) if item_ids is None else item_ids
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=item_ids)
    assert trie._arrays.build_positions.shape == (len(seqs),)
    assert trie._arrays.item_ids_by_position[trie._arrays.build_positions].tolist() == ids
    assert sorted(trie._arrays.build_positions.tolist()) == list(range(len(seqs)))


@settings(max_examples=200, deadline=None)
@given(catalogs(), st.randoms(use_true_random=False), st.data())
def test_fingerprint_depends_on_the_catalog_not_its_order(catalog, rng, data):
    seqs, item_ids = catalog
    ids = list(range(len(seqs))) if item_ids is None else item_ids
    pairs = list(zip(ids, seqs))
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS, item_ids=ids)
    shuffled = pairs[:]
    rng.shuffle(shuffled)
    same = TitleTrie.from_token_sequences([s for _, s in shuffled], eos_token_id=EOS, item_ids=[i for i, _ in shuffled])
    assert same.fingerprint() == trie.fingerprint()
    assert same._arrays.item_ids_by_position.tolist() == trie._arrays.item_ids_by_position.tolist()
    # Any change to the set of (item id, sequence) pairs, or to EOS, changes it.
    which = data.draw(st.integers(0, len(pairs) - 1))
    changed = pairs[:]
    if data.draw(st.booleans()):
        changed[which] = (changed[which][0], changed[which][1] + [data.draw(TOKENS)])
    else:
        changed[which] = (max(ids) + 1, changed[which][1])
    other = TitleTrie.from_token_sequences([s for _, s in changed], eos_token_id=EOS, item_ids=[i for i, _ in changed])
    assert other.fingerprint() != trie.fingerprint()
    assert TitleTrie.from_token_sequences(seqs, eos_token_id=11, item_ids=ids).fingerprint() != trie.fingerprint()


def test_one_long_title_costs_its_tokens_not_rows_times_its_length():
    """The build once padded every row to the longest title: 2,000 short titles + one of 5,000 tokens
    allocated 2,001 x 5,001 codes (20 MB); proportional to the tokens it is well under 1 MB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 50, size=rng.integers(1, 8)).tolist() for _ in range(2000)]
    seqs.append(rng.integers(3, 50, size=5000).tolist())
    total_tokens = sum(len(s) for s in seqs)
    tracemalloc.start()
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100 * total_tokens, f"peak {peak} bytes for {total_tokens} tokens"
    assert trie.max_length == 5001
    assert trie.item_ids(seqs[-1]) == [2000]


@settings(max_examples=100, deadline=None)
@given(catalogs(max_items=8, max_len=6), st.lists(st.lists(TOKENS, min_size=30, max_size=80), max_size=3))
def test_long_titles_among_short_ones(catalog, long_seqs):
    seqs, _ = catalog
    seqs = seqs + long_seqs + [s[:-1] for s in long_seqs if len(s) > 1]  # long ones, and their prefixes
    trie = TitleTrie.from_token_sequences(seqs, eos_token_id=EOS)
    assert [tuple(s) for s in trie.sequences()] == sorted({tuple(s) for s in complete(seqs, EOS)})
    for s in seqs:
        for cut in range(0, len(s) + 1, 7):
            assert trie.next_tokens(s[:cut]) == allowed_next(seqs, EOS, s[:cut])
        assert sorted(trie.item_ids(s)) == items_of(seqs, EOS, s)


@settings(max_examples=100, deadline=None)
@given(catalogs())
def test_huge_token_ids_sort_like_small_ones(catalog):
    """Ids near 2**62 take the build's lexsort path instead of its one-int64-key sort."""
    seqs, item_ids = catalog
    huge = [[t + 2**62 if t > EOS else t for t in s] for s in seqs]
    trie = TitleTrie.from_token_sequences(huge, eos_token_id=EOS, item_ids=item_ids)
    assert [tuple(s) for s in trie.sequences()] == sorted({tuple(s) for s in complete(huge, EOS)})
    for s in huge:
        assert sorted(trie.item_ids(s)) == items_of(huge, EOS, s, item_ids)
        for cut in range(len(s) + 1):
            assert trie.next_tokens(s[:cut]) == allowed_next(huge, EOS, s[:cut])


def test_numpy_integer_tokens_are_ints():
    trie = TitleTrie.from_token_sequences([np.array([5, 6], dtype=np.int32), [np.int64(5), 7]], eos_token_id=EOS)
    assert trie.next_tokens([5]) == [6, 7]


def test_large_token_ids_use_wide_codes():
    big = 200_000  # beyond uint16 codes
    trie = TitleTrie.from_token_sequences([[big, 5], [big, 6], [70_000]], eos_token_id=EOS)
    assert trie.next_tokens([]) == [70_000, big]
    assert trie.next_tokens([big]) == [5, 6]


@pytest.mark.parametrize(
    "seqs, kwargs, message",
    [
        ([], {}, "empty list"),
        ([[5], []], {}, "sequence 1 .* is empty"),
        ([[5], [6, EOS, 7]], {}, "sequence 1 .* EOS id 2 at position 1"),
        ([[5], [-3]], {}, "sequence 1 .* negative token id -3 at position 0"),
        ([[5], [6, 1.5]], {}, r"sequence 1 \(item 1\) holds 1.5 \(float\) at position 1"),
        ([[5], [6], ["7"]], {"item_ids": [4, 5, 6]}, r"sequence 2 \(item 6\) holds '7' \(str\) at position 0"),
        ([[5, True]], {}, r"sequence 0 .* holds True \(bool\) at position 1"),
        ([[5, 2**64]], {}, "token ids must fit in 64 bits"),
        ([[5], [6]], {"item_ids": [1]}, "got 1 item_ids for 2 sequences"),
        ([[5], [6]], {"item_ids": [4, 4]}, "item id 4 is given for more than one"),
        ([[5], [6]], {"item_ids": ["a", "b"]}, r"item_ids\[0\] is 'a' \(str\)"),
        ([[5], [6]], {"item_ids": [0, 1.5]}, r"item_ids\[1\] is 1.5 \(float\)"),
        ([[5], [6]], {"item_ids": [0, "1"]}, r"item_ids\[1\] is '1' \(str\)"),
        ([[5], [6]], {"item_ids": [7, True]}, r"item_ids\[1\] is True \(bool\)"),
        ([[5], [6]], {"item_ids": [0, 2**63]}, r"item_ids\[1\] is 9223372036854775808 .* int64 range"),
        ([[5], [6]], {"item_ids": np.array([0, 2**63], np.uint64)}, "does not fit in int64"),
        ([[5], [6]], {"item_ids": "ab"}, "item_ids must be a sequence of int item ids"),
        ([[5]], {"eos_token_id": -1}, "eos_token_id must be an integer >= 0"),
    ],
)
def test_bad_input_is_named(seqs, kwargs, message):
    kwargs.setdefault("eos_token_id", EOS)
    with pytest.raises(ValueError, match=message):
        TitleTrie.from_token_sequences(seqs, **kwargs)


def test_load_of_a_missing_folder_says_what_it_wanted(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved TitleTrie"):
        TitleTrie.load(tmp_path)


def test_filler_rows_of_generate_are_flagged(tiny_llama):
    """Two reachable titles, four beams returned: two rows are fillers (repeats scored -1e9)."""
    import torch
    from transformers import LogitsProcessorList

    from constrained_rec import TitleTrieProcessor

    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7, 8]], eos_token_id=EOS, item_ids=[10, 11])
    prompts = torch.tensor([[1, 9, 4], [1, 3, 4]])
    out = tiny_llama.generate(
        prompts, attention_mask=torch.ones_like(prompts), num_beams=4, num_return_sequences=4,
        logits_processor=LogitsProcessorList([TitleTrieProcessor(trie, prompt_length=3, pad_token_id=0)]),
        max_new_tokens=trie.max_length, do_sample=False, pad_token_id=0, eos_token_id=EOS, length_penalty=0.0,
    )
    rows = out[:, 3:].tolist()
    distinct = trie.distinct_output_item_ids(rows, num_return_sequences=4)
    assert [sorted(map(tuple, titles)) for titles in distinct] == [[(10,), (11,)], [(10,), (11,)]]
    for row in rows:  # every row here is a complete title; the fillers are the repeats
        assert trie.is_complete(row) and trie.output_item_ids(row, strict=True) in ([10], [11])
    with pytest.raises(ValueError, match="not a multiple of num_return_sequences=3"):
        trie.distinct_output_item_ids(rows, num_return_sequences=3)


@pytest.mark.parametrize("row, complete, lenient", [
    ([5, 6, EOS, 0], True, [10]),
    ([5, 6], False, [10]),  # cut short: without strict mode it reads as the title [5, 6]
    ([5, 7], False, []),
    ([5, 7, 9, EOS], False, []),
    ([0, 0, 0], False, []),
])
def test_strict_output_item_ids(row, complete, lenient):
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7, 8]], eos_token_id=EOS, item_ids=[10, 11])
    assert trie.is_complete(row) is complete
    assert trie.output_item_ids(row) == lenient
    if complete:
        assert trie.output_item_ids(row, strict=True) == lenient
    else:
        with pytest.raises(ValueError, match="not a complete catalog title"):
            trie.output_item_ids(row, strict=True)
    expected = [[10], [11]] if complete else [[11]]
    assert trie.distinct_output_item_ids([row, [5, 7, 8, EOS], [5, 7, 8, EOS, 0]], 3) == [expected]


LOOSE = [
    ([5.9], r"prefix\[0\] is 5.9 \(float\)"),
    ("5", "must be a sequence of int token ids, got '5'"),
    ([5, True], r"prefix\[1\] is True \(bool\)"),
    ([5, "6"], r"prefix\[1\] is '6' \(str\)"),
    ([np.float64(5.0)], r"prefix\[0\] is .*5.0.* \(float64\)"),
    (np.array([5.0, 6.0]), "dtype float64"),
    (np.array([[5, 6]]), r"shape \(1, 2\)"),
    (5, "must be a sequence of int token ids, got 5"),
    (lambda torch: torch.tensor([5.0]), "dtype torch.float32"),
    (lambda torch: torch.tensor([True]), "dtype torch.bool"),
]


@pytest.mark.parametrize("query", ["next_tokens", "walk", "item_ids", "output_item_ids", "is_complete"])
@pytest.mark.parametrize("tokens, message", LOOSE)
def test_queries_refuse_loose_token_types(query, tokens, message):
    """numpy would truncate 5.9 to 5 and iterating '5' gives '5': every query refuses them, as the builders do."""
    import torch

    tokens = tokens(torch) if callable(tokens) else tokens
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7, 8]], eos_token_id=EOS, item_ids=[10, 11])
    message = message.replace("prefix", "prefix" if query in ("next_tokens", "walk") else "generated")
    with pytest.raises(ValueError, match=message):
        getattr(trie, query)(tokens)


def test_row_queries_name_the_row_and_item_lookups_refuse_non_ints():
    trie = TitleTrie.from_titles(["Heat", "Casino"], _CharTokenizer(), item_ids=[10, 11])
    heat = [ord(c) + 3 for c in '"Heat"'] + [EOS]
    with pytest.raises(ValueError, match=r"rows\[1\]\[0\] is 40.0 \(float\)"):
        trie.distinct_output_item_ids([heat, [40.0] + heat[1:]], 2)
    with pytest.raises(ValueError, match=r"item id 10.0 \(float\) is not an int"):
        trie.positions_of([10.0])
    with pytest.raises(ValueError, match=r"item id '10' \(str\) is not an int"):
        trie.titles.title("10")


def test_queries_take_numpy_and_torch_integers():
    import torch

    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7, 8]], eos_token_id=EOS, item_ids=[10, 11])
    for prefix in ([np.int32(5)], np.array([5], dtype=np.uint8), torch.tensor([5]), torch.tensor([5], dtype=torch.int32)):
        assert trie.next_tokens(prefix) == [6, 7]
    row = torch.tensor([5, 6, EOS, 0])
    assert trie.is_complete(row) and trie.output_item_ids(row, strict=True) == [10]
    assert trie.item_ids(np.array([5, 7, 8])) == [11]
    assert trie.distinct_output_item_ids(torch.tensor([[5, 6, EOS], [5, 6, EOS]]), 2) == [[[10]]]
    assert trie.positions_of([np.int64(11)]).tolist() == [1]
    assert trie.walk(torch.tensor([], dtype=torch.long)).depth == 0


class _CharTokenizer:  # one token per character (code point + 3); EOS = 2
    eos_token_id = EOS

    def __call__(self, texts, add_special_tokens=False):
        encode = lambda t: [ord(c) + 3 for c in t]  # noqa: E731
        return {"input_ids": encode(texts) if isinstance(texts, str) else [encode(t) for t in texts]}
