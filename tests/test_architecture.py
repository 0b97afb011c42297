"""Data flows one way: nothing below studies/ imports studies/, report, plot or cli (DESIGN.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "optlab"
LOWER = sorted(p for d in ("optimizers", "engine", "correction", "problems") for p in (PACKAGE / d).glob("*.py"))
LOWER.append(PACKAGE / "diagnostics.py")
UPPER = ("optlab.studies", "optlab.report", "optlab.plot", "optlab.cli")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", LOWER, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_do_not_import_upper_ones(path):
    bad = sorted(n for n in _imports(path) if n.startswith(UPPER))
    assert not bad, f"{path.name} imports {bad}"
