"""optlab.ablation: the 2^k factorial of named switches and the exact attributions read off it."""

import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optlab
from optlab import ablation, plot
from optlab.ablation import Ablation, IncompleteAblation, Switch, factorial
from optlab.engine import interrupt
from optlab.engine.grid_result import GridResult
from optlab.studies.base import Table

EFFECTS = {"a": 0.5, "b": -1.25, "c": 2.0}


def additive_cell(config, key):
    """An additive metric: each switch adds its own effect, whatever the others do (plus seed noise)."""
    total = sum(effect * config[name] for name, effect in EFFECTS.items())
    return {"metric": total + 0.1 * jax.random.normal(key), "curve": jnp.arange(3.0)}


def synthetic(values: np.ndarray) -> Ablation:
    """An Ablation whose coalition-by-seed table is ``values`` (2^k, n_seeds), built without running a cell."""
    n_coalitions, n_seeds = values.shape
    k = int(math.log2(n_coalitions))
    switches = tuple(Switch(f"s{i}", 0.0, 1.0) for i in range(k))
    axes = {s.name: [0, 1] for s in switches} | {"seed": list(range(n_seeds))}
    index = np.indices([2] * k + [n_seeds]).reshape(k + 1, -1).T  # grid order: first switch slowest, seed fastest
    masks = index[:, :k] @ (1 << np.arange(k))
    grid = GridResult(axes, index, {"m": values[masks, index[:, k]]})
    return Ablation(grid, switches)


def brute_force_shapley(v: np.ndarray, k: int) -> np.ndarray:
    """Shapley values as the mean marginal effect over all k! orderings (the definition, not the weighted sum)."""
    phi = np.zeros(k)
    for order in itertools.permutations(range(k)):
        mask = 0
        for i in order:
            phi[i] += v[mask | 1 << i] - v[mask]
            mask |= 1 << i
    return phi / math.factorial(k)


@pytest.fixture(scope="module")
def additive():
    return factorial(additive_cell, [Switch(n, 0.0, 1.0) for n in EFFECTS], seeds=6, progress=False)


def test_grid_has_one_01_axis_per_switch_and_seeds(additive):
    assert list(additive.grid.axes) == ["a", "b", "c", "seed"]
    assert all(additive.grid.axes[n] == [0, 1] for n in EFFECTS)
    assert additive.names == list(EFFECTS) and additive.complete and len(additive.grid) == 8 * 6


def test_shapley_of_an_additive_metric_is_each_switch_effect(additive):
    rows = additive.shapley("metric", n_boot=200)
    assert [r["switch"] for r in rows] == list(EFFECTS)
    np.testing.assert_allclose([r["shapley"] for r in rows], list(EFFECTS.values()), atol=1e-5)
    for r in rows:  # the seed noise cancels in each paired difference, so the interval is tight around the effect
        assert r["lo"] <= r["shapley"] <= r["hi"] and r["hi"] - r["lo"] < 1e-4
    np.testing.assert_allclose(sum(r["share"] for r in rows), 1.0, rtol=1e-6)
    interactions = additive.interactions("metric")
    np.testing.assert_allclose(np.diag(interactions), list(EFFECTS.values()), atol=1e-5)
    np.testing.assert_allclose(interactions[~np.eye(3, dtype=bool)], 0.0, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 4), n_seeds=st.integers(1, 4), data=st.data())
def test_shapley_is_exact_on_any_coalition_table(k, n_seeds, data):
    values = np.asarray(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=2**k * n_seeds, max_size=2**k * n_seeds)))
    res = synthetic(values.reshape(2**k, n_seeds))
    v = values.reshape(2**k, n_seeds).mean(axis=1)
    phi = np.asarray([r["shapley"] for r in res.shapley("m", n_boot=20)])
    np.testing.assert_allclose(phi.sum(), v[-1] - v[0], atol=1e-6 * (1 + np.abs(values).max()))  # efficiency
    np.testing.assert_allclose(phi, brute_force_shapley(v, k), atol=1e-6 * (1 + np.abs(values).max()))
    np.testing.assert_allclose(np.diag(res.interactions("m")), phi, atol=1e-9 * (1 + np.abs(values).max()))
    path = res.cumulative("m", order=list(reversed(res.names)))
    np.testing.assert_allclose(sum(r["gain"] for r in path), v[-1] - v[0], atol=1e-6 * (1 + np.abs(values).max()))


