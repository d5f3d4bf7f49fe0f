"""The package layout: imports flow one way and never in a circle.

Layers, from the bottom: ``utils`` <- ``configs`` <- ``clip``, ``datasets`` <- ``trainers`` <-
``train.py``, ``tools``. Inside ``trainers`` the shared roles (engine, evaluation, components) never import a
method package. Every ``import`` statement counts, module-level or inside a function, so a
circle cannot hide behind a deferred import. Run alone with ``python -m pytest tests/test_layout.py``.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "configs", "clip", "datasets", "trainers")
#: what each top-level package may import (besides itself)
ALLOWED = {
    "utils": set(),
    "configs": {"utils"},
    "clip": {"utils", "configs"},
    "datasets": {"utils", "configs"},
    "trainers": {"utils", "configs", "clip", "datasets"},
}
SHARED_ROLES = ("trainers.engine", "trainers.evaluation", "trainers.components", "trainers.registry")
#: every sub-package of ``trainers`` that is not a shared role is a method (read from the tree, so a
#: new method folder is checked without editing this file)
METHOD_PACKAGES = tuple(sorted(
    p.name for p in (ROOT / "trainers").iterdir()
    if (p / "__init__.py").exists() and f"trainers.{p.name}" not in SHARED_ROLES))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def internal_modules() -> Dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            mods[module_name(path)] = path
    return mods


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Internal modules named by the import statements in ``path`` (resolving relative imports)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import mod`` depends on the module; ``from mod import name`` on mod
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            if t in known:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    mods = internal_modules()
    known = set(mods)
    return {m: imports_of(m, p, known) - {m} for m, p in mods.items()}


def test_walk_finds_the_known_edges(graph):
    # the walker itself must see real edges (a broken walker would pass every other test)
    assert "trainers.engine" in graph["trainers.clip_prompting.base"]
    assert "trainers.engine.trainer" in graph["trainers.engine"]
    assert "datasets.base" in graph["datasets.formats.emotion6"]
    assert "trainers.components.nrc_vad" in graph["trainers.evaluation.regression"]


def test_method_packages_are_read_from_the_tree():
    # the known methods are found, and no shared role is taken for a method
    assert {"clip_prompting", "emocoop", "ewmtcnn", "vega", "uniemox"} <= set(METHOD_PACKAGES)
    assert not {"engine", "evaluation", "components"} & set(METHOD_PACKAGES)


def test_no_upward_import(graph):
    bad = []
    for mod, deps in graph.items():
        top = mod.split(".")[0]
        for d in deps:
            dtop = d.split(".")[0]
            if dtop != top and dtop not in ALLOWED[top]:
                bad.append(f"{mod} -> {d}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_shared_roles_do_not_import_methods(graph):
    methods = tuple(f"trainers.{m}" for m in METHOD_PACKAGES)
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith(SHARED_ROLES)
           for d in deps if d.startswith(methods)]
    assert not bad, "\n".join(sorted(bad))


def test_datasets_contract_does_not_import_readers_or_generators(graph):
    sub = ("datasets.formats", "datasets.conversation", "datasets.synthetic")
    bad = [f"{m} -> {d}" for m, deps in graph.items()
           if m.startswith("datasets.") and not m.startswith(sub) and m != "datasets"
           for d in deps if d.startswith(sub)]
    assert not bad, "\n".join(sorted(bad))


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    stack: List[str] = []

    def visit(m: str) -> List[str]:
        colour[m] = GREY
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if colour.get(d) == GREY:
                return stack[stack.index(d):] + [d]
            if colour.get(d) == WHITE:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        colour[m] = BLACK
        return []

    for m in sorted(graph):
        if colour[m] == WHITE:
            found = visit(m)
            if found:
                return found
    return []


def test_find_cycle_detects_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_circle(graph):
    cycle = find_cycle(graph)
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_every_module_is_in_a_package():
    # a folder without __init__.py would be skipped by registration-by-import
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(ROOT / pkg):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and d != "weights"]
            if any(f.endswith(".py") for f in filenames):
                assert "__init__.py" in filenames, f"{dirpath} has modules but no __init__.py"
