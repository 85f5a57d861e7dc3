"""The main job on any data set by flags: a generic CSV with its items file and column options, a D3 / MiniOneRec
folder with its own split, a missing train split said before the model loads, bad flags named, title hits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from constrained_rec.experiment.pipeline import run
from constrained_rec.experiment.run_config import RunConfig
from constrained_rec.experiment.steps import load_data
from constrained_rec.prompts import build_prompt
from experiments.run import build_parser  # the script's own parser (pytest puts the repository root on sys.path)


def parse(argv: list[str]) -> RunConfig:
    return RunConfig(**vars(build_parser().parse_args(argv)))


# ------------------------------------------------------------------------------------------- generic CSV
def write_generic(folder: Path) -> tuple[Path, Path]:
    """Five users of four or five interactions, ';'-separated, with columns named as nobody's default."""
    folder.mkdir(parents=True, exist_ok=True)
    interactions, items = folder / "clicks.csv", folder / "catalog.csv"
    rows = [(f"u{u}", 10 + (u + step) % 6, 1000 * u + step) for u in range(5) for step in range(4 + u % 2)]
    interactions.write_text("who;what;when\n" + "".join(f"{u};{i};{t}\n" for u, i, t in rows))
    items.write_text("sku;name\n" + "".join(f"{i};Widget {i}\n" for i in range(10, 16)))
    return interactions, items


GENERIC_FLAGS = ["--user-column", "who", "--item-column", "what", "--time-column", "when", "--items-item-column",
                 "sku", "--title-column", "name", "--sep", ";"]


@pytest.mark.parametrize("split, protocol", [("auto", "leave_one_out"), ("leave-one-out", "leave_one_out"),
                                             ("temporal", "global_time")])
def test_generic_csv_with_column_options(tmp_path, split, protocol):
    interactions, items = write_generic(tmp_path)
    config = parse(["--dataset", str(interactions), "--items", str(items), *GENERIC_FLAGS, "--split", split,
                    "--max-history", "2", "--train-samples", "0", "--eval-users", "100"])
    assert (config.user_column, config.items_item_column, config.sep, config.max_history) == ("who", "sku", ";", 2)
    loaded = load_data(config)
    assert loaded.data.item_noun == "items" and len(loaded.data.titles) == 6
    assert (loaded.split_config.protocol, loaded.split_config.max_history) == (protocol, 2)
    test = loaded.splits["test"]
    # --eval-users 100 is capped at the test split's size: one per user under leave-one-out
    assert len(test) == (5 if protocol == "leave_one_out" else loaded.split_config.eval_samples) > 0
    for row in test:
        assert 1 <= len(row["history_titles"]) <= 2
        assert row["prompt"] == build_prompt(row["history_titles"], "items")
    noun = load_data(parse(["--dataset", str(interactions), "--items", str(items), *GENERIC_FLAGS,
                            "--item-noun", "products", "--train-samples", "0"]))
    assert noun.split_config.item_noun == "products" and "products" in noun.splits["test"][0]["prompt"]


def test_a_tab_separator_can_be_typed(tmp_path):
    assert parse(["--sep", "\\t"]).sep == "\t" and parse(["--sep", "tab"]).sep == "\t"


def test_file_options_on_a_folder_or_a_name_are_refused(tmp_path):
    folder = write_layout(tmp_path / "industrial")
    with pytest.raises(ValueError, match=r"--items, --user-column describe an interactions file .* is a folder"):
        load_data(RunConfig(dataset=str(folder), items="x.csv", user_column="who", train_samples=0))
    with pytest.raises(ValueError, match=r"--sep describe .* 'ml-100k' is a named data set"):
        load_data(RunConfig(dataset="ml-100k", sep=";"))


