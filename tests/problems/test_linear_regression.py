"""Linear regression: generated data, loss and gradient against the closed form, least-squares optimum, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.problems import linear_regression


def test_noise_free_data_lies_on_the_line_and_optimum_is_the_truth():
    problem = linear_regression(jax.random.key(3), n=200)
    x, y = np.asarray(problem.data["x"]), np.asarray(problem.data["y"])
    assert x.shape == y.shape == (200,)
    np.testing.assert_allclose(y, 2.0 * x + 1.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(problem.optimum.weight[0, 0], 2.0, rtol=1e-5)
    np.testing.assert_allclose(problem.optimum.bias[0], 1.0, rtol=1e-5)
    assert float(problem.f_min) < 1e-10


def test_loss_and_gradient_match_closed_form():
    problem = linear_regression(jax.random.key(0), n=50, noise=0.3)
    model = problem.init(jax.random.key(1))
    w, b = float(model.weight[0, 0]), float(model.bias[0])
    x, y = np.asarray(problem.data["x"], np.float64), np.asarray(problem.data["y"], np.float64)
    residual = w * x + b - y
    value, grad = jax.value_and_grad(problem.loss)(model, problem.data)
    np.testing.assert_allclose(value, np.mean(residual**2), rtol=1e-5)
    np.testing.assert_allclose(grad.weight[0, 0], 2 * np.mean(residual * x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad.bias[0], 2 * np.mean(residual), rtol=1e-4, atol=1e-6)


def test_noisy_optimum_is_numpy_least_squares():
    problem = linear_regression(jax.random.key(2), n=300, noise=0.5, weight=-1.5, bias=0.25)
    x, y = np.asarray(problem.data["x"], np.float64), np.asarray(problem.data["y"], np.float64)
    (slope, intercept), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    np.testing.assert_allclose(problem.optimum.weight[0, 0], slope, rtol=1e-4)
    np.testing.assert_allclose(problem.optimum.bias[0], intercept, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(problem.f_min, np.mean((slope * x + intercept - y) ** 2), rtol=1e-4)
    grad = jax.grad(problem.loss)(problem.optimum, problem.data)
    assert float(jnp.abs(grad.weight).max()) < 1e-4 and float(jnp.abs(grad.bias).max()) < 1e-4


def test_metrics_are_percent_errors():
    problem = linear_regression(n=10, init="zeros")
    metrics = problem.metrics(problem.init(None))
    assert float(metrics["weight_error_pct"]) == pytest.approx(100.0)
    assert float(metrics["bias_error_pct"]) == pytest.approx(100.0)
    model = problem.init(jax.random.key(0))
    expected = 100 * abs(float(model.weight[0, 0]) - 2.0) / 2.0
    assert float(problem.metrics(model)["weight_error_pct"]) == pytest.approx(expected, rel=1e-5)


def test_weight_and_bias_are_two_leaves_of_one_layer():
    model = linear_regression(n=10).init(jax.random.key(0))
    assert [leaf.shape for leaf in jax.tree.leaves(model)] == [(1, 1), (1,)]


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must"), ({"weight": 0.0}, "non-zero"), ({"noise": -1.0}, "noise"),
    ({"x_std": 0.0}, "x_std"), ({"init": "xavier"}, "init must"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_regression(**kwargs)
