"""Hygiene of the tree: ruff (pyflakes, pycodestyle, import order; pyproject.toml's [tool.ruff]) is clean,
and no module of `geometry` is part of an import cycle."""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                                       capture_output=True).returncode != 0:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: pathlib.Path) -> set[str]:
    """The geometry modules a file imports, at any depth of its code (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "geometry":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("geometry."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("geometry.")}
    return found


def test_no_import_cycle_in_geometry():
    modules = {path.stem: path for path in (ROOT / "geometry").glob("*.py") if path.stem != "__init__"}
    graph = {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_takes_another_modules_private_names():
    """What two modules of geometry share is public in the lower one: no `from geometry.x import _y`,
    no `x._y` on an imported geometry module."""
    modules = {path.stem for path in (ROOT / "geometry").glob("*.py")} | {"report"}
    offences = []
    for path in list((ROOT / "geometry").glob("*.py")) + list((ROOT / "geometry" / "report").glob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geometry"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        offences.append(f"{path.name}: from {node.module} import {alias.name}")
                    if node.module == "geometry" and alias.name in modules:
                        aliases.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                offences.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not offences, offences