def test_an_amazon_reviews_file_with_its_metadata(tmp_path):
    reviews = [{"reviewerID": f"U{u}", "asin": f"B{(u + step) % 4}", "unixReviewTime": 100 * u + step}
               for u in range(3) for step in range(3)]
    (tmp_path / "Video_Games_5.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    meta = tmp_path / "metadata.json"
    meta.write_text("".join(json.dumps({"asin": f"B{i}", "title": f"Game {i}"}) + "\n" for i in range(4)))
    loaded = load_data(parse(["--dataset", str(tmp_path / "Video_Games_5.json"), "--items", str(meta),
                              "--train-samples", "0"]))
    assert (loaded.split_config.protocol, loaded.split_config.item_noun) == ("leave_one_out", "video games")
    assert len(loaded.splits["test"]) == 3 and "video games" in loaded.splits["test"][0]["prompt"]
    with pytest.raises(ValueError, match=r"--item-column, --items describe CSV/TSV columns, but --dataset .* is an "
                                         "Amazon reviews file"):
        load_data(RunConfig(dataset=str(tmp_path / "Video_Games_5.json"), items=str(meta), item_column="asin"))


def test_file_options_change_the_run_identity():
    from constrained_rec.experiment.run_config import run_identity

    base = run_identity(RunConfig())
    for option in (dict(split="temporal"), dict(max_history=5), dict(item_noun="products"), dict(sep=";"),
                   dict(items="i.csv"), dict(title_column="name")):
        assert run_identity(RunConfig(**option)) != base, option


# ---------------------------------------------------------------------------------- D3 / MiniOneRec folder
CATEGORY = "Industrial_and_Scientific_5_2016-10-2018-11"
# 2 and 3 share a title; 6 to 9 are in the catalog but in nobody's rows
TITLES = {0: "Glue", 1: 'Tape 2" x 5 yd', 2: "Tape", 3: "Tape", 4: "Drill", 5: "Saw", 6: "Hammer", 7: "Wrench",
          8: "Level", 9: "Pliers"}
# Sliding windows over u1 = 0 1 2 4 5 and u2 = 3 0 1 4, in global time order.
ROWS = {
    "train": [("u1", [0], 1), ("u2", [3], 0), ("u1", [0, 1], 2), ("u2", [3, 0], 1)],
    "valid": [("u1", [0, 1, 2], 4)],
    "test": [("u2", [3, 0, 1], 4), ("u1", [0, 1, 2, 4], 5)],
}


def write_layout(folder: Path, splits=("train", "valid", "test")) -> Path:
    (folder / "info").mkdir(parents=True)
    (folder / "info" / f"{CATEGORY}.txt").write_text("".join(f"<a_{i}>\t{t}\t{i}\n" for i, t in TITLES.items()))
    for split in splits:
        (folder / split).mkdir()
        with open(folder / split / f"{CATEGORY}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "history_item_title", "item_title", "history_item_id", "item_id"])
            for user, history, target in ROWS[split]:
                writer.writerow([user, str([TITLES[i] for i in history]), TITLES[target], str(history), target])
    return folder


def test_a_d3_folder_keeps_its_own_split_and_words(tmp_path):
    folder = write_layout(tmp_path / "industrial")
    loaded = load_data(parse(["--dataset", str(folder), "--train-samples", "2", "--max-history", "2"]))
    assert (loaded.split_config.protocol, loaded.split_config.item_noun) == ("given", "products")
    users = loaded.data.original_user_ids
    test = loaded.splits["test"]
    # --eval-users (default 100) is capped at the 2 test rows; histories cut to the last 2 items
    assert [(users[u], h, t) for u, h, t in zip(test["user_id"], test["history_item_ids"], test["target_item_id"])] \
        == [("u2", [0, 1], 4), ("u1", [2, 4], 5)]
    assert test[0]["prompt"] == build_prompt([TITLES[0], TITLES[1]], "products")
    assert len(loaded.splits["train"]) == 2 and len(loaded.splits["validation"]) == 1
    with pytest.raises(ValueError, match="protocol 'given' keeps a data set's own split, but clicks has none"):
        interactions, items = write_generic(tmp_path / "generic")
        load_data(RunConfig(dataset=str(interactions), items=str(items), **dict(zip(
            ("user_column", "item_column", "time_column", "items_item_column", "title_column", "sep"),
            GENERIC_FLAGS[1::2])), split="given"))


def test_a_folder_without_valid_evaluates_its_test_users(tmp_path):
    folder = write_layout(tmp_path / "industrial", splits=("test",))
    loaded = load_data(RunConfig(dataset=str(folder), train_samples=0, eval_users=1, assistant="none"))
    assert len(loaded.splits["test"]) == 1 and len(loaded.splits["validation"]) == 0
    assert loaded.split_config.eval_samples == 1
    # the same test user as a folder that has valid/ (the draw does not depend on the other splits)
    full = load_data(RunConfig(dataset=str(write_layout(tmp_path / "full")), train_samples=0, eval_users=1,
                               assistant="none"))
    assert loaded.splits["test"][0]["prompt"] == full.splits["test"][0]["prompt"]


def test_training_without_a_train_split_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import constrained_rec.model

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing train split was reported")

    monkeypatch.setattr(constrained_rec.model, "load_model", must_not_load)
    folder = write_layout(tmp_path / "industrial", splits=("valid", "test"))
    config = parse(["--constrained", "--dataset", str(folder), "--train-samples", "8",
                    "--output-dir", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError) as error:
        run(config)
    message = str(error.value)
    assert f"{folder} has no train/*.csv" in message and f"{folder / 'train' / 'NAME.csv'}" in message
    assert "--train-samples 8 without --adapter" in message and "pass --train-samples 0" in message


@pytest.fixture
def no_model(monkeypatch):
    import constrained_rec.model

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was reported")

    monkeypatch.setattr(constrained_rec.model, "load_model", must_not_load)


@pytest.mark.parametrize("flags, needs, instead", [
    (["--train-samples", "8", "--assistant", "none"], "training .its validation loss picks the saved adapter.",
     "--train-samples 0 or --adapter DIR"),
    (["--train-samples", "0", "--assistant", "ease", "--prior-weight", "1"], "the ease assistant",
     "--assistant popularity or none"),
    (["--train-samples", "0", "--assistant", "popularity"], r"--prior-weight auto", "--prior-weight 1"),
])
def test_a_folder_without_valid_says_so_before_the_model_loads(tmp_path, no_model, flags, needs, instead):
    """Issue 17 item 4: training said "the data set is empty" after loading the model (validation was), the
    assistants "no validation samples"; now the missing CSV, who needs it and what to pass instead, up front."""
    folder = write_layout(tmp_path / "industrial", splits=("train", "test"))
    keep_first_test_row(folder)
    with pytest.raises(FileNotFoundError, match=rf"{folder} has no valid/\*.csv: {needs}.* needs the valid CSV .*add it "
                                                rf"as {folder / 'valid' / 'NAME.csv'}.*; or pass {instead}"):
        run(parse(["--constrained", "--dataset", str(folder), *flags, "--output-dir", str(tmp_path / "out")]))


def keep_first_test_row(folder: Path) -> None:
    """Drop u1's test row, whose history continues through its validation row (for a layout without that row)."""
    test_csv = folder / "test" / f"{CATEGORY}.csv"
    test_csv.write_text("".join(test_csv.read_text().splitlines(keepends=True)[:2]))


@pytest.mark.parametrize("split, flags", [("test", ["--train-samples", "0"]), ("valid", ["--train-samples", "4"]),
                                          ("train", ["--train-samples", "4"])])
def test_a_csv_with_only_its_header_is_named(tmp_path, no_model, split, flags):
    """Issue 17 item 10: a header-only test CSV said "eval_samples must be None ... got 0"."""
    folder = write_layout(tmp_path / "industrial")
    csv_file = folder / split / f"{CATEGORY}.csv"
    csv_file.write_text(csv_file.read_text().splitlines()[0] + "\n")
    if split == "valid":
        keep_first_test_row(folder)
    with pytest.raises(ValueError, match=rf"{csv_file} holds no samples \(only its header\): .*add its rows"):
        run(parse(["--constrained", "--dataset", str(folder), *flags, "--assistant", "none",
                   "--output-dir", str(tmp_path / "out")]))


def test_too_many_signal_candidates_are_refused_before_the_model_loads(tmp_path, no_model):
    """Issue 17 item 11: it failed after the whole evaluation, wrote no report and did not name the flag. The D3
    catalog has 10 items; user u1 (test target 5 after 0 1 2 4) has 5 to draw from."""
    folder = write_layout(tmp_path / "industrial")
    argv = ["--constrained", "--dataset", str(folder), "--train-samples", "0", "--assistant", "none",
            "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"--signal-candidates 6 is more than test user \d+ has to draw: 5 items of "
                                         r"the catalog's 10 remain .*pass --signal-candidates 5 or less, or "
                                         r"--no-user-signal"):
        run(parse([*argv, "--signal-candidates", "6"]))
    with pytest.raises(AssertionError, match="the model was loaded"):  # 5 fit; so does any number without the control
        run(parse([*argv, "--signal-candidates", "5"]))
    with pytest.raises(AssertionError, match="the model was loaded"):
        run(parse([*argv, "--signal-candidates", "50", "--no-user-signal", "--output-dir", str(tmp_path / "o2")]))


def test_experiments_train_takes_the_items_file_it_suggests(tmp_path, monkeypatch, capsys):
    """Issue 17 item 12: train.py suggested an --items flag it did not have; it now takes the data flags of run.py."""
    import constrained_rec.data
    import constrained_rec.model
    from experiments.train import main

    interactions, items = write_generic(tmp_path)
    seen = {}

    def loaded(source, **options):
        seen.update(options, source=source)
        raise KeyboardInterrupt  # enough: the flags reached the loader

    real = constrained_rec.data.load_interactions
    monkeypatch.setattr(constrained_rec.model, "load_model", lambda name: (None, None))
    monkeypatch.setattr(constrained_rec.data, "load_interactions", loaded)
    with pytest.raises(KeyboardInterrupt):
        main(["--output-dir", str(tmp_path / "out"), "--data", str(interactions), "--items", str(items),
              *GENERIC_FLAGS])
    assert seen == {"source": str(interactions), "items": str(items), "user_column": "who", "item_column": "what",
                    "time_column": "when", "items_item_column": "sku", "title_column": "name", "sep": ";"}
    monkeypatch.setattr(constrained_rec.data, "load_interactions", real)
    with pytest.raises(ValueError, match="on the command line: --items FILE"):  # the advice now fits the script
        main(["--output-dir", str(tmp_path / "out2"), "--data", str(interactions)])


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "expected an integer >= 0, got '-1'"),
    (["--split", "foo"], "invalid choice: 'foo'"),
    (["--max-history", "0"], "expected an integer >= 1, got '0'"),
    (["--sep", ""], "--sep needs a field separator such as , or tab, got ''"),
    (["--item-noun", "gadgets"], "invalid choice: 'gadgets'"),
])
def test_bad_flags_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (dict(split="foo"), r"split \(--split\) must be one of \['auto', 'leave-one-out', 'temporal', 'given'\], got 'foo'"),
    (dict(max_history=0), r"max_history \(--max-history\) must be an integer >= 1, got 0"),
    (dict(sep=""), r"sep \(--sep\) must be a non-empty string or None, got ''"),
    (dict(items=3), r"items \(--items\) must be a non-empty string or None, got 3"),
    (dict(item_noun="gadgets"), r"item_noun \(--item-noun\) must be one of .*, got 'gadgets'"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**options)


