"""run_grid(chunk_size="auto"): the cost model's width, and cells that do not depend on the width they ran at."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optlab
from optlab.engine import chunking

AXES = {"lr": np.linspace(0.01, 0.5, 9).tolist()}  # x 8 seeds = 72 cells, above chunking.SMALL_GRID


def _cell(hp, key):
    x = jax.random.normal(key, (8,))
    res = optlab.fit(lambda p, _: jnp.mean((p - 1.0) ** 2), x, optax.adam(hp["lr"]), steps=12)
    return {"loss": res.trace["loss"], "grad_norm": res.trace["grad_norm"], "params": res.params}


@settings(max_examples=100, deadline=None)
@given(st.floats(1.0, 1e9), st.integers(1, 5000), st.integers(2**10, 2**26))
def test_auto_width_fits_the_budget_above_the_floor(per_cell, n_cells, budget):
    width = chunking.auto_width(per_cell, n_cells, budget)
    assert 1 <= width <= min(n_cells, chunking.MAX_WIDTH)
    if n_cells <= chunking.MAX_WIDTH and n_cells * per_cell <= budget:
        assert width == n_cells
    else:
        assert width == n_cells or width & (width - 1) == 0  # a power of two
        assert width * per_cell <= budget or width == min(n_cells, chunking.MIN_WIDTH)
        assert 2 * width * per_cell > budget or width == min(n_cells, chunking.MAX_WIDTH)  # the widest that fits
    assert chunking.auto_width(per_cell * 2, n_cells, budget) <= width  # more bytes: never wider


def test_auto_chunks_by_the_cost_model_and_cells_do_not_depend_on_the_width(monkeypatch):
    calls = []
    original = chunking.bytes_per_cell
    monkeypatch.setattr(chunking, "bytes_per_cell", lambda *a: calls.append(a) or original(*a))
    monkeypatch.setattr(chunking, "cache_budget", lambda: 1)  # nothing fits: the floor width
    auto = optlab.run_grid(_cell, AXES, seeds=8, progress=False)
    assert auto.info["chunk_size"] == chunking.MIN_WIDTH and auto.info["n_chunks"] == 5
    assert auto.info["padded_cells"] == 5 * 16 - 72
    again = optlab.run_grid(_cell, AXES, seeds=8, progress=False)  # the width is kept per fn: no second analysis
    assert len(calls) == 1 and again.info["chunk_size"] == chunking.MIN_WIDTH
    whole = optlab.run_grid(_cell, AXES, seeds=8, progress=False, chunk_size=None)
    assert whole.info["chunk_size"] == 72
    # run_grid's compile option: a cell rounds the same in a program of 16 or 72 cells
    for name in whole.outputs:
        np.testing.assert_array_equal(auto.outputs[name], whole.outputs[name], err_msg=name)


def test_small_grids_run_at_once_without_a_cost_analysis(monkeypatch):
    monkeypatch.setattr(chunking, "bytes_per_cell", lambda *a: pytest.fail("analysed a small grid"))
    res = optlab.run_grid(_cell, {"lr": [0.1, 0.2]}, seeds=3, progress=False)
    assert res.info["chunk_size"] == 6 and res.info["n_chunks"] == 1


@pytest.mark.parametrize("bad", ["big", 0, -3, 2.5, True])
def test_chunk_size_is_checked(bad):
    with pytest.raises(ValueError, match="chunk_size must be 'auto', None or a positive int"):
        optlab.run_grid(_cell, {"lr": [0.1]}, chunk_size=bad, progress=False)


def test_cache_budget_reads_the_override(monkeypatch):
    chunking.cache_budget.cache_clear()
    monkeypatch.setenv("OPTLAB_CHUNK_BUDGET", "1e6")
    try:
        assert chunking.cache_budget() == 10**6
    finally:
        chunking.cache_budget.cache_clear()
    assert chunking.cache_budget() >= 2**16  # from the OS, or the default
