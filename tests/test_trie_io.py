"""Installation and persistence edge cases of the trie: a read-only install, damaged saved folders."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# Uses the trie and both numba kernels (the walk behind next_tokens, the in-place mask behind the processor).
READ_ONLY_PROBE = r"""
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch
    import constrained_rec
    from constrained_rec import TitleTrie, TitleTrieProcessor
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=2)
    proc = TitleTrieProcessor(trie, prompt_length=1, backend="numba")
    scores = proc(torch.tensor([[1], [1]]), torch.zeros(2, 12))
    masks = torch.isfinite(scores).nonzero().tolist()
    after_five = proc(torch.tensor([[1, 5]]), torch.zeros(1, 12))
print(json.dumps({
    "package": constrained_rec.__file__,
    "next_tokens": [trie.next_tokens([]), trie.next_tokens([5])],
    "allowed_at_root": masks,
    "allowed_after_5": torch.isfinite(after_five).nonzero()[:, 1].tolist(),
    "warnings": [str(w.message) for w in caught if "numba cache" in str(w.message)],
}))
"""


def _unwritable(path):
    """A path no process can create a folder at, root included: it lies below a regular file."""
    blocker = path.parent / f"{path.name}-is-a-file"
    blocker.write_text("")
    return blocker / path.name


def _read_only_copy(tmp_path):
    """The package as a read-only install: no __pycache__ can be created next to the kernels."""
    root = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "constrained_rec", root / "constrained_rec", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in (root / "constrained_rec", root / "constrained_rec" / "kernels"):
        (folder / "__pycache__").write_text("")  # blocks numba's in-tree locator even for root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return root


def _run_probe(cwd, home, extra_env):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1", **extra_env}
    out = subprocess.run([sys.executable, "-c", READ_ONLY_PROBE], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def read_only_install(tmp_path):
    root = _read_only_copy(tmp_path)
    yield root
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, stat.S_IRWXU)


@pytest.mark.parametrize("own_cache", [False, True], ids=["no-writable-cache", "CONSTRAINED_REC_CACHE"])
def test_read_only_install_imports_and_masks(read_only_install, tmp_path, own_cache):
    cache = tmp_path / "cache"
    extra = {"CONSTRAINED_REC_CACHE": str(cache if own_cache else _unwritable(cache))}
    result = _run_probe(read_only_install, _unwritable(tmp_path / "home"), extra)
    assert result["package"].startswith(str(read_only_install))  # the copy, not the editable checkout
    assert result["next_tokens"] == [[5, 8], [6, 7]]
    assert result["allowed_at_root"] == [[0, 5], [0, 8], [1, 5], [1, 8]]
    assert result["allowed_after_5"] == [6, 7]
    if own_cache:
        assert result["warnings"] == []
        assert any(cache.glob("numba/*/*.nbi")), "the kernels were not cached under CONSTRAINED_REC_CACHE"
    else:
        assert len(result["warnings"]) == 1  # once per process, not once per kernel
        assert "compile without a cache" in result["warnings"][0]
