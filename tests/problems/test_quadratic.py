"""Quadratic problems: loss, gradient and metrics against their closed forms; grouping-friendly structure."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.problems import quadratic_1d, quadratic_2d

finite = st.floats(-50, 50, allow_nan=False, width=32)


@settings(deadline=None, max_examples=20)
@given(a=finite, x=finite)
def test_1d_loss_and_gradient_match_closed_form(a, x):
    problem = quadratic_1d(a, x0=x)
    params = problem.init(None)
    value, grad = jax.value_and_grad(problem.loss)(params, None)
    np.testing.assert_allclose(value, (x - a) ** 2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad["x"]["w"], 2 * (x - a), rtol=1e-5, atol=1e-4)


@settings(deadline=None, max_examples=20)
@given(a=finite, b=finite, c=st.floats(0.01, 1000), x=finite, y=finite)
def test_2d_loss_and_gradient_match_closed_form(a, b, c, x, y):
    problem = quadratic_2d(a, b, c, start=(x, y))
    params = problem.init(None)
    value, grad = jax.value_and_grad(problem.loss)(params, None)
    np.testing.assert_allclose(value, (x - a) ** 2 + c * (y - b) ** 2, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(grad["x"]["w"], 2 * (x - a), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad["y"]["w"], 2 * c * (y - b), rtol=1e-5, atol=1e-2)
    metrics = problem.metrics(params)
    np.testing.assert_allclose(metrics["grad_x"], abs(2 * (x - a)), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(metrics["grad_y"], abs(2 * c * (y - b)), rtol=1e-5, atol=1e-2)


def test_optimum_has_zero_loss_and_zero_distance():
    problem = quadratic_2d(1.0, 2.0, 100.0)
    assert float(problem.value(problem.optimum)) == 0.0
    assert float(problem.distance_to_optimum(problem.optimum)) == 0.0
    np.testing.assert_allclose(problem.distance_to_optimum(problem.init(None)), np.hypot(9.0, 8.0), rtol=1e-6)


def test_coordinates_are_separate_layers():
    params = quadratic_2d().init(None)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert paths == ["['x']['w']", "['y']['w']"]


def test_curvature_can_be_a_vmapped_axis():
    def loss_at(c):
        problem = quadratic_2d(1.0, 2.0, c, start=(10.0, 10.0))
        return problem.value(problem.init(None))

    values = jax.jit(jax.vmap(loss_at))(jnp.array([1.0, 10.0, 100.0]))
    chex.assert_trees_all_close(values, jnp.array([81.0 + 64.0, 81.0 + 640.0, 81.0 + 6400.0]))


def test_float64_start_under_x64():
    with jax.enable_x64(True):
        assert quadratic_1d().init(None)["x"]["w"].dtype == jnp.float64


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan")])
def test_bad_curvature_raises(c):
    with pytest.raises(ValueError, match="c must be"):
        quadratic_2d(c=c)


def test_bad_start_raises():
    with pytest.raises(ValueError, match="start"):
        quadratic_2d(start=(1.0, 2.0, 3.0))
