"""Loaders on the real data sets and on small written files; splits against a brute-force reference."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from constrained_rec.data import (
    CsvFormat,
    InteractionData,
    SplitConfig,
    load_interactions,
    make_splits,
    move_trailing_article,
    sources,
)
from constrained_rec.data.__main__ import main as data_main
from constrained_rec.prompts import build_prompt
from constrained_rec.trie.tokenization import response_text


@pytest.fixture(scope="module")
def ml100k() -> InteractionData:
    return load_interactions("ml-100k")


def write_csv_pair(folder: Path, rows, titles, sep=",", names=("user_id", "item_id", "timestamp", "title")):
    """An interactions file and an items file; rows are (user, item, timestamp)."""
    user, item, time, title = names
    interactions = folder / f"interactions.{'tsv' if sep == chr(9) else 'csv'}"
    items = folder / f"items.{'tsv' if sep == chr(9) else 'csv'}"
    interactions.write_text(
        sep.join([user, item, time]) + "\n" + "".join(sep.join(map(str, r)) + "\n" for r in rows), encoding="utf-8"
    )
    items.write_text(
        sep.join([item, title]) + "\n" + "".join(f"{i}{sep}{t}\n" for i, t in titles.items()), encoding="utf-8"
    )
    return interactions, items


def frame_rows(data: InteractionData) -> list[tuple]:
    return list(data.interactions[["user_id", "item_id", "timestamp"]].itertuples(index=False, name=None))


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.slow
def test_embedded_ml100k_counts(ml100k):
    assert ml100k.raw_counts["users"] == 943
    assert ml100k.raw_counts["items"] == 1682
    assert ml100k.raw_counts["interactions"] == 100_000
    # Item 267 is titled "unknown" (RecBole: "unkonwn"): dropped with its interactions, and counted.
    assert 267 not in ml100k.titles
    assert ml100k.dropped["items_without_title"] == 1
    assert ml100k.num_users == 943
    assert ml100k.num_items == 1682 - ml100k.dropped["items_without_title"]
    assert len(ml100k.interactions) == 100_000 - ml100k.dropped["interactions_without_title"]
    assert ml100k.dropped["interactions_without_title"] == 9
    assert set(ml100k.titles) == set(ml100k.interactions["item_id"])
    assert ml100k.titles[1] == "Toy Story (1995)"
    assert ml100k.titles[64] == "Shawshank Redemption, The (1994)"
    assert ml100k.item_noun == "movies" and ml100k.name == "ml-100k"
    frame = ml100k.interactions
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert all(dtype == np.int64 for dtype in frame.dtypes)
    keys = list(zip(frame["user_id"], frame["timestamp"]))
    assert keys == sorted(keys)


@pytest.mark.slow
def test_embedded_ml100k_stats(ml100k):
    stats = ml100k.stats()
    assert stats["users"] == 943 and stats["items"] == 1681 and stats["interactions"] == 99_991
    assert stats["density"] == pytest.approx(99_991 / (943 * 1681))
    assert stats["history_length"]["min"] >= 20  # every ml-100k user rated at least 20 movies
    assert stats["history_length"]["max"] == ml100k.interactions.groupby("user_id").size().max()
    assert stats["duplicate_titles"] > 0  # ml-100k lists some movies twice under two ids
    assert "title_tokens" not in stats


@pytest.mark.slow
def test_shared_ml_latest_small_counts(shared_data_dir):
    data = load_interactions("ml-latest-small", data_dir=shared_data_dir)
    assert (data.num_users, data.num_items, len(data.interactions)) == (610, 9724, 100_836)
    assert data.raw_counts["catalog_titles"] == 9742
    assert data.dropped["catalog_items_without_interactions"] == 9742 - 9724
    assert len(data.titles) == 9724
    assert sum(data.dropped[k] for k in ("duplicate_interactions", "interactions_without_title")) == 0
    kept = load_interactions(shared_data_dir / "ml-latest-small", keep_items_without_interactions=True)
    assert len(kept.titles) == 9742 and kept.dropped["catalog_items_without_interactions"] == 0
    assert kept.name == "ml-latest-small"


@pytest.mark.slow
def test_move_articles_on_ml100k():
    data = load_interactions("ml-100k", move_articles=True)
    assert data.titles[64] == "The Shawshank Redemption (1994)"
    assert data.titles[1] == "Toy Story (1995)"


@pytest.mark.slow
def test_ml100k_leave_one_out_splits(ml100k):
    splits = make_splits(ml100k, SplitConfig(max_history=10, train_samples=1024, seed=0))
    assert {k: len(v) for k, v in splits.items()} == {"train": 1024, "validation": 943, "test": 943}
    frame = ml100k.interactions
    last = frame.groupby("user_id").tail(2)
    by_user = {u: g["item_id"].tolist() for u, g in last.groupby("user_id")}
    for split, index in (("validation", 0), ("test", 1)):
        rows = splits[split]
        assert sorted(rows["user_id"]) == sorted(by_user)
        for user, target in zip(rows["user_id"], rows["target_item_id"]):
            assert by_user[user][index] == target
    sample = splits["test"][0]
    assert len(sample["history_item_ids"]) == 10
    assert sample["history_titles"] == [ml100k.titles[i] for i in sample["history_item_ids"]]
    assert sample["prompt"] == build_prompt(sample["history_titles"], "movies")
    assert sample["response"] == response_text(sample["target_title"])
    again = make_splits(ml100k, SplitConfig(train_samples=1024, seed=0))
    other = make_splits(ml100k, SplitConfig(train_samples=1024, seed=1))
    assert again["train"]["prompt"] == splits["train"]["prompt"]
    assert other["train"]["target_item_id"] != splits["train"]["target_item_id"]


# ----------------------------------------------------------------------------------- splits: brute force


def reference_samples(rows, max_history, protocol, fractions=(0.8, 0.1, 0.1)):
    """Samples as (user, history items, target) per split, computed the obvious way."""
    order = sorted(range(len(rows)), key=lambda k: (rows[k][0], rows[k][2], k))
    sequences: dict[int, list[tuple[int, int]]] = {}
    for k in order:
        user, item, time = rows[k]
        sequences.setdefault(user, []).append((item, time))
    if protocol == "leave_one_out":
        out = {"train": [], "validation": [], "test": []}
        for user, seq in sequences.items():
            items = [i for i, _ in seq]
            n = len(items)
            for t in range(1, n):
                split = "test" if t == n - 1 else "validation" if t == n - 2 else "train"
                out[split].append((user, tuple(items[max(0, t - max_history):t]), items[t]))
        return out
    windows = []
    for user, seq in sequences.items():
        items = [i for i, _ in seq]
        for t in range(1, len(seq)):
            windows.append((seq[t][1], (user, tuple(items[max(0, t - max_history):t]), items[t])))
    # Ties in target time keep user-then-time row order, as the loader's sorted frame does.
    windows = [w for _, w in sorted(enumerate(windows), key=lambda e: (e[1][0], e[0]))]
    windows = [sample for _, sample in windows]
    a = int(len(windows) * fractions[0])
    b = int(len(windows) * (fractions[0] + fractions[1]))
    return {"train": windows[:a], "validation": windows[a:b], "test": windows[b:]}


def load_rows(rows, titles, **kwargs) -> InteractionData:
    with tempfile.TemporaryDirectory() as tmp:
        interactions, items = write_csv_pair(Path(tmp), rows, titles)
        return load_interactions(interactions, items=items, **kwargs)


interaction_tables = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 9), st.integers(0, 6)), min_size=1, max_size=60
)


@settings(max_examples=60, deadline=None)
@given(interaction_tables, st.integers(1, 4), st.sampled_from(["leave_one_out", "global_time"]))
def test_splits_match_brute_force(rows, max_history, protocol):
    titles = {i: f"Item {i}" for i in range(10)}
    # User 9 guarantees a non-empty result; the loader drops exact duplicates (tested separately).
    rows = list(dict.fromkeys([(9, 0, 3), (9, 1, 1), (9, 2, 2)] + rows))
    data = load_rows(rows, titles, min_user_interactions=3 if protocol == "leave_one_out" else 1)
    kept = [r for r in rows if r[0] in set(data.interactions["user_id"])]
    expected = reference_samples(kept, max_history, protocol)
    splits = make_splits(data, SplitConfig(max_history=max_history, protocol=protocol))
    for split, dataset in splits.items():
        got = [
            (u, tuple(h), t)
            for u, h, t in zip(dataset["user_id"], dataset["history_item_ids"], dataset["target_item_id"])
        ]
        assert sorted(got) == sorted(expected[split])
        for row in dataset:
            assert row["history_titles"] == [titles[i] for i in row["history_item_ids"]]
            assert row["target_title"] == titles[row["target_item_id"]]
            assert row["prompt"] == build_prompt(row["history_titles"], "items")
            assert row["response"] == response_text(row["target_title"])


@settings(max_examples=40, deadline=None)
@given(interaction_tables, st.integers(1, 5))
# A user who consumed items 1 and 0 twice: the training window [1] -> 0 also occurs later, as the test target.
@example(rows=[(0, 1, 0), (0, 1, 1), (0, 0, 0), (0, 0, 2)], max_history=3)
def test_windows_never_reach_the_target_or_later(rows, max_history):
    rows = list(dict.fromkeys([(9, 0, 3), (9, 1, 1), (9, 2, 2)] + rows))
    data = load_rows(rows, {i: f"Item {i}" for i in range(10)}, min_user_interactions=3)
    frame = data.interactions
    splits = make_splits(data, SplitConfig(max_history=max_history))
    for split in ("train", "validation", "test"):
        for row in splits[split]:
            user_rows = frame[frame["user_id"] == row["user_id"]].reset_index(drop=True)
            times = user_rows["timestamp"].tolist()
            assert times == sorted(times)
            # The sample's target is the row just after its history, and the history is contiguous. With repeated
            # items the same window can occur several times: one occurrence must satisfy every rule.
            n = len(row["history_item_ids"])
            starts = [
                k for k in range(len(user_rows) - n)
                if user_rows["item_id"][k:k + n].tolist() == row["history_item_ids"]
                and user_rows["item_id"][k + n] == row["target_item_id"]
                and max(times[k:k + n]) <= times[k + n]
            ]
            assert starts, "history + target must be consecutive interactions of the user, in time order"
            assert 1 <= n <= max_history
            if split == "train":
                # Per user: test is the latest interaction, validation the one before, training no later.
                assert any(times[k + n] <= times[-2] for k in starts)


def test_train_samples_draw(tmp_path):
    rows = [(u, i, u * 100 + i) for u in range(4) for i in range(8)]
    interactions, items = write_csv_pair(tmp_path, rows, {i: f"Item {i}" for i in range(8)})
    data = load_interactions(interactions, items=items)
    everything = make_splits(data, SplitConfig(max_history=3))
    assert len(everything["train"]) == 4 * 5  # positions 1..5 of 8 per user
    drawn = make_splits(data, SplitConfig(max_history=3, train_samples=7, eval_samples=2, seed=3))
    assert len(drawn["train"]) == 7 and len(drawn["validation"]) == 2 and len(drawn["test"]) == 2
    all_prompts = set(everything["train"]["prompt"])
    assert set(drawn["train"]["prompt"]) <= all_prompts
    assert len(set(zip(drawn["train"]["user_id"], drawn["train"]["target_item_id"]))) == 7
    with pytest.raises(ValueError, match="asked for 21 train samples but the train split has only 20"):
        make_splits(data, SplitConfig(train_samples=21))
    # The training draw does not depend on eval_samples.
    same = make_splits(data, SplitConfig(max_history=3, train_samples=7, seed=3))
    assert same["train"]["prompt"] == drawn["train"]["prompt"]


def test_split_rows_and_types(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4)],
                                         {10: "A", 11: "B", 12: "C", 13: "D"})
    splits = make_splits(load_interactions(interactions, items=items, item_noun="books"))
    assert splits["train"][0] == {
        "user_id": 1,
        "history_item_ids": [10],
        "history_titles": ["A"],
        "target_item_id": 11,
        "target_title": "B",
        "prompt": build_prompt(["A"], "books"),
        "response": '"B"',
    }
    assert splits["test"][0]["history_titles"] == ["A", "B", "C"]
    assert "books the user has read" in splits["test"][0]["prompt"]
    saved = tmp_path / "saved"
    splits.save_to_disk(str(saved))
    import datasets

    assert datasets.load_from_disk(str(saved))["test"][0] == splits["test"][0]


# --------------------------------------------------------------------------------------- loaders on files


def test_generic_csv_with_string_ids_and_iso_times(tmp_path):
    rows = [("alice", "x", "2020-01-02"), ("alice", "y", "2020-01-01T10:00:00"), ("bob", "x", "2020-01-03"),
            ("bob", "y", "2020-01-04"), ("bob", "x", "2020-01-05"), ("alice", "x", "2020-01-03")]
    interactions, items = write_csv_pair(tmp_path, rows, {"x": "Item X", "y": "Item Y"})
    data = load_interactions(interactions, items=items)
    assert data.original_user_ids == {0: "alice", 1: "bob"}
    assert data.original_item_ids == {0: "x", 1: "y"}
    assert data.titles == {0: "Item X", 1: "Item Y"}
    assert frame_rows(data)[:3] == [
        (0, 1, int(pd.Timestamp("2020-01-01T10:00:00", tz="UTC").timestamp())),
        (0, 0, int(pd.Timestamp("2020-01-02", tz="UTC").timestamp())),
        (0, 0, int(pd.Timestamp("2020-01-03", tz="UTC").timestamp())),
    ]
    assert data.item_noun == "items" and data.name == "interactions"
    interactions.write_bytes(b"\xef\xbb\xbf" + interactions.read_bytes())  # a spreadsheet's byte-order mark
    assert frame_rows(load_interactions(interactions, items=items)) == frame_rows(data)


def test_generic_tsv_with_custom_columns(tmp_path):
    rows = [(7, 3, 30), (7, 4, 10), (7, 3, 20), (8, 4, 5)]
    interactions, items = write_csv_pair(tmp_path, rows, {3: "Three", 4: "Four", 5: "Five"}, sep="\t",
                                         names=("uid", "iid", "when", "name"))
    fmt = CsvFormat(user="uid", item="iid", timestamp="when", title="name")
    data = load_interactions(interactions, items=items, csv_format=fmt, min_user_interactions=2)
    assert frame_rows(data) == [(7, 4, 10), (7, 3, 20), (7, 3, 30)]
    assert data.original_item_ids is None
    assert data.titles == {3: "Three", 4: "Four"}
    assert data.dropped["users_below_min_interactions"] == 1
    assert data.dropped["interactions_of_users_below_min"] == 1
    assert data.dropped["catalog_items_without_interactions"] == 1


def test_ids_that_only_look_alike_stay_apart(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, "007", 1), (1, "7", 2)], {"007": "Bond", "7": "Seven"})
    data = load_interactions(interactions, items=items, min_user_interactions=1)
    assert sorted(data.titles.values()) == ["Bond", "Seven"]
    assert {data.original_item_ids[i] for i in data.titles} == {"007", "7"}


def test_filtering_is_counted(tmp_path, caplog):
    rows = [(1, 1, 5), (1, 1, 5), (1, 2, 6), (1, 3, 7), (1, 9, 8), (2, 1, 1), (2, 2, 2)]
    interactions, items = write_csv_pair(tmp_path, rows, {1: "One", 2: "Two", 3: "Three"})
    data = load_interactions(interactions, items=items, min_user_interactions=3)
    assert data.dropped["duplicate_interactions"] == 1
    assert data.dropped["items_without_title"] == 1 and data.dropped["interactions_without_title"] == 1
    assert data.dropped["users_below_min_interactions"] == 1
    assert data.dropped["interactions_of_users_below_min"] == 2
    assert frame_rows(data) == [(1, 1, 5), (1, 2, 6), (1, 3, 7)]
    assert data.raw_counts == {"users": 2, "items": 4, "interactions": 7, "catalog_titles": 3}
    assert "1 duplicate_interactions" in caplog.text and "1 items_without_title" in caplog.text


def test_ties_keep_file_order(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 3, 5), (1, 1, 5), (1, 2, 5)], {1: "a", 2: "b", 3: "c"})
    assert [r[1] for r in frame_rows(load_interactions(interactions, items=items))] == [3, 1, 2]


def write_jsonl(path: Path, records, compress: bool):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def review(user, asin, time):
    return {"overall": 5.0, "reviewerID": user, "asin": asin, "unixReviewTime": time, "reviewText": "ok"}


@pytest.mark.parametrize("compress", [True, False])
def test_amazon_reviews_and_metadata(tmp_path, compress):
    ext = ".json.gz" if compress else ".json"
    reviews = [review("U1", "B1", 30), review("U1", "B2", 10), review("U1", "B3", 20), review("U1", "B4", 40),
               review("U2", "B1", 5), review("U2", "B2", 6), review("U2", "B9", 7)]
    meta = [{"asin": "B1", "title": "Zelda &amp; Link"}, {"asin": "B2", "title": "  Halo\n 3 "},
            {"asin": "B3", "title": ""}, {"asin": "B4", "title": "Caf&eacute; Game"},
            {"asin": "B1", "title": "duplicate row"}, {"asin": "B5", "title": "never reviewed"}]
    write_jsonl(tmp_path / f"Video_Games_5{ext}", reviews, compress)
    write_jsonl(tmp_path / f"meta_Video_Games{ext}", meta, compress)
    for source in (tmp_path, tmp_path / f"Video_Games_5{ext}"):
        data = load_interactions(source, min_user_interactions=1)
        assert data.name == "Video_Games" and data.item_noun == "video games"
        titles = {data.original_item_ids[i]: t for i, t in data.titles.items()}
        assert titles == {"B1": "Zelda & Link", "B2": "Halo 3", "B4": "Café Game"}
        # B3 has an empty title and B9 no metadata: both dropped with their interactions, counted.
        assert data.dropped["items_without_title"] == 2
        assert data.dropped["interactions_without_title"] == 2
        assert data.dropped["amazon_meta_empty_titles"] == 1
        assert data.dropped["amazon_meta_duplicate_rows"] == 1
        u1 = [k for k, v in data.original_user_ids.items() if v == "U1"][0]
        history = data.interactions[data.interactions["user_id"] == u1]["item_id"].map(data.original_item_ids)
        assert history.tolist() == ["B2", "B1", "B4"]
    explicit = load_interactions(tmp_path / f"Video_Games_5{ext}", items=tmp_path / f"meta_Video_Games{ext}",
                                 item_noun="games", min_user_interactions=1)
    assert explicit.item_noun == "games" and len(explicit.titles) == 3


def test_grouplens_formats_from_written_files(tmp_path):
    raw = tmp_path / "ml-100k"
    raw.mkdir()
    (raw / "u.data").write_text("1\t2\t5\t100\n1\t1\t3\t50\n1\t267\t3\t70\n2\t1\t4\t10\n", encoding="ascii")
    (raw / "u.item").write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n2|Misérables, Les (1995)|01-Jan-1995||x|1|0\n"
        "267|unknown||||1|0\n".encode("latin-1")
    )
    data = load_interactions(raw, min_user_interactions=1, move_articles=True)
    assert data.titles == {1: "Toy Story (1995)", 2: "Les Misérables (1995)"}
    assert frame_rows(data) == [(1, 1, 50), (1, 2, 100), (2, 1, 10)]
    assert data.dropped["placeholder_titles"] == 1 and data.dropped["interactions_without_title"] == 1
    # The GroupLens folder of a name is found under data_dir (here: the raw files above).
    assert load_interactions("ml-100k", data_dir=tmp_path, min_user_interactions=1).titles == {
        1: "Toy Story (1995)", 2: "Misérables, Les (1995)"}

    dat = tmp_path / "ml-1m"
    dat.mkdir()
    (dat / "ratings.dat").write_text("1::20::5::978300760\n1::10::3::978300700\n", encoding="ascii")
    (dat / "movies.dat").write_bytes("10::Café::Drama\n20::Heat (1995)::Action|Crime\n".encode("latin-1"))
    data = load_interactions("ml-1m", data_dir=tmp_path, min_user_interactions=1)
    assert data.titles == {10: "Café", 20: "Heat (1995)"}
    assert frame_rows(data) == [(1, 10, 978300700), (1, 20, 978300760)]

    latest = tmp_path / "ml-25m"
    latest.mkdir()
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n3,1,4.0,9\n3,2,4.5,8\n", encoding="utf-8")
    (latest / "movies.csv").write_text(
        'movieId,title,genres\n1,"American President, The (1995)",Comedy\n2,Heat (1995) ,Action\n', encoding="utf-8"
    )
    data = load_interactions("ml-25m", data_dir=tmp_path, min_user_interactions=1)
    assert data.titles == {1: "American President, The (1995)", 2: "Heat (1995)"}
    assert data.item_noun == "movies"


@pytest.mark.parametrize(
    "title, expected",
    [
        ("Shawshank Redemption, The (1994)", "The Shawshank Redemption (1994)"),
        ("Good, The Bad and The Ugly, The (1966)", "The Good, The Bad and The Ugly (1966)"),
        ("Misérables, Les (1995)", "Les Misérables (1995)"),
        ("Die xue shuang xiong (Killer, The) (1989)", "Die xue shuang xiong (Killer, The) (1989)"),
        ("Star Maker, The (Uomo delle stelle, L') (1995)", "The Star Maker (Uomo delle stelle, L') (1995)"),
        ("Babylon 5", "Babylon 5"),
        ("Matrix, The", "The Matrix"),
        ("Them, Theodore (2000)", "Them, Theodore (2000)"),
    ],
)
def test_move_trailing_article(title, expected):
    assert move_trailing_article(title) == expected


def make_archive(folder: Path, name: str) -> None:
    with zipfile.ZipFile(folder / f"{name}.zip", "w") as archive:
        archive.writestr(f"{name}/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,1\n1,2,4,2\n1,1,4,3\n")
        archive.writestr(f"{name}/movies.csv", "movieId,title,genres\n1,Heat (1995),Action\n2,Up (2009),Kids\n")


def test_download_is_opt_in_and_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("CONSTRAINED_REC_DATA", raising=False)
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    make_archive(mirror, "ml-latest-small")
    monkeypatch.setattr(sources, "GROUPLENS_URL", mirror.as_uri())
    with pytest.raises(FileNotFoundError, match=r"download=True") as error:
        load_interactions("ml-latest-small", data_dir=tmp_path / "nothing", cache_dir=cache)
    assert "ml-latest-small.zip" in str(error.value)
    data = load_interactions("ml-latest-small", data_dir=tmp_path / "nothing", cache_dir=cache, download=True)
    assert (cache / "ml-latest-small" / "ratings.csv").is_file()
    assert frame_rows(data) == [(1, 1, 1), (1, 2, 2), (1, 1, 3)]
    (mirror / "ml-latest-small.zip").unlink()
    again = load_interactions("ml-latest-small", data_dir=tmp_path / "nothing", cache_dir=cache, download=True)
    assert frame_rows(again) == frame_rows(data)
    with pytest.raises(RuntimeError, match="could not download"):
        load_interactions("ml-1m", data_dir=tmp_path / "nothing", cache_dir=cache, download=True)


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_column(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1)], {1: "a"})
    with pytest.raises(ValueError, match=r"interactions\.csv, line 1: no column 'time'"):
        load_interactions(interactions, items=items, csv_format=CsvFormat(timestamp="time"))
    with pytest.raises(ValueError, match=r"items\.csv, line 1: no column 'name'"):
        load_interactions(interactions, items=items, csv_format=CsvFormat(title="name"))


def test_unparsable_timestamp(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1), (1, 1, "yesterday")], {1: "a"})
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3, column 'timestamp': timestamp 'yesterday' is neither"):
        load_interactions(interactions, items=items)
    interactions.write_text("user_id,item_id,timestamp\n1,1,2020-01-01\n1,1,2020-13-01\n1,1,1.5\n")
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3, column 'timestamp': timestamp '2020-13-01' is neither"):
        load_interactions(interactions, items=items)
    interactions.write_text("user_id,item_id,timestamp\n1,1,2020-01-01\n1,1,1.5\n")
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3, column 'timestamp': timestamp '1.5' is neither"):
        load_interactions(interactions, items=items)


def test_non_integer_ids_in_movielens(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n1,x7,4,2\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n1,Heat (1995),Action\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3, column 'movieId': item id 'x7' is not an integer"):
        load_interactions(folder)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n1,1,4,\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3, column 'timestamp': timestamp '' is not an integer"):
        load_interactions(folder)


def test_numbers_beyond_int64_are_errors_or_exact(tmp_path):
    """10**30 seconds used to wrap to -2**63 (the newest event became the oldest); 9999-12-31 and ids past int64
    raised raw pandas/numpy errors without file or line."""
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 100), (1, 2, 10**30), (1, 1, 300)], {1: "a", 2: "b"})
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3, column 'timestamp': timestamp 1000000000000000000"
                                         r"000000000000 is outside the 64-bit integer range"):
        load_interactions(interactions, items=items, min_user_interactions=1)
    interactions.write_text("user_id,item_id,timestamp\n1,1,2020-01-01\n1,2,9999-12-31\n1,1,0001-01-01T00:00:00Z\n")
    data = load_interactions(interactions, items=items, min_user_interactions=1)
    assert frame_rows(data) == [(1, 1, -62135596800), (1, 1, 1577836800), (1, 2, 253402214400)]
    assert data.stats()["last_time"] == "9999-12-31"
    interactions.write_text("user_id,item_id,timestamp\n1,1,2020-01-01\n1,2,10000-01-01\n")
    with pytest.raises(ValueError, match=r"line 3, column 'timestamp': timestamp '10000-01-01' is neither .* 1 to 9999"):
        load_interactions(interactions, items=items, min_user_interactions=1)
    interactions.write_text("user_id,item_id,timestamp\n1,1,1.0\n1,2,9007199254740993\n")
    with pytest.raises(ValueError, match=r"line 3, column 'timestamp': timestamp 9007199254740992.0 \(as read\) cannot "
                                         r"be read exactly: the column holds decimals"):
        load_interactions(interactions, items=items, min_user_interactions=1)
    interactions.write_text("user_id,item_id,timestamp\n1,1,1\n1,2,9223372036854775807\n")  # the largest int64
    assert frame_rows(load_interactions(interactions, items=items, min_user_interactions=1))[-1][2] == 2**63 - 1

    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "movies.csv").write_text("movieId,title,genres\n1,Heat (1995),Action\n")
    for value, column in ((2**63, "movieId"), (10**20, "movieId"), (-(2**63) - 1, "movieId")):
        (folder / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n1,1,4,1\n1,{value},4,2\n")
        with pytest.raises(ValueError, match=rf"ratings\.csv, line 3, column '{column}': item id {value} is outside"):
            load_interactions(folder)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n")
    (folder / "movies.csv").write_text(f"movieId,title,genres\n1,Heat (1995),Action\n{2**64},Big,Drama\n")
    with pytest.raises(ValueError, match=rf"movies\.csv, line 3, column 'movieId': item id {2**64} is outside"):
        load_interactions(folder)


@pytest.mark.parametrize("time, message", [
    (10**30, "unixReviewTime 1000000000000000000000000000000 is outside the 64-bit integer range"),
    (1e30, "unixReviewTime 1e\\+30 is outside the 64-bit integer range"),
    (1.5, "unixReviewTime 1.5 is not an integer"),
    (True, "unixReviewTime True is not an integer"),
])
def test_amazon_review_times_beyond_int64_or_not_integers(tmp_path, time, message):
    (tmp_path / "meta_Books.json").write_text('{"asin": "B", "title": "A Book"}\n')
    write_jsonl(tmp_path / "Books_5.json", [review("U", "B", 1), review("U", "B", time)], compress=False)
    with pytest.raises(ValueError, match=rf"Books_5\.json, line 2: {message}"):
        load_interactions(tmp_path / "Books_5.json")


def test_item_row_without_title(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1)], {1: "a", 2: " "})
    with pytest.raises(ValueError, match=r"items\.csv, line 3: the item has an empty title"):
        load_interactions(interactions, items=items)


def test_conflicting_titles(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1)], {1: "a"})
    items.write_text("item_id,title\n1,a\n2,b\n1,c\n")
    with pytest.raises(ValueError, match=r"items\.csv, line 4: item 1 has the title 'c', but line 2 gave it 'a'"):
        load_interactions(interactions, items=items)


def test_not_utf8(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1)], {1: "a"})
    items.write_bytes("item_id,title\n1,a\n2,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"items\.csv, line 3: not valid UTF-8"):
        load_interactions(interactions, items=items)
    write_jsonl(tmp_path / "Toys_5.json", [review("U", "B", 1)], compress=False)
    (tmp_path / "meta_Toys.json").write_bytes(b'{"asin": "A", "title": "ok"}\n{"asin": "B", "title": "Caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"meta_Toys\.json, line 2: not valid UTF-8"):
        load_interactions(tmp_path / "Toys_5.json")


def test_amazon_bad_records(tmp_path):
    path = tmp_path / "Books_5.json.gz"
    (tmp_path / "meta_Books.json").write_text('{"asin": "B", "title": "A Book"}\n')
    write_jsonl(path, [review("U", "B", 1), {"reviewerID": "U", "asin": "B"}], compress=True)
    with pytest.raises(ValueError, match=r"Books_5\.json\.gz, line 2: the review has no 'unixReviewTime' field"):
        load_interactions(path)
    write_jsonl(path, [review("U", "B", 1), "{not json"], compress=True)
    with pytest.raises(ValueError, match=r"Books_5\.json\.gz, line 2: not a JSON object"):
        load_interactions(path)
    write_jsonl(path, [review("U", "B", "noon")], compress=True)
    with pytest.raises(ValueError, match=r"line 1: unixReviewTime 'noon' is not an integer"):
        load_interactions(path)
    (tmp_path / "meta_Books.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no metadata for the Amazon reviews .*meta_Books\.json\.gz"):
        load_interactions(path)


def test_bad_sources_and_options(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"'ml-7k' is neither a known data set name"):
        load_interactions("ml-7k")
    assert load_interactions("ml-100k", data_dir=tmp_path).source.endswith("dataset_example/ml-100k")
    monkeypatch.setattr(sources, "_recbole_ml100k", lambda: None)
    monkeypatch.delenv("CONSTRAINED_REC_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps recbole==1\.2\.1.*download=True"):
        load_interactions("ml-100k", data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"holds none of the supported layouts"):
        load_interactions(tmp_path)
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1)], {1: "a"})
    with pytest.raises(ValueError, match=r"needs items="):
        load_interactions(interactions)
    with pytest.raises(ValueError, match=r"unknown item noun 'films'"):
        load_interactions(interactions, items=items, item_noun="films")
    with pytest.raises(ValueError, match=r"min_user_interactions must be an integer >= 1, got 0"):
        load_interactions(interactions, items=items, min_user_interactions=0)
    with pytest.raises(ValueError, match=r"no interactions left after filtering"):
        load_interactions(interactions, items=items)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_history": 0}, "max_history must be an integer >= 1, got 0"),
        ({"train_samples": 0}, "train_samples must be an integer >= 1 or None .* got 0"),
        ({"eval_samples": 2.5}, "eval_samples must be an integer >= 1 or None .* got 2.5"),
        ({"protocol": "random"}, "unknown split protocol 'random'"),
        ({"template": "llama"}, "unknown prompt template 'llama'"),
        ({"time_fractions": (0.8, 0.2, 0.0)}, "time_fractions must be three positive shares"),
    ],
)
def test_bad_split_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)


def test_leave_one_out_needs_three_interactions(tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1), (1, 2, 2), (2, 1, 1), (2, 2, 2), (2, 1, 3)],
                                         {1: "a", 2: "b"})
    data = load_interactions(interactions, items=items, min_user_interactions=2)
    with pytest.raises(ValueError, match=r"1 users of interactions have fewer .*user 1.*min_user_interactions=3"):
        make_splits(data)
    assert len(make_splits(data, SplitConfig(protocol="global_time"))["train"]) == 2
    with pytest.raises(ValueError, match=r"template 'chat' .* pass tokenizer="):
        make_splits(data, SplitConfig(template="chat"))


# ------------------------------------------------------------------------------------- command line, tokens


@pytest.mark.slow
def test_command_line_preview_and_stats(capsys):
    data_main(["preview", "ml-100k"])
    out = capsys.readouterr().out
    assert out.count("### Response:\n\"") == 3
    for split in ("train", "validation", "test"):
        assert f"===== {split} sample" in out
    data_main(["stats", "ml-100k", "--no-tokenizer"])
    out = capsys.readouterr().out
    assert "users: 943" in out and "interactions: 99991" in out and "history_length:" in out


@pytest.mark.slow
def test_stats_title_tokens(smollm2_tokenizer, tmp_path):
    interactions, items = write_csv_pair(tmp_path, [(1, 1, 1), (1, 2, 2)], {1: "Heat (1995)", 2: "Toy Story (1995)"})
    stats = load_interactions(interactions, items=items, min_user_interactions=1).stats(smollm2_tokenizer)
    lengths = [len(smollm2_tokenizer('"Heat (1995)"', add_special_tokens=False)["input_ids"]),
               len(smollm2_tokenizer('"Toy Story (1995)"', add_special_tokens=False)["input_ids"])]
    assert stats["title_tokens"]["min"] == min(lengths) and stats["title_tokens"]["max"] == max(lengths)


@pytest.mark.slow
def test_module_runs_as_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "constrained_rec.data", "stats", "ml-100k", "--no-tokenizer"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "users: 943" in result.stdout


def test_interaction_data_checks_its_invariants():
    frame = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [7, 8, 7], "timestamp": [1, 2, 3]})
    titles = {7: "Heat (1995)", 8: "Up (2009)"}
    data = InteractionData(name="x", interactions=frame, titles=titles, item_noun="movies")
    assert len(make_splits(data)["test"]) == 1
    with pytest.raises(ValueError, match=r"sorted by \(user_id, timestamp\); row 1 is out of order"):
        InteractionData(name="x", interactions=frame.iloc[[1, 0, 2]].reset_index(drop=True), titles=titles)
    with pytest.raises(ValueError, match=r"1 interacted items have no title, e\.g\. item 8"):
        InteractionData(name="x", interactions=frame, titles={7: "Heat (1995)"})
    with pytest.raises(ValueError, match=r"integer columns \['user_id', 'item_id', 'timestamp'\]"):
        InteractionData(name="x", interactions=frame.rename(columns={"timestamp": "time"}), titles=titles)
    with pytest.raises(ValueError, match=r"unknown item noun 'film'"):
        InteractionData(name="x", interactions=frame, titles=titles, item_noun="film")
    with pytest.raises(ValueError, match=r"lacks the columns \['timestamp'\]"):
        InteractionData.from_frame(frame.drop(columns="timestamp"), titles)
    with pytest.raises(ValueError, match=r"column 'timestamp' must hold integers, got dtype float64"):
        InteractionData.from_frame(frame.assign(timestamp=[1.0, 2.5, 3.0]), titles)
    with pytest.raises(ValueError, match=r"titles must be non-empty strings; item 8 has ''"):
        InteractionData.from_frame(frame, {7: "Heat (1995)", 8: ""})


# ------------------------------------------------------------------ column options, nouns, the command line


def test_generic_csv_columns_as_plain_strings(tmp_path):
    rows = [(7, 3, 30), (7, 4, 10), (7, 3, 20)]
    interactions, items = write_csv_pair(tmp_path, rows, {3: "Three", 4: "Four"}, sep=";",
                                         names=("uid", "iid", "when", "name"))
    data = load_interactions(str(interactions), items=str(items), user_column="uid", item_column="iid",
                             time_column="when", title_column="name", sep=";")
    assert frame_rows(data) == [(7, 4, 10), (7, 3, 20), (7, 3, 30)]
    assert data.item_noun == "items" and data.titles == {3: "Three", 4: "Four"}
    with pytest.raises(ValueError, match=r"either csv_format= or the column options \['user'\]"):
        load_interactions(interactions, items=items, csv_format=CsvFormat(), user_column="uid")
    with pytest.raises(ValueError, match=r"the delimiter column option must be a non-empty string, got ''"):
        load_interactions(interactions, items=items, sep="")


def test_command_line_on_a_generic_csv(tmp_path, capsys):
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3)]
    interactions, items = write_csv_pair(tmp_path, rows, {"x": "X", "y": "Y", "z": "Z"},
                                         names=("u", "i", "t", "name"))
    data_main(["preview", str(interactions), "--items", str(items), "--user-column", "u", "--item-column", "i",
               "--time-column", "t", "--title-column", "name", "--item-noun", "books", "--split", "leave-one-out"])
    out = capsys.readouterr().out
    assert 'The user has read the following books before: "X", "Y"\n' in out
    data_main(["stats", str(interactions), "--items", str(items), "--user-column", "u", "--item-column", "i",
               "--time-column", "t", "--title-column", "name", "--no-tokenizer"])
    assert "interactions: 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "stem, title_column, noun",
    [("ml-100k", "movie_title", "movies"), ("tools", "title", "items"), ("Amazon_Video_Games", "title", "video games"),
     ("Amazon_Industrial", "title", "products")],
)
def test_recbole_noun_follows_the_data_set(tmp_path, stem, title_column, noun):
    (tmp_path / f"{stem}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t1\t1\n1\t2\t2\n")
    (tmp_path / f"{stem}.item").write_text(f"item_id:token\t{title_column}:token_seq\n1\tGorilla Glue\n2\tTape\n")
    data = load_interactions(tmp_path, min_user_interactions=1)
    assert data.item_noun == noun
    assert make_splits(data, SplitConfig(protocol="global_time", time_fractions=(0.5, 0.25, 0.25)))
    prompt = make_splits(load_interactions(tmp_path, min_user_interactions=1, item_noun="products"),
                         SplitConfig(protocol="temporal", item_noun="books"))["test"][0]["prompt"]
    assert "the following books" in prompt and "Gorilla Glue" in prompt
