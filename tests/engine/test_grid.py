"""run_grid: cells equal separate calls, one compilation per static value, chunking, NaN cells, table methods."""

import csv
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab import GridResult, run_grid


def descend(hparams, key):
    """Gradient descent on a random quadratic: a small, key-dependent, lr-dependent computation with a trace."""
    target = jax.random.normal(key, (3,))

    def step(x, _):
        loss = jnp.sum((x - target) ** 2)
        return x - hparams["lr"] * 2 * (x - target), loss

    _, losses = jax.lax.scan(step, jnp.zeros(3), None, length=8)
    return {"final_loss": losses[-1], "loss": losses, "stats": {"first": losses[0]}}


def table(hparams, key):
    """Deterministic outputs with known values: value = 10·a + b (+ seed), NaN where a == 2 and seed == 1."""
    del key
    value = 10.0 * hparams["a"] + hparams["b"]
    return {"value": value, "vector": jnp.full(2, value)}


@pytest.fixture(scope="module")
def small_grid():
    def fn(hparams, key):
        seed_noise = jax.random.uniform(key)
        value = 10.0 * hparams["a"] + hparams["b"] + 100.0 * seed_noise
        bad = (hparams["a"] == 2) & (seed_noise == jax.random.uniform(jax.random.key(1)))
        return {"value": jnp.where(bad, jnp.nan, value), "noise": seed_noise, "vector": jnp.full(2, value)}

    return run_grid(fn, {"a": [1, 2, 3], "b": [0.5, 0.25]}, seeds=2, progress=False)


def test_cells_equal_separate_calls_with_seed_keys():
    lrs = [0.05, 0.2, 0.4]
    res = run_grid(descend, {"lr": lrs}, seeds=4, progress=False)
    assert len(res) == 12 and res.complete
    assert res.axes == {"lr": lrs, "seed": [0, 1, 2, 3]}
    assert res.cells[5] == {"lr": 0.2, "seed": 1}
    assert res.outputs["loss"].shape == (12, 8) and res.outputs["stats/first"].shape == (12,)
    single = jax.jit(descend)
    for i, cell in enumerate(res.cells):
        alone = single({"lr": jnp.asarray(cell["lr"])}, jax.random.key(cell["seed"]))
        chex.assert_trees_all_close(
            {"final_loss": res.outputs["final_loss"][i], "loss": res.outputs["loss"][i]},
            {"final_loss": alone["final_loss"], "loss": alone["loss"]},
            rtol=1e-6,
        )


def test_explicit_seed_list():
    res = run_grid(descend, {"lr": [0.1]}, seeds=[7, 3], progress=False)
    alone = descend({"lr": jnp.asarray(0.1)}, jax.random.key(3))
    np.testing.assert_allclose(res.outputs["final_loss"][res.where(seed=3)], [alone["final_loss"]], rtol=1e-6)


def test_static_axis_compiles_once_per_value_and_chunks_reuse_it():
    traces = []

    def fn(hparams, key):
        traces.append(hparams["width"])
        assert isinstance(hparams["width"], int)  # static values arrive as Python values
        x = jax.random.normal(key, (hparams["width"],)) * hparams["scale"]
        return {"norm": jnp.linalg.norm(x), "x": x}

    res = run_grid(fn, {"width": [2, 3, 5], "scale": [1.0, 2.0, 3.0]}, seeds=3, static=["width"], chunk_size=4)
    assert traces == [2, 3, 5]
    again = run_grid(fn, {"width": [2, 3, 5], "scale": [1.0, 2.0, 3.0]}, seeds=3, static=["width"], chunk_size=4)
    assert traces == [2, 3, 5]  # the same fn and static values reuse the compiled programs
    chex.assert_trees_all_close(again.outputs["norm"], res.outputs["norm"])
    assert res.info["programs"] == 3 and res.info["n_chunks"] == 9 and res.info["chunk_size"] == 4
    assert res.static == ("width",)
    assert res.outputs["x"].dtype == object and res.outputs["x"][res.where(width=5)][0].shape == (5,)
    i = res.cells.index({"width": 3, "scale": 2.0, "seed": 1})
    np.testing.assert_allclose(res.outputs["x"][i], 2.0 * jax.random.normal(jax.random.key(1), (3,)), rtol=1e-6)


def test_chunked_equals_unchunked_and_padding_is_dropped():
    axes = {"lr": [0.05, 0.1, 0.2, 0.4]}
    whole = run_grid(descend, axes, seeds=3, progress=False)
    chunked = run_grid(descend, axes, seeds=3, chunk_size=5, progress=False)
    assert len(chunked) == 12 and chunked.info["padded_cells"] == 3 and chunked.info["n_chunks"] == 3
    np.testing.assert_array_equal(chunked.index, whole.index)
    chex.assert_trees_all_close(chunked.outputs, whole.outputs, rtol=1e-6)
    single_device = run_grid(descend, axes, seeds=3, chunk_size=5, mesh="auto", progress=False)
    chex.assert_trees_all_close(single_device.outputs, whole.outputs, rtol=1e-6)


