"""compare_runs (constrained_rec.experiment.compare) and experiments/compare_runs.py on two tiny hand-made run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from constrained_rec.experiment.compare import compare_runs


def _record(sample, scores, seconds):
    return {"method": "constrained", "sample": sample, "item_ids": [3, 1], "scores": scores, "seconds": seconds}


def _run(folder, scores=(-1.5, -2.25), seconds=0.1, extra=None, data="/data/x.csv"):
    folder.mkdir()
    records = [_record(0, list(scores), seconds), _record(1, [-0.5, float("nan")], seconds)] + (extra or [])
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = {"methods": {"constrained": {"ndcg@10": {"value": 0.25, "ci": [0.0, 0.5]}, "seconds": seconds,
                                           "users_per_s": 1 / seconds}},
               "adapter": str(folder / "adapter"), "timings": {"total_s": seconds},
               "command": f"run.py --output-dir {folder} --data {data}"}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "report.md").write_text(f"took {seconds} s")  # not a result file
    return folder


def test_runs_equal_but_for_timing_and_their_own_paths_are_equal(tmp_path):
    a, b = _run(tmp_path / "a", seconds=0.1), _run(tmp_path / "b", seconds=7.0)
    result = compare_runs(a, b)
    assert result.differences == []
    assert result.files == ["metrics.json", "predictions.jsonl"] and result.records == 3


def test_every_difference_is_named(tmp_path):
    a = _run(tmp_path / "a", data=f"{tmp_path}/a2/x.csv")  # beside the folder, not in it
    b = _run(tmp_path / "b", scores=(-1.5, -2.0), extra=[_record(2, [], 0.1)], data=f"{tmp_path}/b2/x.csv")
    metrics = json.loads((b / "metrics.json").read_text())
    metrics["methods"]["constrained"]["ndcg@10"]["value"] = 0  # an int where a has a float: 0.25 != 0
    metrics["adapter"] = str(tmp_path / "elsewhere")
    metrics["new"] = 1
    (b / "metrics.json").write_text(json.dumps(metrics))
    (a / "predictions_extra.jsonl").write_text("{}\n")
    assert compare_runs(a, b).differences == [
        "predictions_extra.jsonl: only in a",
        "metrics.json methods.constrained.ndcg@10.value: 0.25 != 0",
        f"metrics.json adapter: '<run>/adapter' != {str(tmp_path / 'elsewhere')!r}",
        f"metrics.json command: 'run.py --output-dir <run> --data {a}2/x.csv' != "
        f"'run.py --output-dir <run> --data {b}2/x.csv'",
        "metrics.json new: only in b",
        "predictions.jsonl: 2 records != 3",
        "predictions.jsonl:1 scores[1]: -2.25 != -2.0",
    ]


def test_a_type_change_or_a_shorter_list_is_a_difference(tmp_path):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", scores=(-1.5,))
    (b / "metrics.json").write_text((b / "metrics.json").read_text().replace('"ci": [0.0, 0.5]', '"ci": [0, 0.5]'))
    assert compare_runs(a, b).differences == ["metrics.json methods.constrained.ndcg@10.ci[0]: 0.0 != 0",
                                              "predictions.jsonl:1 scores: 2 entries != 1"]


def test_nothing_to_compare_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="nothing to compare"):
        compare_runs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ValueError, match="'.*missing' does not exist"):
        compare_runs(tmp_path / "a", tmp_path / "missing")


def test_the_script_exits_1_on_a_difference_and_0_on_equality(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", seconds=3.0)
    c = _run(tmp_path / "c", scores=(-1.5, -2.5))
    script = [sys.executable, str(REPO_ROOT / "experiments" / "compare_runs.py")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    same = subprocess.run(script + [str(a), str(b)], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert same.returncode == 0 and same.stdout.startswith("equal: 2 files in both"), same.stdout + same.stderr
    differ = subprocess.run(script + [str(a), str(c), "--files", "predictions*.jsonl"], capture_output=True, text=True,
                            cwd=REPO_ROOT, env=env)
    assert differ.returncode == 1
    assert differ.stdout.splitlines() == ["predictions.jsonl:1 scores[1]: -2.25 != -2.5",
                                          "1 differences: 1 files in both (predictions.jsonl), 2 records, keys "
                                          "matching 'seconds$|_s$|^timings$' skipped"]
