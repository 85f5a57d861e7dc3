"""The layout's layer order (README, Layout): every import of the library points down it, and none closes a cycle.

Read with `ast` from the source, so imports inside functions and under ``TYPE_CHECKING`` count too: a deferred
import is still an arrow between layers. A failure names the importing file, its line and the two layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# Bottom first, under constrained_rec. A module may import from its own layer or any layer below it, never above.
LAYERS = [
    ("base", ["hf", "prompts", "model", "options", "validation"]),
    ("kernels", ["kernels"]),
    ("trie", ["trie"]),
    ("data", ["data"]),
    ("decoding", ["decoding"]),
    ("training", ["training"]),
    ("evaluation", ["evaluation"]),
    ("collaborative", ["collaborative"]),
    ("experiment", ["experiment"]),
    ("lightning", ["lightning"]),  # the optional extra: nothing below imports it
]
FRONT = "constrained_rec"  # the public front: imports nothing eagerly, and nothing in the library imports it


def _module_name(path: Path) -> str:
    if path.is_relative_to(REPO_ROOT / "kernels"):
        return f"constrained_rec.kernels.{path.stem}"
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(p for p in (REPO_ROOT / "constrained_rec").rglob("*.py") if "kernels" not in p.parts) + sorted(
    (REPO_ROOT / "kernels").glob("*.py"))
MODULES = {_module_name(path): path for path in SOURCES}


def _layer(module: str) -> int | None:
    for index, (_, packages) in enumerate(LAYERS):
        if any(f"{module}.".startswith(f"{FRONT}.{package}.") for package in packages):
            return index
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, library module) for every import of the library in ``path``; ``from pkg import submodule`` is an
    import of the submodule, not of the package's ``__init__``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == FRONT]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == FRONT:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.append((node.lineno, child if child in MODULES else node.module))
    return found


GRAPH = {module: sorted({target for _, target in _imports(path)} - {module}) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert [module for module in MODULES if module != FRONT and _layer(module) is None] == []


def test_imports_point_down_the_layers():
    upward = []
    for module, path in MODULES.items():
        if module == FRONT:
            continue
        for line, target in _imports(path):
            if target == FRONT:
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} imports the public front {FRONT}")
            elif _layer(target) > _layer(module):
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} ({LAYERS[_layer(module)][0]}) imports "
                              f"{target} ({LAYERS[_layer(target)][0]})")
    assert upward == []


def test_the_front_imports_nothing_of_the_library_eagerly():
    assert _imports(MODULES[FRONT]) == []


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth-first search), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in graph.get(node, []):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_cycle():
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH))


@pytest.mark.parametrize("graph, expected", [
    ({"a": ["b"], "b": ["c"], "c": []}, None),
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycle(graph) == expected


def test_the_scan_sees_deferred_imports():
    # steps imports train inside a function: still an arrow, experiment -> training
    assert "constrained_rec.training.train" in GRAPH["constrained_rec.experiment.steps"]


def test_no_private_name_is_imported_across_modules():
    # the library and the scripts; tests may reach a module's internals where they test its storage
    sources = SOURCES + sorted((REPO_ROOT / "experiments").glob("*.py"))
    private = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == FRONT:
                private += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {alias.name}" for alias in node.names
                            if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []
