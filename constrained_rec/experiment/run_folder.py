"""Guards of an output folder: one run at a time (:func:`folder_lock`), and a resume only on the data that the
folder's run read (:func:`check_data_files`).

Two runs in one folder would redo each other's work and interleave their files (``train_log.jsonl``, the
prediction parts); the lock is an ``fcntl.flock`` on ``run.lock``, which the kernel releases when the holder
exits, however it exits, so a killed run never leaves the folder locked. Only the main process of a sharded
launch (``torchrun``) takes it: its other processes share the folder legitimately.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

logger = logging.getLogger("constrained_rec.experiment.run_folder")

LOCK_FILE = "run.lock"
DATA_FILES_KEY = "data_files"


class FolderInUseError(RuntimeError):
    """Another run holds the lock of an output folder."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}"
                + (f": {info['command']}" if info.get("command") else ""))
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written who it is"


@contextmanager
def folder_lock(folder: str | os.PathLike, state=None, command: str | None = None):
    """Hold ``folder``'s lock while the block runs (main process only); a :class:`FolderInUseError` naming the
    holder (pid, host, start time, command) when another run has it.

    Example:

    ```python
    >>> import tempfile
    >>> from constrained_rec.experiment.run_folder import FolderInUseError, folder_lock
    >>> folder = tempfile.mkdtemp()
    >>> with folder_lock(folder, command="first"):
    ...     try:
    ...         with folder_lock(folder, command="second"):
    ...             pass
    ...     except FolderInUseError as error:
    ...         print("refused:", "first" in str(error))
    refused: True

    ```
    """
    if state is not None and not state.is_main_process:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform (Windows): unguarded, as before
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+", encoding="utf-8") as handle:
        locked = _try_lock(fcntl, handle, folder)
        if locked:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                     "started": datetime.now().isoformat(timespec="seconds")}) + "\n")
            handle.flush()
        yield  # closing the file releases the lock


def _try_lock(fcntl, handle, folder: Path) -> bool:
    """Take the lock; ``False`` where the file system has no locks (then the run goes on, unguarded)."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise FolderInUseError(
            f"{folder} is in use by another run ({_holder(handle.read().strip())}). Two runs in one folder redo "
            "each other's work and mix their files: wait for that run to end, or pass another --output-dir"
        ) from None
    except OSError as error:  # e.g. a network file system without flock
        logger.warning("cannot lock %s (%s): nothing stops a second run from using this folder at the same time",
                       folder, error)
        return False
    return True


def check_data_files(folder: str | os.PathLike, identity_file: str, data, state) -> None:
    """Record the fingerprint of every file ``data`` was read from (:attr:`InteractionData.files`) in
    ``folder/identity_file`` (``run.json``), or refuse a resume whose files changed since, listing them.

    A resumed run reuses the adapter, the assistant and the finished predictions: computed from other data,
    they would be reused without a word. Main process only; the others wait.
    """
    from constrained_rec.data import file_fingerprints
    from constrained_rec.evaluation.predictions import write_json_atomically

    if state.is_main_process:
        path = Path(folder) / identity_file
        saved = json.loads(path.read_text()) if path.is_file() else {}
        source = Path(data.source)
        current = file_fingerprints(data.files, source if source.is_dir() else source.parent)
        if DATA_FILES_KEY not in saved:
            write_json_atomically(path, {**saved, DATA_FILES_KEY: current})
        else:
            changed = _changed_files(saved[DATA_FILES_KEY], current)
            if changed:
                raise ValueError(
                    f"the data set changed since the run in {folder} read it ({'; '.join(changed)}); resuming would "
                    "reuse its adapter, assistant and predictions, computed from the old data. Restore the files, "
                    "or pass another --output-dir for a new run")
    state.wait_for_everyone()


def _changed_files(saved: dict, current: dict) -> list[str]:
    """``"name: what changed"`` for each file added, removed or changed (size, content)."""
    out = []
    for name in sorted(set(saved) | set(current)):
        old, new = saved.get(name), current.get(name)
        if old is None or new is None:
            out.append(f"{name}: {'not read before' if old is None else 'no longer read'}")
        elif old != new:
            size = f"{old['bytes']} -> {new['bytes']} bytes" if old["bytes"] != new["bytes"] else "same size"
            out.append(f"{name}: content differs ({size})")
    return out
