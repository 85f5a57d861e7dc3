"""ruff (configured in pyproject.toml: pyflakes, pycodestyle, import order) passes over the whole repository."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_ruff_passes():
    result = _ruff(".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_reads_the_projects_rules(tmp_path):
    # an unsorted import block and an unused import: the check above would catch both
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n")
    result = _ruff("--config", str(REPO_ROOT / "pyproject.toml"), str(bad))
    assert "I001" in result.stdout and "F401" in result.stdout


def test_no_blanket_noqa():
    # PGH004: a noqa comment without codes silences every rule on its line
    result = _ruff("--select", "PGH004", ".")
    assert result.returncode == 0, result.stdout