def test_interaction_of_two_switches_is_the_second_difference():
    res = synthetic(np.array([[0.0], [1.0], [2.0], [6.0]]))  # v(∅)=0, v(a)=1, v(b)=2, v(ab)=6
    np.testing.assert_allclose(res.interactions("m"), [[2.5, 3.0], [3.0, 3.5]])
    np.testing.assert_allclose([r["loss"] for r in res.leave_one_out("m")], [4.0, 5.0])
    np.testing.assert_allclose([r["value"] for r in res.leave_one_out("m")], [2.0, 1.0])
    spread = {r["switch"]: r for r in res.order_spread("m", n_random=3)}
    assert (spread["s0"]["given"], spread["s0"]["reverse"]) == (1.0, 4.0)
    assert (spread["s0"]["any_min"], spread["s0"]["any_max"]) == (1.0, 4.0)
    assert spread["s0"]["min"] >= spread["s0"]["any_min"] and spread["s0"]["max"] <= spread["s0"]["any_max"]


def test_bootstrap_resamples_seeds_with_one_draw_for_every_coalition():
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    res = synthetic(np.stack([base, base + 1.0, base, base + 1.0]))  # s0 adds exactly 1 on every seed
    row = res.shapley("m", n_boot=100, key=3)[0]
    np.testing.assert_allclose([row["lo"], row["shapley"], row["hi"]], 1.0, atol=1e-12)  # paired: no seed noise
    assert res.shapley("m", n_boot=100, key=3) == res.shapley("m", n_boot=100, key=jax.random.key(3))
    assert np.isnan(res.shapley("m", n_boot=0)[0]["lo"])


def test_factorial_cell_equals_a_direct_call_with_that_config(additive):
    for on in [(), ("b",), ("a", "c"), ("a", "b", "c")]:
        config = additive.config(on)
        assert config == {n: 1.0 if n in on else 0.0 for n in EFFECTS}
        direct = [additive_cell({k: jnp.asarray(v) for k, v in config.items()}, jax.random.key(s))["metric"]
                  for s in range(6)]
        np.testing.assert_allclose(additive.values("metric", on=on), np.asarray(direct), rtol=1e-6, atol=1e-6)


def test_each_switch_changes_exactly_the_config_it_names():
    seen = []

    def spy(config, key):
        seen.append(dict(config))  # traced once per program; values inspected below through the outputs
        return {name: jnp.asarray(value, jnp.float32) for name, value in config.items() if name != "label"}

    switches = [Switch("lr", 1e-3, 1e-2), Switch("warmup", 5, 10), Switch("shuffle", True, False, static=True)]
    res = factorial(spy, switches, seeds=2, base={"lr": 7.0, "epochs": 30, "label": "x"}, progress=False)
    assert all(set(c) == {"lr", "warmup", "shuffle", "epochs", "label"} for c in seen)
    for on in [(), ("lr",), ("warmup",), ("shuffle",), ("lr", "warmup", "shuffle")]:
        expected = res.config(on)
        assert expected["epochs"] == 30 and expected["label"] == "x"  # base entries no switch names stay as given
        for s in switches:
            np.testing.assert_allclose(res.values(s.name, on=on), float(s.changed if s.name in on else s.baseline),
                                       rtol=1e-6)
        np.testing.assert_array_equal(res.values("epochs", on=on), 30.0)
    assert res.grid.static == ("shuffle",) and res.grid.info["programs"] == 2


def test_static_and_dynamic_switches_mix():
    def cell(config, key):
        x = jnp.ones(config["width"]) * config["scale"]  # width is a shape: static; scale is traced
        return {"m": jnp.sum(x) + jax.random.normal(key) * 0.0}

    res = factorial(cell, [Switch("width", 2, 4, static=True), Switch("scale", 1.0, 3.0)], seeds=3, progress=False)
    np.testing.assert_allclose([res.values("m", on)[0] for on in [(), ("width",), ("scale",), ("width", "scale")]],
                               [2.0, 4.0, 6.0, 12.0])
    phi = {r["switch"]: r["shapley"] for r in res.shapley("m", n_boot=10)}
    np.testing.assert_allclose([phi["width"], phi["scale"]], [(2.0 + 6.0) / 2, (4.0 + 8.0) / 2])


def test_factorial_of_a_fit_matches_a_direct_fit():
    """One small training run per recipe: the grid cell is the same number as calling ``optlab.fit`` alone."""

    def cell(config, key):
        start = jax.random.normal(key, (2,))
        result = optlab.fit(lambda p, _: jnp.sum((p - 1.0) ** 2), start, optax.sgd(config["lr"]),
                            steps=config["steps"])
        return {"final_loss": result.trace["loss"][-1]}

    switches = [Switch("lr", 0.01, 0.1), Switch("steps", 5, 10, static=True)]
    res = factorial(cell, switches, seeds=2, progress=False)
    direct = cell({"lr": jnp.asarray(0.1), "steps": 10}, jax.random.key(1))["final_loss"]
    np.testing.assert_allclose(res.values("final_loss", on=["lr", "steps"])[1], direct, rtol=1e-5)
    phi = {r["switch"]: r["shapley"] for r in res.shapley("final_loss", n_boot=10)}
    assert phi["lr"] < 0 and phi["steps"] < 0  # both help a loss: negative effects (with − without)