# ------------------------------------------------------------------------------------------ end to end
def test_a_d3_folder_end_to_end_reports_item_and_title_hits(tmp_path, tiny_model_dir):
    folder = write_layout(tmp_path / "industrial", splits=("valid", "test"))
    results = run(parse(["--constrained", "--baselines", "--dataset", str(folder), "--split", "given",
                         "--train-samples", "0", "--model", str(tiny_model_dir), "--k", "1,3", "--threads", "1",
                         "--output-dir", str(tmp_path / "out")]))
    assert results["dataset"]["split"] == {"protocol": "given", "max_history": 10, "item_noun": "products"}
    assert results["dataset"]["eval_users"] == 2
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    for name, figures in results["methods"].items():
        assert figures["users"] == 2
        for k in (1, 3):
            # a title hit wherever the target item is recommended (and also for its duplicate-titled twin)
            assert figures[f"title_hr@{k}"]["value"] >= figures[f"hr@{k}"]["value"]
        mine = [r for r in records if r["method"] == name]
        assert all(len(r["titles"]) == len(r["item_ids"]) and r["target_title"] == TITLES[r["target_item_id"]]
                   for r in mine)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Title hits, as D3 and MiniOneRec count them" in report and "| title HR@3 |" in report


@pytest.mark.slow
def test_zero_shot_on_the_shared_industrial_test_users(shared_data_dir, tmp_path):
    """The issue's command, on 2 users: the embedded model, the real MiniOneRec Industrial folder (no train/)."""
    folder = shared_data_dir / "minionerec-industrial"
    if not (folder / "test").is_dir():
        pytest.skip(f"{folder} (MiniOneRec's Industrial_and_Scientific CSVs) is absent from $CONSTRAINED_REC_DATA")
    results = run(parse(["--constrained", "--dataset", str(folder), "--split", "given", "--train-samples", "0",
                         "--eval-users", "2", "--k", "1,5", "--threads", "1", "--assistant", "none", "--no-user-signal",
                         "--output-dir", str(tmp_path / "out")]))
    assert results["dataset"]["split"] == {"protocol": "given", "max_history": 10, "item_noun": "products"}
    assert results["dataset"]["items"] == 3686 and results["dataset"]["eval_users"] == 2
    constrained = results["methods"]["constrained"]
    assert constrained["users"] == 2 and constrained["validity_rate"] == 1.0
    assert constrained["title_hr@5"]["value"] >= constrained["hr@5"]["value"]
    with pytest.raises(FileNotFoundError, match="has no train/.*pass --train-samples 0"):
        load_data(RunConfig(dataset=str(folder), train_samples=4))
