"""Separable quadratics: the closed-form cases of the Newton-root (Polyak) step.

.. math::

    f(x) = (x - a)^2, \\qquad f(x, y) = (x - a)^2 + c\\,(y - b)^2

Each coordinate is its own layer with one leaf, ``{"x": {"w": x}, "y": {"w": y}}``, so ``scaling="per_leaf"``
and ``scaling="per_layer"`` both give ``x`` and ``y`` separate groups, while ``"global"`` shares one step.
The problems are data-free (``data=None``). ``init(None)`` returns the exact start point (the lab note's, e.g.
``x0 = 10``); ``init(key)`` draws the start around it, ``start + init_scale · N(0, I)``, so seeds of a grid are
different runs (``init_scale=0`` makes every key give the exact start). ``a``, ``b``, ``c`` and the start point
may be traced arrays, so a grid can vmap over them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optlab.problems.base import Problem, check_positive, float_array


def _coordinate(params: Any, name: str) -> jax.Array:
    return params[name]["w"]


def _check_init_scale(init_scale: Any) -> None:
    if isinstance(init_scale, jax.core.Tracer):
        return
    value = np.asarray(init_scale)
    if value.ndim or not np.isfinite(value) or value < 0:
        raise ValueError(f"init_scale must be a finite scalar >= 0 (0: every key gives the exact start), "
                         f"got {init_scale!r}")


def _start(key, start: tuple, init_scale: Any) -> list[jax.Array]:
    """The exact start when ``key`` is None, else the start plus ``init_scale`` times one standard normal draw."""
    exact = [float_array(value) for value in start]
    if key is None:
        return exact
    noise = jax.random.normal(key, (len(start),), jnp.result_type(float))
    return [value + init_scale * noise[i] for i, value in enumerate(exact)]


def quadratic_1d(a: Any = 3.0, *, x0: Any = 10.0, init_scale: Any = 1.0) -> Problem:
    """Scalar parabola :math:`f(x) = (x - a)^2` started at ``x0``.

    The Newton-root step has ``step_scale = f / g^2 = 1/4`` here, so ``x_n = a + (x0 - a) / 2^n``.

    Args:
        a: the minimiser.
        x0: the start point: ``init(None)`` returns exactly ``x0``.
        init_scale: standard deviation of ``init(key)``'s start around ``x0`` (>= 0).

    Returns:
        A :class:`Problem` with params ``{"x": {"w": x}}`` and metrics ``x`` and ``x_error = |x - a|``.

    Example:
        >>> problem = quadratic_1d(3.0, x0=10.0)
        >>> float(problem.value(problem.init(None)))
        49.0
        >>> bool(problem.init(jax.random.key(1))["x"]["w"] != problem.init(jax.random.key(2))["x"]["w"])
        True
    """
    _check_init_scale(init_scale)

    def init(key):
        (x,) = _start(key, (x0,), init_scale)
        return {"x": {"w": x}}

    def loss(params, batch):
        del batch  # data-free
        return jnp.square(_coordinate(params, "x") - a)

    def metrics(params):
        x = _coordinate(params, "x")
        return {"x": x, "x_error": jnp.abs(x - a)}

    return Problem("quadratic_1d", init, loss, None, metrics, {"x": {"w": float_array(a)}})


def quadratic_2d(a: Any = 1.0, b: Any = 2.0, c: Any = 1.0, *, start: Any = (10.0, 10.0),
                 init_scale: Any = 1.0) -> Problem:
    """Two-coordinate quadratic :math:`f(x, y) = (x - a)^2 + c (y - b)^2` started at ``start = (x0, y0)``.

    ``c = 1`` is the symmetric case (one shared step contracts both coordinates by 1/2); ``c >> 1`` makes the
    y-gradient dominate ``||g||^2``, so a shared step starves x.

    Args:
        a: x of the minimiser.
        b: y of the minimiser.
        c: curvature ratio of y to x (> 0); may be a traced array (a grid axis).
        start: the start point ``(x0, y0)``: ``init(None)`` returns exactly this.
        init_scale: standard deviation of ``init(key)``'s start around ``start``, per coordinate (>= 0).

    Returns:
        A :class:`Problem` with params ``{"x": {"w": x}, "y": {"w": y}}`` and metrics ``x``, ``y``,
        ``x_error``, ``y_error`` and the gradient magnitudes ``grad_x = |2 (x - a)|``, ``grad_y = |2 c (y - b)|``.

    Example:
        >>> problem = quadratic_2d(1.0, 2.0, c=100.0, start=(10.0, 10.0))
        >>> float(problem.value(problem.init(None)))
        6481.0
    """
    check_positive("c", c)
    if len(start) != 2:
        raise ValueError(f"start must be a pair (x0, y0), got {start!r}")
    _check_init_scale(init_scale)

    def init(key):
        x, y = _start(key, tuple(start), init_scale)
        return {"x": {"w": x}, "y": {"w": y}}

    def loss(params, batch):
        del batch  # data-free
        x, y = _coordinate(params, "x"), _coordinate(params, "y")
        return jnp.square(x - a) + c * jnp.square(y - b)

    def metrics(params):
        x, y = _coordinate(params, "x"), _coordinate(params, "y")
        return {
            "x": x,
            "y": y,
            "x_error": jnp.abs(x - a),
            "y_error": jnp.abs(y - b),
            "grad_x": jnp.abs(2 * (x - a)),
            "grad_y": jnp.abs(2 * c * (y - b)),
        }

    optimum = {"x": {"w": float_array(a)}, "y": {"w": float_array(b)}}
    return Problem("quadratic_2d", init, loss, None, metrics, optimum)