@pytest.mark.parametrize("make, match", [
    (lambda: Switch("lr", "high", 1.0), "'lr' is dynamic"),
    (lambda: Switch("lr", 1.0, [1, 2]), "'lr' is dynamic"),
    (lambda: Switch("", 0, 1), "non-empty string"),
    (lambda: Switch("seed", 0, 1), "'seed' is reserved"),
    (lambda: Switch("lr", 0, 1, static="yes"), "static must be"),
    (lambda: factorial(additive_cell, []), "empty list"),
    (lambda: factorial(additive_cell, [Switch("a", 0, 1), Switch("a", 1, 2)]), "'a' appears 2 times"),
    (lambda: factorial(additive_cell, ["a"]), "must all be ablation.Switch"),
    (lambda: factorial(additive_cell, [Switch(f"s{i}", 0, 1) for i in range(21)]), "at most 20"),
])
def test_bad_switches_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_queries_raise_before_any_work(additive):
    with pytest.raises(ValueError, match="metric must be a scalar output"):
        additive.shapley("curve")
    with pytest.raises(ValueError, match="on must name switches"):
        additive.values("metric", on=["nope"])
    with pytest.raises(ValueError, match="order must list distinct"):
        additive.cumulative("metric", order=["a", "a"])
    with pytest.raises(ValueError, match="n_boot"):
        additive.shapley("metric", n_boot=-1)
    with pytest.raises(ValueError, match="ci must be"):
        additive.shapley("metric", ci=95)
    with pytest.raises(TypeError, match="base must be a mapping"):
        factorial(additive_cell, [Switch("a", 0, 1)], base=[1])


def test_an_interrupted_factorial_gives_no_attribution():
    calls = {"n": 0}

    def cell(config, key):
        calls["n"] += 1
        if calls["n"] > 1:  # the second static program is interrupted as a Ctrl-C would
            raise KeyboardInterrupt
        return {"m": config["a"] * 1.0}

    with interrupt.interrupt_scope(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = factorial(cell, [Switch("a", 0.0, 1.0), Switch("b", 0, 1, static=True)], seeds=2, progress=False)
    assert not res.complete and 0 < len(res.grid) < 8
    for attribution in (lambda: res.shapley("m"), lambda: res.interactions("m"), lambda: res.cumulative("m"),
                        lambda: res.leave_one_out("m"), lambda: res.values("m"), lambda: res.tables("m")):
        with pytest.raises(IncompleteAblation, match="incomplete"):
            attribution()


def test_paths_and_tables_are_ready_for_the_report(additive):
    paths = additive.paths("metric", n_random=2, key=1)
    assert list(paths) == ["given", "reverse", "random 1", "random 2"]
    assert [r["switch"] for r in paths["reverse"]] == ["c", "b", "a"]
    ends = {round(rows[-1]["value"], 6) for rows in paths.values()}
    assert len(ends) == 1  # every order ends at the full recipe
    tables = additive.tables("metric", n_boot=20, n_random=2)
    assert [type(t) for t in tables] == [Table] * 4
    assert "2^3 = 8 recipes × 6 seeds" in tables[0].title
    assert all(len(row) == len(t.headers) for t in tables for row in t.rows)
    assert [row[0] for row in tables[0].rows] == list(EFFECTS)


def test_figures(additive):
    from matplotlib.figure import Figure

    figures = [plot.shapley_bars(additive.shapley("metric", n_boot=20), title="metric"),
               plot.interaction_heatmap(additive.interactions("metric"), additive.names, title="pairs"),
               plot.interaction_heatmap(np.array([[1.0, 2.0], [2.0, np.nan]]), ["x", "y"]),
               plot.cumulative_paths(additive.paths("metric", n_random=1), title="paths")]
    assert all(isinstance(f, Figure) for f in figures)
    bars = [p for p in figures[0].axes[0].patches]
    np.testing.assert_allclose(sorted(b.get_width() for b in bars), sorted(EFFECTS.values()), atol=1e-5)
    labels = [t.get_text() for t in figures[3].axes[0].get_legend().get_texts()]
    assert labels == ["given", "reverse", "random 1"]
    with pytest.raises(ValueError, match="rows must be"):
        plot.shapley_bars([])
    with pytest.raises(ValueError, match="matrix must be"):
        plot.interaction_heatmap(np.zeros((2, 3)), ["x", "y"])


def test_public_name():
    assert optlab.ablation is ablation and "ablation" in optlab.__all__
