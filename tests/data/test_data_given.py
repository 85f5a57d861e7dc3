"""The D3 / MiniOneRec CSV layout: its own split kept exactly, missing splits, bad input, the shared real copy."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from constrained_rec.data import (
    InteractionData,
    SplitConfig,
    load_interactions,
    make_splits,
    split_positions,
    title_hit_rank,
)
from constrained_rec.prompts import build_prompt

CATEGORY = "Video_Games_5_2016-10-2018-11"
TITLES = {
    0: 'Paper 5.5" x 5.5" (Pack of 1000)',
    1: "Kid's Glue, 2oz",
    2: "Tape",
    3: "Tape",  # a duplicate title under another id, as in the real Industrial catalog
    4: "Drill, \"Pro\" 18V",
    5: "Saw",
}
HEADER = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid", "item_sid"]
# Sliding windows (up to 3 previous items here) over u1 = 0 1 2 4 5, u2 = 3 0 1 4, in global time order.
ROWS = {
    "train": [("u1", [0], 1), ("u2", [3], 0), ("u1", [0, 1], 2), ("u2", [3, 0], 1)],
    "valid": [("u1", [0, 1, 2], 4)],
    "test": [("u2", [3, 0, 1], 4), ("u1", [1, 2, 4], 5)],
}


def sid(item: int) -> str:
    return f"<a_{item}><b_{item}>"


def write_rows(path: Path, rows, header=HEADER) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for user, history, target in rows:
            writer.writerow([user, str([TITLES[i] for i in history]), TITLES[target], str(history), target,
                             str([sid(i) for i in history]), sid(target)])


def write_layout(folder: Path, splits=("train", "valid", "test"), d3_items=False) -> Path:
    lines = [f"{TITLES[i]}\t{i}" if d3_items else f"{sid(i)}\t{TITLES[i]}\t{i}" for i in TITLES]
    (folder / "info").mkdir(parents=True)
    (folder / "info" / f"{CATEGORY}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split in splits:
        write_rows(folder / split / f"{CATEGORY}.csv", ROWS[split])
    return folder


def samples(dataset, data: InteractionData):
    users = data.original_user_ids
    return [(users[u], h, t) for u, h, t in zip(dataset["user_id"], dataset["history_item_ids"],
                                                 dataset["target_item_id"])]


@pytest.mark.parametrize("d3_items", [False, True])
def test_rows_are_the_split(tmp_path, d3_items):
    data = load_interactions(write_layout(tmp_path / "games", d3_items=d3_items))
    assert data.name == "games" and data.item_noun == "video games"
    assert data.titles == TITLES  # the item file is the catalog, items nobody touched included
    assert data.given.semantic_ids == (None if d3_items else {i: sid(i) for i in TITLES})
    assert data.given.missing == ()
    splits = make_splits(data)
    for split, folder in (("train", "train"), ("validation", "valid"), ("test", "test")):
        assert samples(splits[split], data) == [(u, h, t) for u, h, t in ROWS[folder]]
        for row in splits[split]:
            assert row["history_titles"] == [TITLES[i] for i in row["history_item_ids"]]
            assert row["target_title"] == TITLES[row["target_item_id"]]
            assert row["prompt"] == build_prompt(row["history_titles"], "video games")
            assert row["response"] == '"' + row["target_title"] + '"'
    # The rebuilt sequences: each user's items in time order; split_positions points at the targets.
    by_user = data.interactions.groupby("user_id")["item_id"].apply(list).to_dict()
    assert {data.original_user_ids[u]: items for u, items in by_user.items()} == {"u1": [0, 1, 2, 4, 5],
                                                                                    "u2": [3, 0, 1, 4]}
    positions = split_positions(data, SplitConfig(protocol="given"))
    items = data.interactions["item_id"].to_numpy()
    assert items[positions["test"]].tolist() == [4, 5]
    assert [len(positions[s]) for s in ("train", "validation", "test")] == [4, 1, 2]


def test_history_length_draws_and_nouns(tmp_path):
    data = load_interactions(write_layout(tmp_path / "games"))
    short = make_splits(data, SplitConfig(max_history=2, protocol="given", item_noun="products"))
    assert short["test"]["history_item_ids"] == [[0, 1], [2, 4]]
    assert "products the user has bought" in short["test"][0]["prompt"]
    drawn = make_splits(data, SplitConfig(train_samples=2, eval_samples=1, seed=1))
    assert len(drawn["train"]) == 2 and len(drawn["test"]) == 1
    assert all(sample in ROWS["train"] for sample in samples(drawn["train"], data))
    # Other protocols re-split the rebuilt sequences; the CLI spellings map to the protocol names.
    assert SplitConfig(protocol="temporal").protocol == "global_time"
    assert SplitConfig(protocol="leave-one-out").protocol == "leave_one_out"
    again = make_splits(data, SplitConfig(protocol="leave-one-out"))
    assert sorted(samples(again["test"], data)) == [("u1", [0, 1, 2, 4], 5), ("u2", [3, 0, 1], 4)]


def test_missing_splits_load_and_say_so(tmp_path, caplog):
    data = load_interactions(write_layout(tmp_path / "games", splits=("valid", "test")))
    assert data.given.missing == ("train",)
    with caplog.at_level(logging.WARNING, logger="constrained_rec.data"):
        splits = make_splits(data, SplitConfig(protocol="given"))
    assert len(splits["train"]) == 0 and splits["train"].features == splits["test"].features
    assert "the train split is empty: no train/*.csv in" in caplog.text
    assert samples(splits["test"], data) == list(ROWS["test"])
    with pytest.raises(FileNotFoundError, match=r"has no train/\*\.csv: training needs the train CSV"):
        data.given.require("train", "training")
    with pytest.raises(FileNotFoundError, match=r"drawing 8 train samples needs the train CSV"):
        make_splits(data, SplitConfig(train_samples=8))
    data.given.require("test")
    assert data.stats()["given_split"] == {"validation": 1, "test": 2, "missing": "train"}


def test_protocol_given_needs_a_layout_with_a_split(tmp_path):
    frame_data = InteractionData.from_frame(
        __import__("pandas").DataFrame({"user_id": [1, 1, 1], "item_id": [0, 1, 2], "timestamp": [1, 2, 3]}),
        {0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match=r"protocol 'given' keeps a data set's own split, but interactions has none"):
        make_splits(frame_data, SplitConfig(protocol="given"))
    with pytest.raises(ValueError, match=r"unknown split protocol 'random'; accepted: \['auto', 'leave-one-out'"):
        SplitConfig(protocol="random")
    with pytest.raises(ValueError, match=r"unknown item noun 'films'"):
        SplitConfig(item_noun="films")
    folder = write_layout(tmp_path / "games")
    with pytest.raises(ValueError, match=r"own split .* min_user_interactions does not apply"):
        load_interactions(folder, min_user_interactions=5)


def corrupt(folder: Path, split: str, line: int, column: str, value: str) -> Path:
    path = folder / split / f"{CATEGORY}.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows[line - 1][rows[0].index(column)] = value
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.mark.parametrize(
    "split, line, column, value, message",
    [
        ("train", 3, "history_item_id", "[3,", r"train/.*\.csv, line 3, column 'history_item_id': '\[3,' is not a Python list literal"),
        ("train", 2, "history_item_id", "[0.5]", r"line 2, column 'history_item_id': 0\.5 is not an integer"),
        ("train", 2, "history_item_id", "[]", r"line 2, column 'history_item_id': expected a non-empty list"),
        ("valid", 2, "history_item_id", "[0, 1, 99]", r"valid/.*line 2, column 'history_item_id': history item 99 is not in the item file"),
        ("test", 3, "item_id", "77", r"test/.*line 3, column 'item_id': the target item 77 is not in the item file"),
        ("test", 3, "item_id", "x", r"line 3, column 'item_id': 'x' is not an integer item id"),
        ("test", 2, "history_item_title", "['a', 'b']", r"line 2, column 'history_item_title': 2 titles for 3 history items"),
        ("test", 2, "item_title", "Saw", r"line 2, column 'item_title': title 'Saw' of item 4 differs from the item file's 'Drill"),
        ("test", 2, "user_id", " ", r"line 2, column 'user_id': empty user id"),
        ("test", 3, "history_item_id", "[1, 2, 5]", r"line 3, column 'history_item_id': the history \[1, 2, 5\] of user u1 does not continue"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path, split, line, column, value, message):
    folder = write_layout(tmp_path / "games")
    if column == "history_item_id" and value.startswith("[1, 2, 5]"):  # titles that match, a wrong sequence
        corrupt(folder, split, line, "history_item_title", str([TITLES[1], TITLES[2], TITLES[5]]))
    elif column == "history_item_id" and value.startswith("[0, 1,"):  # the unknown id is the error, not its title
        corrupt(folder, split, line, "history_item_title", str([TITLES[0], TITLES[1], "x"]))
    corrupt(folder, split, line, column, value)
    with pytest.raises(ValueError, match=message):
        load_interactions(folder)


def test_bad_item_files_and_folders(tmp_path):
    folder = write_layout(tmp_path / "games")
    info = folder / "info" / f"{CATEGORY}.txt"
    good = info.read_text(encoding="utf-8")
    info.write_text(good + "<a_9>\tNine\tnine\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\.txt, line 7, column 3: item id 'nine' is not an integer"):
        load_interactions(folder)
    info.write_text(good + "<a_9>\tAgain\t2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\.txt, line 7: item 2 is listed again \(first on line 3\)"):
        load_interactions(folder)
    info.write_text(good + "Nine\t9\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\.txt, line 7: the line has 2 fields, but every line of this file must have 3"):
        load_interactions(folder)
    info.write_text(good, encoding="utf-8")
    (folder / "test" / "other.csv").write_text("x\n")
    with pytest.raises(ValueError, match=r"holds several test CSV files \['Video_Games.*', 'other\.csv'\]"):
        load_interactions(folder)
    (folder / "test" / "other.csv").unlink()
    path = folder / "valid" / f"{CATEGORY}.csv"
    path.write_text(path.read_text(encoding="utf-8") + "u9,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"valid/.*\.csv, line 3: the row has 2 fields, but the header has 7"):
        load_interactions(folder)
    write_rows(path, ROWS["valid"], header=["user_id", "history_item_title", "item_title", "history_item_id", "item",
                                            "a", "b"])
    with pytest.raises(ValueError, match=r"line 1: no column 'item_id'"):
        load_interactions(folder)


def test_title_hit_rank_counts_duplicate_titles():
    assert title_hit_rank([TITLES[0], TITLES[3]], TITLES[2]) == 1  # item 3 shares item 2's title
    assert title_hit_rank([], "Tape") is None
    with pytest.raises(TypeError, match="got the string 'Tape'"):
        title_hit_rank("Tape", "Tape")


# ------------------------------------------------------------------------------------------- shared real data


@pytest.fixture(scope="module")
def industrial(shared_data_dir):
    folder = shared_data_dir / "minionerec-industrial"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the MiniOneRec Industrial copy of ../shared/data)")
    return load_interactions(folder)


@pytest.mark.slow
def test_shared_minionerec_industrial(industrial, shared_data_dir):
    assert industrial.item_noun == "products" and len(industrial.titles) == 3686
    assert len(set(industrial.titles.values())) == 3646
    assert industrial.given.missing == ("train",)
    splits = make_splits(industrial)
    assert {k: len(v) for k, v in splits.items()} == {"train": 0, "validation": 4532, "test": 4533}
    path = next((shared_data_dir / "minionerec-industrial" / "test").glob("*.csv"))
    with open(path, newline="", encoding="utf-8") as handle:
        first = next(iter(csv.DictReader(handle)))
    sample = splits["test"][0]
    assert industrial.original_user_ids[sample["user_id"]] == first["user_id"] == "A6948"
    assert sample["history_item_ids"] == eval(first["history_item_id"])  # noqa: S307 - a test's own check
    assert sample["target_item_id"] == int(first["item_id"]) == 3681
    assert sample["target_title"] == first["item_title"]
    assert max(len(h) for h in splits["test"]["history_item_ids"]) == 10


@pytest.mark.slow
def test_command_line_on_the_shared_layout(industrial, shared_data_dir):
    folder = str(shared_data_dir / "minionerec-industrial")
    result = subprocess.run([sys.executable, "-m", "constrained_rec.data", "preview", folder],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "===== train: no samples" in result.stdout and "===== test sample" in result.stdout
    assert "products the user has bought" in result.stdout
    result = subprocess.run([sys.executable, "-m", "constrained_rec.data", "stats", folder, "--no-tokenizer"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "catalog_titles: 3686" in result.stdout and "missing: train" in result.stdout


def test_column_wise_reader_agrees_with_the_row_wise_one(tmp_path):
    from constrained_rec.data import given, given_columns

    folder = write_layout(tmp_path / "games")
    titles, _ = given.read_item_file(folder / "info" / f"{CATEGORY}.txt")
    for split in ("train", "valid", "test"):
        path = folder / split / f"{CATEGORY}.csv"
        fast = given_columns.read_canonical(path, given_columns.Catalog.build(titles))
        slow = given_columns.from_rows(given._read_split_csv(path, titles))
        assert fast is not None
        for a, b in zip(fast, slow):
            assert a.tolist() == b.tolist()
    # Written differently (no spaces, double quotes): not canonical, so the row-wise reader reads it, the same.
    reference = make_splits(load_interactions(folder))
    path = folder / "test" / f"{CATEGORY}.csv"
    text = path.read_text(encoding="utf-8").replace("[3, 0, 1]", "[3,0,1]")
    path.write_text(text.replace("\"['Tape', ", "\"[\"\"Tape\"\", "), encoding="utf-8")
    assert given_columns.read_canonical(path, given_columns.Catalog.build(titles)) is None
    again = make_splits(load_interactions(folder))
    assert again["test"].to_list() == reference["test"].to_list()


def test_item_id_beyond_int64_in_the_item_file_is_named(tmp_path):
    """Python parses any int; the catalog's int64 array raised a raw OverflowError without file or line."""
    from constrained_rec.data.given import read_item_file

    path = tmp_path / "Toys.txt"
    path.write_text(f"Heat\t1\nBig\t{2**64}\n")
    with pytest.raises(ValueError, match=rf"Toys\.txt, line 2, column 2: item id {2**64} is outside the 64-bit"):
        read_item_file(path)
    path.write_text(f"Heat\t1\nBig\t{2**63 - 1}\n")
    assert read_item_file(path)[0] == {1: "Heat", 2**63 - 1: "Big"}