def test_nan_cell_leaves_the_others_intact(small_grid):
    value = small_grid.outputs["value"]
    bad = small_grid.where(a=2, seed=1)
    assert bad.sum() == 2 and np.isnan(value[bad]).all() and np.isfinite(value[~bad]).all()
    rows = small_grid.to_rows()
    assert len(rows) == 12 and sum(math.isnan(r["value"]) for r in rows) == 2
    assert "vector" not in rows[0] and set(rows[0]) == {"a", "b", "seed", "value", "noise"}


def test_aggregate_reports_stats_and_nonfinite(small_grid):
    noise = small_grid.outputs["noise"]
    stats = small_grid.aggregate(over="seed")
    assert [(r["a"], r["b"]) for r in stats] == [(1, 0.5), (1, 0.25), (2, 0.5), (2, 0.25), (3, 0.5), (3, 0.25)]
    first = stats[0]
    values = 10.0 + 0.5 + 100.0 * noise[:2]
    assert first["n_cells"] == 2 and first["value_nonfinite"] == 0
    np.testing.assert_allclose(
        [first["value_mean"], first["value_std"], first["value_min"], first["value_max"]],
        [values.mean(), values.std(), values.min(), values.max()],
        rtol=1e-6,
    )
    with_nan = stats[2]
    assert with_nan["value_nonfinite"] == 1 and with_nan["value_std"] == 0.0
    by_a = small_grid.aggregate(over=["b", "seed"])
    assert [r["a"] for r in by_a] == [1, 2, 3] and by_a[1]["n_cells"] == 4 and by_a[1]["value_nonfinite"] == 2


def test_pivot_best_and_where(small_grid):
    rows, cols, matrix = small_grid.pivot("a", "b", "noise")
    assert rows == [1, 2, 3] and cols == [0.5, 0.25] and matrix.shape == (3, 2)
    noise = small_grid.outputs["noise"]
    np.testing.assert_allclose(matrix[0, 1], noise[small_grid.where(a=1, b=0.25)].mean(), rtol=1e-6)
    _, _, values = small_grid.pivot("a", "b", "value")
    assert np.isnan(values[1]).all() and np.isfinite(values[[0, 2]]).all()
    _, _, values = small_grid.pivot("a", "b", "value", agg="nanmax")
    assert np.isfinite(values).all()
    _, _, counts = small_grid.pivot("seed", "a", "value", agg=len)
    np.testing.assert_array_equal(counts, np.full((2, 3), 2))
    best = small_grid.best("value")
    finite = np.nanargmin(small_grid.outputs["value"])
    assert best == small_grid.to_rows()[finite]
    assert small_grid.best("value", mode="max")["a"] == 3
    assert small_grid.where(a=[1, 3]).sum() == 8
    with pytest.raises(ValueError, match="not on the axis"):
        small_grid.where(a=4)
    with pytest.raises(ValueError, match="axes"):
        small_grid.where(c=1)
    with pytest.raises(ValueError, match="scalar output"):
        small_grid.best("vector")
    with pytest.raises(ValueError, match="agg"):
        small_grid.pivot("a", "b", "value", agg="mode")


def test_to_csv_and_to_json_round_trip(small_grid, tmp_path):
    small_grid.to_csv(tmp_path / "grid.csv")
    small_grid.to_json(tmp_path / "grid.json")
    with open(tmp_path / "grid.csv") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["a", "b", "seed", "noise", "value"] and len(read) == 12
    expected = small_grid.to_rows()
    for got, want in zip(read, expected):
        assert (int(got["a"]), float(got["b"]), int(got["seed"])) == (want["a"], want["b"], want["seed"])
        np.testing.assert_allclose(float(got["value"]), want["value"], rtol=1e-6)  # "nan" reads back as nan
    loaded = json.loads((tmp_path / "grid.json").read_text())
    assert len(loaded) == 12 and sum(math.isnan(r["value"]) for r in loaded) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.csv", "grid.json"]  # no temp files left


