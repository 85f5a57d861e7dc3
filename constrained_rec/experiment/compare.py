"""`compare_runs`: two run folders' results field by field, timing fields aside (``experiments/compare_runs.py``).

A change that claims to keep behaviour (a refactor) runs the same command before and after and compares the two
folders: every prediction record and metric must be equal, exactly (floats bit for bit), except the fields that
measure time. The run's own folder, wherever a string names it (``"adapter": "/tmp/run-a/adapter"``, the
command's ``--output-dir /tmp/run-a``), reads ``<run>``, so two folders' paths into themselves compare equal.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import NamedTuple, Sequence

RESULT_FILES = ("predictions*.jsonl", "metrics.json")
# Timing fields: "seconds", "cpu_seconds", "fit_seconds", "train_s", "users_per_s", and the "timings" block.
TIMING_KEYS = r"seconds$|_s$|^timings$"


class RunComparison(NamedTuple):
    files: list[str]  # the result files compared (names relative to the folders)
    records: int  # JSON documents compared: one per .jsonl line, one per .json file
    differences: list[str]  # "FILE[:LINE] FIELD: a-value != b-value", in file order; empty when equal


def compare_runs(a: str | Path, b: str | Path, patterns: Sequence[str] = RESULT_FILES,
                 ignore: str = TIMING_KEYS) -> RunComparison:
    """Compares the result files (``patterns``, globs in each folder) of run folders ``a`` and ``b``.

    A file in one folder only, a record count that differs, a key in one record only, and any value that differs
    (type included: ``1`` is not ``1.0``; NaN equals NaN) is a difference; keys whose name matches the regular
    expression ``ignore`` are skipped at any depth. A folder that is missing, or two folders with no result file
    at all, are an error (nothing compared proves nothing).

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> a, b = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    >>> _ = (a / "metrics.json").write_text(json.dumps({"ndcg@10": 0.5, "total_s": 3.0}))
    >>> _ = (b / "metrics.json").write_text(json.dumps({"ndcg@10": 0.25, "total_s": 9.0}))
    >>> compare_runs(a, b).differences
    ['metrics.json ndcg@10: 0.5 != 0.25']
    """
    folders = [Path(a), Path(b)]
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"run folder {str(folder)!r} does not exist (or is not a folder)")
    names = [{p.relative_to(f).as_posix() for pattern in patterns for p in f.glob(pattern) if p.is_file()}
             for f in folders]
    if not names[0] | names[1]:
        raise ValueError(f"neither {str(folders[0])!r} nor {str(folders[1])!r} holds a result file {list(patterns)}; "
                         "nothing to compare")
    skip = re.compile(ignore)
    differences = [f"{name}: only in {which}" for which, only in (("a", names[0] - names[1]), ("b", names[1] - names[0]))
                   for name in sorted(only)]
    records = 0
    for name in sorted(names[0] & names[1]):
        docs = [_documents(folder / name, folder) for folder in folders]
        if len(docs[0]) != len(docs[1]):
            differences.append(f"{name}: {len(docs[0])} records != {len(docs[1])}")
        for line, (x, y) in enumerate(zip(*docs), start=1):
            _diff(x, y, f"{name}:{line}" if name.endswith(".jsonl") else name, "", skip, differences)
            records += 1
    return RunComparison(sorted(names[0] & names[1]), records, differences)


def _documents(path: Path, folder: Path) -> list:
    text = path.read_text()
    docs = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
    names = sorted({str(folder), str(folder.resolve())}, key=len, reverse=True)
    # The folder's path as a whole path or path prefix: "/tmp/run-a" in "/tmp/run-a/adapter", not in "/tmp/run-ab".
    own = re.compile("(?:" + "|".join(map(re.escape, names)) + r")(?=/|\s|$|['\"])")
    return [_relative_paths(doc, own) for doc in docs]


def _relative_paths(value, own: re.Pattern):
    """``value`` with the run folder's own path written ``<run>`` in every string."""
    if isinstance(value, dict):
        return {key: _relative_paths(item, own) for key, item in value.items()}
    if isinstance(value, list):
        return [_relative_paths(item, own) for item in value]
    if isinstance(value, str):
        return own.sub("<run>", value)
    return value


def _diff(x, y, where: str, field: str, skip: re.Pattern, out: list[str]) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
        for key in list(x) + [key for key in y if key not in x]:
            if skip.search(str(key)):
                continue
            inner = f"{field}.{key}" if field else str(key)
            if key not in y or key not in x:
                out.append(f"{where} {inner}: only in {'a' if key in x else 'b'}")
            else:
                _diff(x[key], y[key], where, inner, skip, out)
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            out.append(f"{where} {field}: {len(x)} entries != {len(y)}")
        for i, (u, v) in enumerate(zip(x, y)):
            _diff(u, v, where, f"{field}[{i}]", skip, out)
    elif type(x) is not type(y) or (x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y))):
        out.append(f"{where} {field}: {x!r} != {y!r}")
