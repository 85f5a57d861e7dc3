"""Reading the options is light: importing run_config (and the front) imports no torch, transformers or numba."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "numba")


@pytest.mark.parametrize("module", ["constrained_rec.experiment.run_config", "constrained_rec"])
def test_importing_it_imports_no_heavy_library(module):
    probe = f"import json, sys, {module}; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_the_probe_sees_a_heavy_import():
    probe = f"import json, sys, numba; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout.splitlines()[-1]) == ["numba"]


def test_the_package_sets_the_hub_offline_first():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"PYTHONPATH": str(REPO_ROOT)}
    probe = "import os, constrained_rec.hf; print(os.environ.get('HF_HUB_OFFLINE'))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.stdout.split() == ["1"], out.stderr