def test_interrupted_grid_returns_finished_chunks():
    def fn(hparams, key):
        if hparams["mode"] == "stop":
            raise KeyboardInterrupt
        return {"value": hparams["x"] + jax.random.uniform(key)}

    with pytest.warns(RuntimeWarning, match="interrupted"):
        res = run_grid(
            fn, {"mode": ["ok", "stop"], "x": [1.0, 2.0]}, seeds=2, static=["mode"], chunk_size=2, progress=False
        )
    assert not res.complete and len(res) == 4 and res.info["n_chunks"] == 2
    assert all(c["mode"] == "ok" for c in res.cells) and res.outputs["value"].shape == (4,)
    assert res.aggregate()[0]["n_cells"] == 2


def test_progress_without_a_terminal_is_one_plain_line(capsys):
    run_grid(table, {"a": [1.0], "b": [2.0]}, seeds=3, progress=True, label="exp 1")
    err = capsys.readouterr().err
    assert err.startswith("exp 1: 1 a × 1 b × 3 seed = 3 cells, ") and err.count("\n") == 1 and "\r" not in err
    run_grid(table, {"a": [1.0], "b": [2.0]}, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"axes": [("lr", [0.1])]}, TypeError, "mapping"),
        ({"axes": {"lr": []}}, ValueError, "axis 'lr' is empty"),
        ({"axes": {"lr": "0.1"}}, TypeError, "axis 'lr' must be a list"),
        ({"axes": {"seed": [1]}}, ValueError, "reserved"),
        ({"axes": {"opt": ["adam", "sgd"]}}, TypeError, "axis 'opt' is dynamic"),
        ({"axes": {"lr": [0.1]}, "static": ["width"]}, ValueError, "static names must be axes"),
        ({"axes": {"lr": [0.1]}, "static": ["lr", "lr"]}, ValueError, "unique"),
        ({"axes": {"lr": [0.1]}, "seeds": 0}, ValueError, "seeds must be >= 1"),
        ({"axes": {"lr": [0.1]}, "seeds": [1, 1]}, ValueError, "unique"),
        ({"axes": {"lr": [0.1]}, "seeds": [-1]}, ValueError, r"\[0, 2\*\*31\)"),
        ({"axes": {"lr": [0.1]}, "chunk_size": 0}, ValueError, "chunk_size"),
        ({"axes": {"lr": [0.1]}, "mesh": "all"}, ValueError, "mesh"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        run_grid(descend, **kwargs)


def test_fn_must_return_a_dict():
    with pytest.raises(TypeError, match="dict"):
        run_grid(lambda hp, key: hp["lr"], {"lr": [0.1]}, progress=False)


def test_grid_result_from_parts():
    res = GridResult({"a": [1, 2], "seed": [0]}, np.array([[0, 0], [1, 0]]), {"v": np.array([3.0, np.inf])})
    assert res.aggregate()[0] == {"a": 1, "n_cells": 1, "v_mean": 3.0, "v_std": 0.0, "v_min": 3.0, "v_max": 3.0,
                                  "v_nonfinite": 0}  # fmt: skip
    assert res.aggregate()[1]["v_nonfinite"] == 1 and math.isnan(res.aggregate()[1]["v_mean"])


def test_grid_of_fit_equals_separate_fits():
    x = jnp.linspace(-1.0, 1.0, 32)
    data = {"x": x, "y": 2.0 * x + 1.0}

    def loss_fn(params, batch):
        return jnp.mean((params["w"] * batch["x"] + params["b"] - batch["y"]) ** 2)

    def run(hparams, key):
        init_key, fit_key = jax.random.split(key)
        params = {"w": jax.random.normal(init_key), "b": jnp.zeros(())}
        res = optlab.fit(loss_fn, params, optax.adam(hparams["lr"]), steps=40, key=fit_key, data=data, batch_size=8)
        return {"final_loss": res.trace["loss"][-1], "loss": res.trace["loss"], "w": res.params["w"]}

    try:
        res = run_grid(run, {"lr": [0.01, 0.05, 0.1]}, seeds=4, progress=False)
    except NotImplementedError:
        pytest.skip("optlab.fit is not implemented yet")
    single = jax.jit(run)
    for i, cell in enumerate(res.cells):
        alone = single({"lr": jnp.asarray(cell["lr"])}, jax.random.key(cell["seed"]))
        chex.assert_trees_all_close({k: v[i] for k, v in res.outputs.items()}, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [2**40, -(2**31) - 1])
def test_integer_axis_value_beyond_int32_raises(value):
    # Without x64 the axis array is int32: 2**40 would silently become 0.
    with pytest.raises(ValueError, match="does not fit int32"):
        run_grid(lambda hp, key: {"n": hp["n"]}, {"n": [1, value]}, progress=False)


def test_float_axis_value_beyond_float32_raises():
    with pytest.raises(ValueError, match="overflows float32"):
        run_grid(lambda hp, key: {"x": hp["x"]}, {"x": [1.0, 1e39]}, progress=False)
