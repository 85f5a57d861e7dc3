"""Guards of the layout (issue 9): small modules and functions, an opaque trie, tests that import normally.

These read the source with `ast`; they run nothing. A failure names the file and line to look at.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80  # docstring excluded

# The library: the package, and the kernels once (constrained_rec/kernels is a link to kernels/).
LIBRARY = sorted(p for p in (REPO_ROOT / "constrained_rec").rglob("*.py") if "kernels" not in p.parts) + sorted(
    (REPO_ROOT / "kernels").glob("*.py"))
ALL_SOURCES = LIBRARY + sorted((REPO_ROOT / "experiments").glob("*.py")) + sorted((REPO_ROOT / "tests").rglob("*.py"))

# The trie's flat arrays (constrained_rec.trie.trie._ARRAYS) and the constraints' kernel arrays: only their owners,
# the kernels, and the tests of the trie's own storage index them; everyone else asks the query methods.
TRIE_ARRAYS = {"seq_tokens", "seq_offsets", "seq_item_offsets", "item_ids_by_position", "child_offsets",
               "node_tokens", "node_seq_lo", "node_seq_hi", "build_positions"}
CONSTRAINT_ARRAYS = {"excluded_offsets", "prior_node_log"}
MAY_READ_TRIE_ARRAYS = {"constrained_rec/trie/trie.py", "constrained_rec/trie/build.py", "constrained_rec/trie/io.py",
                        "kernels/trie_walk.py", "kernels/torch_mask.py", "tests/trie/test_trie.py", "tests/trie/test_trie_io.py"}
MAY_READ_CONSTRAINT_ARRAYS = {"constrained_rec/decoding/constraints.py", "kernels/trie_walk.py", "kernels/torch_mask.py",
                              "tests/decoding/test_constraints.py"}  # the last: the test of their storage


def _name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _function_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _attribute_reads(path: Path, names: set[str]) -> list[str]:
    return [f"{_name(path)}:{node.lineno} .{node.attr}" for node in ast.walk(_tree(path))
            if isinstance(node, ast.Attribute) and node.attr in names]


def _path_imports(path: Path) -> list[str]:
    """Places that load code by file path or edit the import path."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute) and node.attr in ("spec_from_file_location", "SourceFileLoader"):
            found.append(f"{_name(path)}:{node.lineno} {node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            found.append(f"{_name(path)}:{node.lineno} sys.path")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{_name(path)}:{node.lineno} import {m}" for m in modules if m.split(".")[0] == "runpy"]
    return found


def test_the_scans_see_the_library():
    names = {_name(p) for p in LIBRARY}
    assert {"constrained_rec/trie/trie.py", "constrained_rec/decoding/recommend.py", "kernels/trie_walk.py"} <= names
    assert not any(name.startswith("constrained_rec/kernels/") for name in names)  # the link is read once


def test_trie_array_names_are_the_tries():
    from constrained_rec.trie.trie import _ARRAYS

    assert set(_ARRAYS) == TRIE_ARRAYS


@pytest.mark.parametrize("path", LIBRARY, ids=_name)
def test_library_modules_are_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines (> {MAX_MODULE_LINES}): split it by responsibility"


def test_library_functions_are_short():
    long = [f"{_name(path)}:{node.lineno} {node.name} ({_function_lines(node)} lines)"
            for path in LIBRARY for node in ast.walk(_tree(path))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _function_lines(node) > MAX_FUNCTION_LINES]
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines (docstring excluded): {long}"


def test_function_length_counts_code_not_docstring():
    function = ast.parse('def f():\n    """One.\n\n    Two.\n    """\n    a = 1\n    return a\n').body[0]
    assert _function_lines(function) == 3


def test_only_the_trie_and_the_kernels_read_the_trie_arrays():
    reads = [hit for path in ALL_SOURCES if _name(path) not in MAY_READ_TRIE_ARRAYS
             for hit in _attribute_reads(path, TRIE_ARRAYS)]
    assert reads == [], f"ask TitleTrie (children(cursor), item_range, suffix, items_at, ...) instead of reading: {reads}"


def test_only_the_constraints_and_the_kernels_read_the_constraint_arrays():
    reads = [hit for path in ALL_SOURCES if _name(path) not in MAY_READ_CONSTRAINT_ARRAYS
             for hit in _attribute_reads(path, CONSTRAINT_ARRAYS)]
    assert reads == [], f"ask ItemConstraints (allowed, node_log_prior, title_log_mass, excluded_positions) instead of reading: {reads}"


def test_the_scan_finds_array_reads():
    probe = REPO_ROOT / "tests" / "trie" / "test_trie.py"
    assert _attribute_reads(probe, TRIE_ARRAYS), "test_trie.py reads trie arrays; the scan must see them"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "tests").glob("*.py")), ids=_name)
def test_tests_import_nothing_by_file_path(path):
    found = _path_imports(path)
    assert found == [], f"import the library by name (scripts: run them, or call the library function they wrap): {found}"


def test_the_path_import_scan_finds_them(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib.util, runpy, sys\nsys.path.insert(0, 'x')\n"
                     "importlib.util.spec_from_file_location('m', 'm.py')\n")
    assert len(_path_imports(probe)) == 3
