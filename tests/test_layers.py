"""The house rules of docs/architecture.md, checked on every test run (CI also runs `make lint`)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER_FOLDERS = ["cli", "experiments", "server", "plugins", "forensics", "foundation"]
MAX_LINES = 600
MAX_LOCAL_IMPORTS = 30


def _modules() -> list[Path]:
    found = []
    for folder in LAYER_FOLDERS:
        found += [p for p in (ROOT / folder / "tracemark").rglob("*.py") if "migrations" not in p.parts]
    return found


def _local_tracemark_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tracemark"):
                found.append((node.lineno, node.module))
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names if a.name.startswith("tracemark")]
    return found


def test_every_layer_has_its_folder_and_no_generic_top_level_package():
    for folder in LAYER_FOLDERS:
        assert (ROOT / folder / "tracemark").is_dir(), folder
        assert not (ROOT / folder / "tracemark" / "__init__.py").exists(), "tracemark must stay a namespace"
    assert {p.name for p in _modules()}  # the walk found the code


def test_layers_contract_holds():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (make install adds it)")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_function_local_imports_only_defer_heavy_dependencies():
    local = {p: _local_tracemark_imports(p) for p in _modules()}
    total = sum(len(v) for v in local.values())
    assert total < MAX_LOCAL_IMPORTS, {str(p.relative_to(ROOT)): v for p, v in local.items() if v}
    for path, found in local.items():
        lines = path.read_text().splitlines()
        for lineno, module in found:
            statement = " ".join(lines[lineno - 1 : lineno + 3])
            assert "deferred" in statement, f"{path.relative_to(ROOT)}:{lineno} imports {module} locally"


def test_no_module_over_the_size_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long
