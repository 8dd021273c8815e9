"""The floors hold: what each top-level package may import, read from every module's source (function-level imports
included). ``streams`` is the wire and knows nothing above it; ``views`` are pure folds over ``streams``; the
``processors`` are the faust app, the sink and the store over ``views``; the runtime reaches the processors' store
only from its applications (CLI, API, benches, studies), never from the training path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package -> top-level modules it must never import
FORBIDDEN = {
    "streams": {"torch", "faust", "views", "processors", "esper_runtime"},
    "views": {"torch", "faust", "processors", "esper_runtime"},
    "processors": {"torch", "esper_runtime"},
    "esper_runtime": {"faust"},
}
# the runtime's applications may use the processors' store and app; nothing else in the runtime may
APPS = ("esper_runtime/cli/", "esper_runtime/api/", "esper_runtime/bench/", "esper_runtime/study/")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


MODULES = sorted(p for pkg in FORBIDDEN for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_above_its_floor(path):
    rel = path.relative_to(ROOT).as_posix()
    package = rel.split("/")[0]
    forbidden = set(FORBIDDEN[package])
    if package == "esper_runtime" and not rel.startswith(APPS):
        forbidden.add("processors")
    assert not (_imports(path) & forbidden), f"{rel} imports {sorted(_imports(path) & forbidden)}"


def test_every_package_is_checked():
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} <= set(FORBIDDEN) | {"esper", "schemas", "tests"}


def test_every_package_says_what_it_exports():
    missing = [str(p.relative_to(ROOT)) for pkg in FORBIDDEN for p in (ROOT / pkg).rglob("__init__.py")
               if "__all__" not in p.read_text()]
    assert not missing, missing


# cross-cutting suites, named for what they try rather than for one package
CROSS_CUTTING = {"hostile"}


def test_unit_tests_mirror_the_source_tree():
    """``tests/unit/<path>`` holds the tests of the package at ``<path>``; a folder that names no package is a typo
    or a package that moved, and its tests would be looked for in the wrong place."""
    unit = ROOT / "tests" / "unit"
    strays = [str(d.relative_to(unit)) for d in unit.rglob("*") if d.is_dir() and d.name != "__pycache__"
              and d.relative_to(unit).parts[0] not in CROSS_CUTTING
              and not (ROOT / d.relative_to(unit) / "__init__.py").is_file()]
    assert strays == []
