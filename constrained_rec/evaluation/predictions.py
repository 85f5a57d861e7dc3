"""The resumable, sharded prediction store of an evaluation folder.

Files in the folder:

- ``evaluation.json``: the evaluation's identity (settings, model, catalog, samples). Only the main process
  writes it; every other process waits for it at a barrier, then all compare it with their own identity.
- ``predictions.part<rank>.jsonl``: records appended by process ``rank`` as its batches finish, so an
  interrupted run resumes without redoing finished samples.
- ``predictions.jsonl``: every record, merged by the main process at the end; the parts are then removed.

Each process takes every ``world``-th sample (:meth:`PredictionStore.shard`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

PREDICTIONS = "predictions.jsonl"
IDENTITY = "evaluation.json"


def _read_jsonl(path: Path, repair_tail: bool) -> list[dict]:
    """Records of a JSON-lines file. A last line cut short by an interruption is dropped (and, with
    ``repair_tail``, cut from the file so that appending continues cleanly); any other bad line is an error."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the unterminated last line of an interrupted write
                if repair_tail:
                    with open(path, "r+b") as file:
                        file.truncate(len(data) - len(line))
                break
            raise ValueError(f"{path}:{number} is not a JSON record ({error}); the predictions file is damaged") from None
    return records


def read_predictions(output_dir: str | os.PathLike, repair_tail: bool = False) -> list[dict]:
    """Every record in ``predictions.jsonl`` and the per-process parts of an unfinished run, first copy wins."""
    folder = Path(output_dir)
    paths = [folder / PREDICTIONS] + sorted(folder.glob("predictions.part*.jsonl"))
    seen, records = set(), []
    for path in paths:
        for record in _read_jsonl(path, repair_tail):
            key = (record["method"], record["sample"])
            if key not in seen:
                seen.add(key)
                records.append(record)
    return records


def differences(saved: Mapping, current: Mapping) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs between two identities, sorted by key."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys]


def write_json_atomically(path: Path, value) -> None:
    """Write ``value`` as JSON so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def check_identity(path: Path, identity: Mapping, state, what: str, ignore: Sequence[str] = ()) -> None:
    """Store ``identity`` at ``path`` (main process, first time) or refuse a folder written with another one.

    Args:
        path: the identity file.
        identity: JSON-serialisable settings that make two runs the same.
        state: accelerate's process state (:func:`constrained_rec.hf.process_state`).
        what: what the folder holds, for the error ("predictions of an evaluation", "a run").
        ignore: keys of the stored file that are not part of the identity (recorded there by other checks).
    """
    if state.is_main_process and not path.is_file():
        write_json_atomically(path, dict(identity))
    state.wait_for_everyone()  # the others read the file only once the main process has written it
    saved = {key: value for key, value in json.loads(path.read_text()).items() if key not in ignore}
    differing = differences(saved, json.loads(json.dumps(dict(identity))))
    if differing:
        raise ValueError(
            f"{path.parent} holds {what} with other settings ({'; '.join(differing)}); resume only with the same "
            "settings, or choose another --output-dir"
        )


class PredictionStore:
    """The prediction files of one evaluation in ``folder``, for this process.

    Args:
        folder (`Path`): the evaluation folder.
        identity (`Mapping`): what makes two evaluations the same; stored in ``evaluation.json``.
        state: accelerate's process state (rank, world size, barrier).
    """

    def __init__(self, folder: str | os.PathLike, identity: Mapping, state):
        self.folder = Path(folder)
        self.state = state
        check_identity(self.folder / IDENTITY, identity, state, "predictions of a different evaluation")
        self.done = {(r["method"], r["sample"]) for r in read_predictions(self.folder, repair_tail=False)}
        self.part = self.folder / f"predictions.part{state.process_index}.jsonl"
        _read_jsonl(self.part, repair_tail=True)  # only this process appends to its part

    def shard(self, items: Sequence) -> list:
        """This process's share: every ``world``-th item, starting at its rank."""
        return list(items)[self.state.process_index :: self.state.num_processes]

    def is_done(self, method: str, sample: int) -> bool:
        return (method, sample) in self.done

    def append(self, file, method: str, record: Mapping, seconds: float) -> None:
        """Write one record to this process's part (``file`` is ``open(store.part, "a")``)."""
        if not self.is_done(method, record["sample"]):
            file.write(json.dumps({"method": method, **record, "seconds": seconds}, ensure_ascii=False) + "\n")

    def merge(self, sample_order: Sequence[int]) -> list[dict] | None:
        """After every process is done: on the main process, write ``predictions.jsonl`` (methods in order of
        appearance, samples in ``sample_order``), remove the parts and return the records; ``None`` elsewhere."""
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            return None
        records = read_predictions(self.folder)
        order = {index: position for position, index in enumerate(sample_order)}
        methods = list(dict.fromkeys(r["method"] for r in records))
        records.sort(key=lambda r: (methods.index(r["method"]), order.get(r["sample"], len(order) + r["sample"])))
        tmp = self.folder / (PREDICTIONS + ".tmp")
        with open(tmp, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        os.replace(tmp, self.folder / PREDICTIONS)
        for path in self.folder.glob("predictions.part*.jsonl"):
            path.unlink()
        return records
