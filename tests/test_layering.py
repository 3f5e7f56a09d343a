"""The package's layering rule (docs/ARCHITECTURE.md): imports flow one way, and modules stay short.

    entry points (cli/, tools/, benchmarks/) -> study/ -> hf/ -> tasks/ -> train/ -> checkpoint/ -> parallel/, data/ ->
    model/ -> ops/ -> utils/ -> config.py

A module may import its own package and any package of a lower layer, never one of its own layer or above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megabert"
LAYER = {"config": 0, "utils": 1, "ops": 2, "model": 3, "data": 4, "parallel": 4, "checkpoint": 5, "train": 6,
         "tasks": 7, "hf": 8, "study": 9, "cli": 10}
LONG_FILES_ALLOWED = {
    "config.py",  # the config schema
    "ops/flash_attention_triton.py",  # a kernel file
    "hf/modeling_megabert.py",  # copied whole into every Hugging Face export: it must stand alone
}
MAX_LINES = 400


def _package_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts else ""


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "megabert" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_never_run_back_up_a_layer(path):
    own = _package_of(path)
    assert own in LAYER, f"{own}/ has no layer in this test's table (and docs/ARCHITECTURE.md)"
    for imported in _imported_packages(path) - {own}:
        assert imported in LAYER, f"{path.name} imports megabert.{imported}, which has no layer"
        assert LAYER[imported] < LAYER[own], (f"megabert/{path.relative_to(PACKAGE)} imports megabert.{imported}: "
                                             f"layer {LAYER[imported]} is not below {own}/'s layer {LAYER[own]}")


def test_model_code_never_touches_distributed_state():
    for path in (PACKAGE / "model").rglob("*.py"):
        assert "torch.distributed" not in path.read_text(), path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_short(path):
    if str(path.relative_to(PACKAGE)) in LONG_FILES_ALLOWED:
        return
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it by what it does"
