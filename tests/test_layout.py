"""The house's rules (docs/architecture.md), checked on the source so they stay true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = [path for package in ("pilot", "activators", "stagers") for path in (ROOT / package).rglob("*.py")]
WINGS = ("executor", "staging", "central", "glidein", "scheduler", "demo", "bps", "monitor")


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [
        (f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1)  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the pilot modules ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("pilot")}


def test_no_function_over_80_lines() -> None:
    longest = sorted((n, where) for path in CODE for where, n in _functions(path))[-1]
    assert longest[0] <= 80, longest


def test_pilot_top_level_keeps_at_most_16_modules_and_the_wings() -> None:
    top = sorted(p.name for p in (ROOT / "pilot").glob("*.py"))
    assert len(top) <= 16, top
    for wing in WINGS:
        assert (ROOT / "pilot" / wing / "__init__.py").exists(), wing


@pytest.mark.parametrize("wing", WINGS)
def test_no_wing_imports_the_command_line(wing: str) -> None:
    for path in (ROOT / "pilot" / wing).rglob("*.py"):
        assert "pilot.cli" not in _imported_modules(path), path


def test_shared_modules_import_no_wing() -> None:
    """The shared top level sits below the wings; only ``runner`` (the recipe) and ``cli`` use them."""
    for path in (ROOT / "pilot").glob("*.py"):
        if path.stem in ("cli", "runner"):
            continue
        wings = {name.split(".")[1] for name in _imported_modules(path) if name.count(".") >= 2}
        assert not wings & set(WINGS), (path.name, wings & set(WINGS))


def test_only_the_staging_area_knows_its_names() -> None:
    for path in CODE:
        if path.name == "area.py":
            continue
        text = path.read_text()
        for name in ('"manifest.json"', '"ingested.json"', '"pilot-staging/"', "attempt-{"):
            assert name not in text, (path.relative_to(ROOT), name)
