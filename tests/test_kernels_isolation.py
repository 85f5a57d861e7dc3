"""Our `kernels/` folder must never be mistaken for Hugging Face's `kernels` package.

transformers probes `importlib.util.find_spec("kernels")` (and may import what it finds) to decide whether
to use hub kernels. Ours is installed only as `constrained_rec.kernels`, and the folder has no
`__init__.py`, so even with the repository root on sys.path the probe finds at most an empty namespace.
Since transformers 5.25 Hugging Face's `kernels` is one of its dependencies: then the probe finds that package,
never our folder.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

PROBE = r"""
import importlib.metadata, importlib.util, json, sys
import transformers
from transformers.utils import import_utils
from transformers.integrations import hub_kernels
ours = str(sys.argv[1])
try:
    importlib.metadata.distribution("kernels")
    hf_kernels_installed = True
except importlib.metadata.PackageNotFoundError:
    hf_kernels_installed = False
spec = importlib.util.find_spec("kernels")
result = {
    "hf_kernels_installed": hf_kernels_installed,
    "kernels_origin": (spec.origin if spec else None) or "",
    "kernels_available": import_utils.is_kernels_available(),
    "hub_kernels_enabled": bool(import_utils.is_kernels_available() and hub_kernels._kernels_enabled),
    "our_modules_loaded": sorted(
        name for name, mod in list(sys.modules.items())
        if (getattr(mod, "__file__", None) or "").startswith(ours)
    ),
    "top_level_kernels_is_regular_package": bool(
        "kernels" in sys.modules and getattr(sys.modules["kernels"], "__file__", None) is not None
    ),
}
import constrained_rec.kernels.trie_walk as trie_walk
result["our_kernels_file"] = trie_walk.__file__
result["kernels_still_unavailable"] = not import_utils.is_kernels_available()
print(json.dumps(result))
"""


@pytest.mark.parametrize("cwd", ["elsewhere", "repo_root"])
def test_transformers_does_not_import_or_enable_our_kernels(cwd, tmp_path):
    workdir = tmp_path if cwd == "elsewhere" else REPO_ROOT
    # `python -c` puts the working directory first on sys.path: at the repo root, `kernels/` is findable.
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO_ROOT / "kernels")],
        cwd=workdir, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRANSFORMERS_USE_HUB_KERNELS": "1"},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["our_modules_loaded"] == []  # nothing of ours ran during `import transformers`
    assert not result["kernels_origin"].startswith(str(REPO_ROOT / "kernels"))
    if result["hf_kernels_installed"]:
        # transformers >= 5.25 depends on Hugging Face's `kernels`: then `kernels` is that package (its origin is
        # not our folder, checked above), and whether hub kernels are on is that package's business, not ours
        assert result["kernels_available"] is True
    else:
        assert result["kernels_available"] is False
        assert result["hub_kernels_enabled"] is False
        assert result["top_level_kernels_is_regular_package"] is False
        assert result["kernels_still_unavailable"] is True
    assert result["our_kernels_file"].startswith(str(REPO_ROOT / "kernels")) or "constrained_rec" in result["our_kernels_file"]


def test_kernels_folder_is_not_a_top_level_package():
    assert not (REPO_ROOT / "kernels" / "__init__.py").exists()
    assert (REPO_ROOT / "constrained_rec" / "kernels").resolve() == (REPO_ROOT / "kernels").resolve()


def test_kernels_do_not_import_transformers():
    for path in (REPO_ROOT / "kernels").glob("*.py"):
        assert "transformers" not in path.read_text(), path
