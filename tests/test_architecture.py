"""The package's shape, which `lint-imports` cannot see: module size and why an import waits.

- No module over MAX_LINES (migrations aside): a module that grows past it holds more than one job.
- An import inside a function keeps a heavy module off a light path (DAG parsing, `faceattr --help`,
  the plugin module every Airflow process loads); a comment on its line or the line above says so.
  Every other import sits at the top of its module.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "faceattr"
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _deferred_imports(source: str) -> list[ast.stmt]:
    """Import statements inside a function body (at any depth)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def _has_reason(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's line, or a comment line just above it (through a run of imports)."""
    if "#" in lines[node.lineno - 1]:
        return True
    row = node.lineno - 2
    while row >= 0 and lines[row].strip().startswith(("import ", "from ")):
        if "#" in lines[row]:
            return True
        row -= 1
    return row >= 0 and lines[row].strip().startswith("#")


def test_no_module_is_over_the_size_limit():
    big = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in _modules()
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines: split them by job: {big}"


def test_every_import_inside_a_function_says_what_it_keeps_off_which_path():
    unexplained = []
    for path in _modules():
        source = path.read_text()
        lines = source.splitlines()
        unexplained += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
                        for node in _deferred_imports(source) if not _has_reason(lines, node)]
    assert not unexplained, "move these imports to the top, or comment why they wait:\n" + "\n".join(unexplained)


def test_the_checker_sees_an_unexplained_import():
    source = "import os\n\ndef f():\n    import json\n    return json\n\ndef g():\n    # keeps torch off the DAG parse path\n    import torch\n"
    lines = source.splitlines()
    verdicts = [_has_reason(lines, node) for node in _deferred_imports(source)]
    assert verdicts == [False, True]


@pytest.mark.parametrize("module", ["faceattr.orchestration.tasks", "faceattr.orchestration.params",
                                    "faceattr.ui.plugin", "faceattr.cli"])
def test_light_paths_stay_light(module):
    """What DAG parsing, the plugin module and `faceattr --help` import leaves torch and pandas out."""
    code = (f"import sys, {module}\n"
            "print(' '.join(m for m in ('torch', 'torchvision', 'pandas', 'sklearn') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing {module} loads {loaded}"
