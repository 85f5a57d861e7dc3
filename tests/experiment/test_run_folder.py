"""constrained_rec.experiment.run_folder: one run per output folder (the lock), and a resume only on the data the folder's run
read (the data files' fingerprint in run.json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from test_run_datasets import GENERIC_FLAGS, parse, write_generic

from conftest import REPO_ROOT
from constrained_rec.experiment.pipeline import run
from constrained_rec.experiment.run_config import RUN_IDENTITY, RunConfig
from constrained_rec.experiment.run_folder import FolderInUseError, check_data_files, folder_lock
from constrained_rec.experiment.train_job import TrainJob, train_job

SINGLE = SimpleNamespace(is_main_process=True, num_processes=1, process_index=0, wait_for_everyone=lambda: None)
OTHER_RANK = SimpleNamespace(is_main_process=False, num_processes=2, process_index=1, wait_for_everyone=lambda: None)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the checks under test must come first."""
    import constrained_rec.model

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the folder check")

    monkeypatch.setattr(constrained_rec.model, "load_model", must_not_load)


# ------------------------------------------------------------------------------------------------- the lock
def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, no_model):
    """Issue 17 item 3: two runs on one --output-dir both redid everything and interleaved train_log.jsonl."""
    folder = tmp_path / "out"
    with folder_lock(folder, SINGLE, command="python experiments/run.py --constrained (the first run)"):
        with pytest.raises(FolderInUseError, match=rf"{folder} is in use by another run \(pid {os.getpid()} on .*, "
                                                   r"started .*: python experiments/run.py --constrained \(the first "
                                                   r"run\)\).*pass another --output-dir"):
            run(RunConfig(constrained=True, model="m", output_dir=str(folder)))
        with pytest.raises(FolderInUseError, match="is in use by another run"):
            train_job(TrainJob(output_dir=str(folder)))
        with folder_lock(folder, OTHER_RANK):  # a sharded launch's other processes share the folder
            pass
    assert not (folder / RUN_IDENTITY).exists()  # refused before anything was written
    with folder_lock(folder, SINGLE):  # released at the end of the block
        pass


def test_a_killed_run_leaves_the_folder_free(tmp_path):
    """The kernel drops an flock when its holder dies, however it dies: no stale lock to delete by hand."""
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from constrained_rec.experiment.run_folder import folder_lock
        with folder_lock(sys.argv[1], command="holder"):
            print("locked", flush=True)
            time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=rf"pid {process.pid} on .*: holder"):
            with folder_lock(tmp_path):
                pass
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with folder_lock(tmp_path):
        pass


# ------------------------------------------------------------------------------------------- the data files
def test_a_resume_on_changed_data_is_refused_listing_the_files(tmp_path, no_model):
    """Issue 17 item 7: data edited in place, then resumed, reused the old adapter and assistant without a word."""
    interactions, items = write_generic(tmp_path / "data")
    argv = ["--constrained", "--dataset", str(interactions), "--items", str(items), *GENERIC_FLAGS,
            "--train-samples", "0", "--no-user-signal", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(AssertionError, match="a model was loaded"):
        run(parse(argv))  # the first run records its data files, then (here) stops at the model
    recorded = json.loads((tmp_path / "out" / RUN_IDENTITY).read_text())["data_files"]
    assert sorted(recorded) == ["catalog.csv", "clicks.csv"] and recorded["clicks.csv"]["bytes"] > 0
    (tmp_path / "out" / "evaluation.json").write_text("{}")  # the first run had finished users
    with pytest.raises(AssertionError, match="a model was loaded"):
        run(parse(argv))  # the same data: resumed
    items.write_text(items.read_text().replace("Widget 12", "Widget 21"))  # same size, other content
    with interactions.open("a") as handle:
        handle.write("u9;10;1\nu9;11;2\nu9;12;3\n")
    with pytest.raises(ValueError, match=r"the data set changed since the run in .* read it \(catalog.csv: content "
                                         r"differs \(same size\); clicks.csv: content differs \(\d+ -> \d+ bytes\)\)"
                                         r".*pass another --output-dir"):
        run(parse(argv))


def test_the_embedded_data_set_is_fingerprinted_by_its_files_in_the_wheel(tmp_path):
    from constrained_rec.data import load_interactions

    data = load_interactions("ml-100k")
    (tmp_path / RUN_IDENTITY).write_text(json.dumps({"dataset": "ml-100k"}))
    check_data_files(tmp_path, RUN_IDENTITY, data, SINGLE)
    saved = json.loads((tmp_path / RUN_IDENTITY).read_text())
    assert saved["dataset"] == "ml-100k" and sorted(saved["data_files"]) == ["ml-100k.inter", "ml-100k.item"]
    check_data_files(tmp_path, RUN_IDENTITY, data, SINGLE)  # unchanged: accepted
    saved["data_files"]["ml-100k.item"]["sha256"] = "0" * 64
    (tmp_path / RUN_IDENTITY).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"ml-100k.item: content differs \(same size\)"):
        check_data_files(tmp_path, RUN_IDENTITY, data, SINGLE)
