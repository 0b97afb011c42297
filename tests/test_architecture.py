"""Data flows one way (DESIGN.md): nothing below studies/ imports studies/, report, plot or cli, and the maths
layers never talk to the user: no print, no debug print or host callback inside correction/, problems/,
optimizers/ or diagnostics.py (the caller prints, e.g. ``format_trace`` for the greedy correction)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "optlab"
MATHS = sorted(p for d in ("optimizers", "correction", "problems") for p in (PACKAGE / d).glob("*.py"))
MATHS.append(PACKAGE / "diagnostics.py")
# The engine may write checkpoints and report progress (io_callback, stderr lines), so only the import rule binds it.
LOWER = sorted([*MATHS, *(PACKAGE / "engine").glob("*.py")])
UPPER = ("optlab.studies", "optlab.report", "optlab.plot", "optlab.cli")
# Calls that reach the user or the host from inside the maths, by their last dotted name.
TALKING = {"print", "pprint", "callback", "io_callback", "pure_callback", "breakpoint", "input"}
TALKING_ATTRIBUTES = {("sys", "stdout"), ("sys", "stderr"), ("logging", "info"), ("logging", "warning")}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _dotted(node: ast.AST) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]


def _talking_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            # jax.debug.print / jax.debug.callback / io_callback / print(...); debug.print counts, str.print does not
            if name and (name[-1] in TALKING - {"print"} or name == ["print"] or name[-2:] == ["debug", "print"]):
                found.append(f"{'.'.join(name)}() at line {node.lineno}")
        elif isinstance(node, ast.Attribute) and tuple(_dotted(node)[-2:]) in TALKING_ATTRIBUTES:
            found.append(f"{'.'.join(_dotted(node))} at line {node.lineno}")
    return found


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text())


# Upward imports allowed inside one function body, never at module level: GridResult.heatmap draws through plot.
CALL_TIME_IMPORTS = {("engine/grid_result.py", "heatmap"): {"optlab", "optlab.plot"}}


def _call_time_imports(tree: ast.AST, path: Path) -> set[str]:
    allowed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            key = (str(path.relative_to(PACKAGE)), node.name)
            if key in CALL_TIME_IMPORTS:
                allowed |= _imports(node) & CALL_TIME_IMPORTS[key]
    return allowed


@pytest.mark.parametrize("path", LOWER, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_do_not_import_upper_ones(path):
    tree = _tree(path)
    bad = sorted(n for n in _imports(tree) - _call_time_imports(tree, path) if n.startswith(UPPER))
    assert not bad, f"{path.name} imports {bad}"


def test_importing_the_engine_loads_no_upper_layer():
    import subprocess
    import sys

    code = ("import sys, optlab.engine, optlab.diagnostics, optlab.correction, optlab.problems\n"
            f"print(sorted(m for m in sys.modules if m.startswith({UPPER!r}) or m == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("path", MATHS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_maths_layers_never_print_or_call_back(path):
    bad = _talking_calls(_tree(path))
    assert not bad, f"{path.name} talks to the user from the maths: {bad}"


@pytest.mark.parametrize("source", [
    "print('x')", "jax.debug.print('{}', x)", "jax.debug.callback(f, x)", "io_callback(f, None, x)",
    "jax.pure_callback(f, s, x)", "sys.stdout.write('x')",
])
def test_the_rule_catches_each_kind_of_talking_call(source):
    assert _talking_calls(ast.parse(source))


def test_the_rule_ignores_docstrings_and_comments():
    assert not _talking_calls(ast.parse('def f():\n    """print(format_trace(r))"""\n    # print(x)\n    return 1\n'))
