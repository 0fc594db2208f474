"""The architecture rules of docs/ARCHITECTURE.md, checked on the source tree.

* the import-linter layers contract in pyproject.toml holds (and it does catch an upward import);
* no library module is over 600 lines;
* a function over 80 lines (not counting its docstring) says why, in a comment starting ``# Long because``.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "labelfree_jax"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the package under ``root`` with this repository's contract."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(exe), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("core/errors.py", "labelfree_jax.cli"),                     # the lowest layer importing the top
    ("models/fnet.py", "labelfree_jax.inference.tiling"),        # a model importing inference
    ("training/config.py", "labelfree_jax.inference.predict"),   # two siblings that must stay independent
    ("evaluation/plots.py", "labelfree_jax.training.fit"),       # evaluation importing training
])
def test_layers_contract_catches_an_upward_import(tmp_path, module, upward):
    shutil.copytree(PACKAGE, tmp_path / "labelfree_jax", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "labelfree_jax" / module
    target.write_text(target.read_text() + f"\n\ndef _upward():\n    import {upward}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and upward in result.stdout


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_library_module_is_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in _library_modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"


def test_long_functions_say_why():
    unexplained = []
    for path in _library_modules():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(node.body) > 1:
                    n -= first.end_lineno - first.lineno + 1  # the docstring does not count
                body = lines[node.lineno - 1:node.end_lineno]
                if n > MAX_FUNCTION_LINES and not any("# Long because" in line for line in body):
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not unexplained, "functions over 80 lines without a '# Long because' comment: " + ", ".join(unexplained)


def test_every_subpackage_is_listed_for_the_wheel():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk | {"labelfree_jax.zoo_recipes"} == listed
