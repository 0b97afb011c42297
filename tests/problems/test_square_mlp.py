"""Square-activation MLP: forward pass and gradient against closed forms / a NumPy reference."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.problems import SquareMLP, square_mlp


def _numpy_forward(model, x):
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(model.layers):
        h = h @ np.asarray(layer.weight, np.float64).T + np.asarray(layer.bias, np.float64)
        if i < len(model.layers) - 1:
            h = h**2
    return h


def test_one_unit_network_loss_and_gradient_match_closed_form():
    # y = w2 (w1 x + b1)^2 + b2, L = mean (y - sin x)^2: gradients by hand.
    problem = square_mlp(widths=(1, 1, 1), n_points=9, x_max=1.5)
    model = problem.init(jax.random.key(4))
    w1, b1 = float(model.layers[0].weight[0, 0]), float(model.layers[0].bias[0])
    w2, b2 = float(model.layers[1].weight[0, 0]), float(model.layers[1].bias[0])
    x = np.linspace(-1.5, 1.5, 9)
    z = w1 * x + b1
    residual = w2 * z**2 + b2 - np.sin(x)
    value, grad = jax.value_and_grad(problem.loss)(model, problem.data)
    np.testing.assert_allclose(value, np.mean(residual**2), rtol=1e-5)
    np.testing.assert_allclose(grad.layers[1].weight[0, 0], np.mean(2 * residual * z**2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad.layers[1].bias[0], np.mean(2 * residual), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad.layers[0].weight[0, 0], np.mean(2 * residual * w2 * 2 * z * x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad.layers[0].bias[0], np.mean(2 * residual * w2 * 2 * z), rtol=1e-4, atol=1e-6)


def test_forward_matches_numpy_and_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        problem = square_mlp(widths=(1, 3, 2, 1), n_points=7)
        model = problem.init(jax.random.key(0))
        x = np.asarray(problem.data["x"])
        np.testing.assert_allclose(jax.jit(jax.vmap(model))(problem.data["x"]), _numpy_forward(model, x), rtol=1e-12)
        flat, unravel = jax.flatten_util.ravel_pytree(model)
        steps = 1e-6 * jnp.eye(flat.size)

        def value(v):
            return problem.loss(unravel(v), problem.data)

        @jax.jit
        def grad_and_central_differences(v):
            return jax.grad(value)(v), (jax.vmap(value)(v + steps) - jax.vmap(value)(v - steps)) / 2e-6

        grad, numeric = grad_and_central_differences(flat)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_teacher_target_is_realisable():
    problem = square_mlp(target="teacher", n_points=16)
    assert float(problem.value(problem.optimum)) == 0.0
    assert float(problem.value(problem.init(jax.random.key(0)))) > 0.0


def test_layers_and_shapes():
    model = SquareMLP((1, 8, 8, 1), key=jax.random.key(0))
    assert [layer.weight.shape for layer in model.layers] == [(8, 1), (8, 8), (1, 8)]
    assert model(jnp.zeros(1)).shape == (1,)
    problem = square_mlp(n_points=5)
    assert problem.data["x"].shape == problem.data["y"].shape == (5, 1)
    np.testing.assert_allclose(problem.data["y"], np.sin(problem.data["x"]), rtol=1e-6)
    assert set(problem.metrics(problem.init(jax.random.key(0)))) == {"max_abs_error"}


def test_init_is_vmappable_over_keys():
    problem = square_mlp(n_points=8)
    keys = jax.random.split(jax.random.key(0), 3)
    losses = jax.jit(jax.vmap(lambda k: problem.value(problem.init(k))))(keys)
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))
    assert len(set(np.round(np.asarray(losses), 6))) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"widths": (2, 8, 1)}, "widths"), ({"widths": (1,)}, "widths"), ({"n_points": 1}, "n_points"),
    ({"x_max": 0.0}, "x_max"), ({"target": "cos"}, "target"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        square_mlp(**kwargs)


def test_init_matches_equinox_default_ranges():
    # Layer k's weight and bias are U(±1/sqrt(fan_in)): the first layer (fan_in 1) spreads wider than the rest.
    model = square_mlp(widths=(1, 8, 8, 1), n_points=4).init(jax.random.key(0))
    for layer in model.layers:
        limit = layer.in_features**-0.5
        for leaf in (layer.weight, layer.bias):
            assert float(jnp.abs(leaf).max()) <= limit
    assert float(jnp.abs(model.layers[0].weight).max()) > 8**-0.5
