"""optlab.problems.SMALL: the five note-001 problems by name, keyed inits, exact note starts with init(None)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.problems import SMALL, quadratic_1d, quadratic_2d

NAMES = ["quadratic_1d", "quadratic_2d_symmetric", "quadratic_2d_asymmetric", "linear_regression", "square_mlp"]


def test_lists_the_five_problems_by_name():
    assert list(SMALL) == NAMES and len(SMALL) == 5
    assert [SMALL[name].name for name in SMALL] == NAMES
    with pytest.raises(KeyError, match="choose one of"):
        SMALL["rosenbrock"]


@pytest.mark.parametrize("name", NAMES)
def test_sixteen_seeds_are_sixteen_different_starts(name):
    problem = SMALL[name]
    keys = jax.random.split(jax.random.key(0), 16)
    starts = jax.jit(jax.vmap(problem.init))(keys)
    flat = np.concatenate([np.reshape(leaf, (16, -1)) for leaf in jax.tree.leaves(starts)], axis=1)
    assert len({tuple(row) for row in flat}) == 16
    losses = jax.vmap(problem.value)(starts)
    assert losses.shape == (16,) and bool(jnp.all(jnp.isfinite(losses)))


def test_init_none_is_the_note_start():
    assert float(SMALL["quadratic_1d"].init(None)["x"]["w"]) == 10.0
    for name, c in (("quadratic_2d_symmetric", 1.0), ("quadratic_2d_asymmetric", 100.0)):
        problem = SMALL[name]
        start = problem.init(None)
        assert (float(start["x"]["w"]), float(start["y"]["w"])) == (10.0, 10.0)
        assert float(problem.value(start)) == 81.0 + c * 64.0


def test_keyed_start_is_drawn_around_the_exact_start_with_init_scale():
    keys = jax.random.split(jax.random.key(3), 256)
    x = jax.vmap(quadratic_1d(x0=10.0, init_scale=0.5).init)(keys)["x"]["w"]
    assert abs(float(jnp.mean(x)) - 10.0) < 0.15 and abs(float(jnp.std(x)) - 0.5) < 0.1
    pinned = quadratic_2d(init_scale=0.0).init(jax.random.key(1))
    assert (float(pinned["x"]["w"]), float(pinned["y"]["w"])) == (10.0, 10.0)


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_bad_init_scale_raises(scale):
    with pytest.raises(ValueError, match="init_scale"):
        quadratic_1d(init_scale=scale)
    with pytest.raises(ValueError, match="init_scale"):
        quadratic_2d(init_scale=scale)


def test_story_one_a_grid_over_problems_learning_rates_and_seeds():
    # USERS.md story 1 in miniature: problems (static) × learning rates × 16 seeds, one run_grid call.
    import optax

    import optlab

    def cell(hp, key):
        problem = SMALL[hp["problem"]]
        result = optlab.fit(problem.loss, problem.init(key), optax.sgd(hp["lr"]), steps=5, data=problem.data)
        return {"final_loss": problem.value(result.params)}

    grid = optlab.run_grid(cell, {"problem": ["quadratic_1d", "quadratic_2d_asymmetric"], "lr": [0.1, 0.01]},
                           seeds=16, static=["problem"], progress=False)
    rows = grid.to_rows()
    assert len(rows) == 2 * 2 * 16
    for problem in ("quadratic_1d", "quadratic_2d_asymmetric"):
        finals = [r["final_loss"] for r in rows if r["problem"] == problem and r["lr"] == 0.01]
        assert len(set(finals)) == 16  # every seed started somewhere else
