"""Every ``>>>`` example in optlab's docstrings runs and prints what it shows (the doctests are part of the suite)."""

import doctest
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab

PACKAGE = Path(optlab.__file__).resolve().parent
# Modules whose docstrings hold examples; found from the source so collection imports nothing extra.
MODULES = sorted(".".join(("optlab", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
                 for path in PACKAGE.rglob("*.py") if ">>>" in path.read_text())
# Names the examples use without importing them, as in a notebook.
NAMESPACE = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "optlab": optlab}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_modules_with_examples_are_found():
    assert "optlab.problems.base" in MODULES and len(MODULES) >= 5


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    examples = [t for t in doctest.DocTestFinder().find(module, name, extraglobs=NAMESPACE) if t.examples]
    if not examples:
        pytest.skip(f"{name}'s examples are all commented out (they need files or long runs)")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in examples:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
