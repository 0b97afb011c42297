"""One-feature linear regression ``y = w x + b`` with a single equinox linear layer and MSE.

.. math::

    L(w, b) = \\frac{1}{N} \\sum_i (w x_i + b - y_i)^2, \\qquad x_i \\sim N(0, \\sigma_x^2),\\;
    y_i = W x_i + B + \\sigma\\,\\varepsilon_i

The loss is quadratic, but ``w`` and ``b`` are coupled through the data (the cross term ``2 mean(x)``), which is
why it is the first data-driven test of the Newton-root step. The params are one ``eqx.nn.Linear(1, 1)``: one
layer with two leaves, so ``scaling="per_layer"`` equals ``"global"`` and ``"per_leaf"`` splits weight and bias.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from optlab.problems.base import Problem, check_positive

_INITS = ("default", "zeros")


def _predict(model: eqx.nn.Linear, x: jax.Array) -> jax.Array:
    return jax.vmap(model)(x[:, None])[:, 0]


def _with_values(model: eqx.nn.Linear, weight: Any, bias: Any) -> eqx.nn.Linear:
    dtype = model.weight.dtype
    return eqx.tree_at(lambda m: (m.weight, m.bias), model,
                       (jnp.reshape(weight, (1, 1)).astype(dtype), jnp.reshape(bias, (1,)).astype(dtype)))


def linear_regression(key: jax.Array | None = None, *, n: int = 1000, weight: float = 2.0, bias: float = 1.0,
                      noise: Any = 0.0, x_std: float = 1.0, init: str = "default") -> Problem:
    """Linear regression on ``n`` generated points ``y = weight·x + bias + noise·ε``.

    Args:
        key: PRNG key for the data (x and ε); ``None`` means ``jax.random.key(0)``.
        n: number of examples (> 0).
        weight: true slope W (non-zero: the weight error is relative to it).
        bias: true intercept B (non-zero: the bias error is relative to it).
        noise: standard deviation of the label noise (>= 0).
        x_std: standard deviation of x (> 0).
        init: ``"default"`` (weight and bias ~ U(-1, 1), equinox's default for one input, from the key passed to
            ``problem.init``) or ``"zeros"``.

    Returns:
        A :class:`Problem` whose ``data`` is ``{"x": (n,), "y": (n,)}``, whose ``optimum`` is the least-squares
        fit of the generated data (equal to ``(W, B)`` when ``noise == 0``), whose ``f_min`` is the loss there,
        and whose metrics are ``weight``, ``bias``, ``weight_error_pct = 100 |w - W| / |W|`` and
        ``bias_error_pct = 100 |b - B| / |B|``.

    Example:
        >>> problem = linear_regression(n=100)
        >>> params = problem.init(jax.random.key(1))
        >>> sorted(problem.metrics(params))
        ['bias', 'bias_error_pct', 'weight', 'weight_error_pct']
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if weight == 0 or bias == 0:
        raise ValueError(f"weight and bias must be non-zero (errors are relative to them), got {weight!r}, {bias!r}")
    check_positive("x_std", x_std)
    if not isinstance(noise, jax.core.Tracer) and float(noise) < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")

    dtype = jnp.result_type(float)
    # One PRNG call each for the data and the init (rather than a split and one call per array): the same
    # distributions, fewer threefry instances to compile when a grid vmaps over keys.
    standard = jax.random.normal(jax.random.key(0) if key is None else key, (2, n), dtype)
    x = x_std * standard[0]
    y = weight * x + bias + noise * standard[1]
    data = {"x": x, "y": y}
    template = eqx.nn.Linear(1, 1, key=jax.random.key(0), dtype=dtype)

    def init_params(init_key):
        if init == "zeros":
            return _with_values(template, 0.0, 0.0)
        # equinox's default Linear init for fan_in = 1: weight and bias ~ U(-1, 1)
        draw = jax.random.uniform(jax.random.key(0) if init_key is None else init_key, (2,), dtype, -1.0, 1.0)
        return _with_values(template, draw[0], draw[1])

    def loss(model, batch):
        return jnp.mean(jnp.square(_predict(model, batch["x"]) - batch["y"]))

    def metrics(model):
        w, b = model.weight[0, 0], model.bias[0]
        return {
            "weight": w,
            "bias": b,
            "weight_error_pct": 100 * jnp.abs(w - weight) / abs(weight),
            "bias_error_pct": 100 * jnp.abs(b - bias) / abs(bias),
        }

    # Least squares of the generated data: slope = cov(x, y) / var(x), intercept = mean(y) - slope·mean(x).
    x_centred, y_centred = x - jnp.mean(x), y - jnp.mean(y)
    slope = jnp.sum(x_centred * y_centred) / jnp.sum(jnp.square(x_centred))
    intercept = jnp.mean(y) - slope * jnp.mean(x)
    optimum = _with_values(eqx.nn.Linear(1, 1, key=jax.random.key(0), dtype=dtype), slope, intercept)
    f_min = loss(optimum, data)
    return Problem("linear_regression", init_params, loss, data, metrics, optimum, f_min)
