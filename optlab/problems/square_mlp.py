"""A tiny MLP with the square activation ``σ(z) = z²``: a smooth, non-convex 1-D regression.

.. math::

    h_0 = x, \\quad h_{k} = (W_k h_{k-1} + b_k)^{\\odot 2}, \\quad \\hat y = W_K h_{K-1} + b_K, \\qquad
    L = \\frac{1}{N} \\sum_i (\\hat y(x_i) - t(x_i))^2

The squares make gradient magnitudes differ strongly between layers (the chain rule multiplies by 2z per layer),
which is the regime where one shared Newton-root step is expected to starve some layers and overshoot others.
Params are a :class:`SquareMLP` (equinox ``Linear`` layers); ``scaling="per_layer"`` groups each layer's weight and
bias, ``"per_leaf"`` separates them.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp

from optlab.problems.base import Problem

TARGETS = ("sin", "teacher")


class SquareMLP(eqx.Module):
    """MLP ``widths[0] → … → widths[-1]`` with ``z ↦ z²`` between the linear layers (none after the last).

    Example:
        >>> model = SquareMLP((1, 8, 8, 1), key=jax.random.key(0))
        >>> model(jnp.ones(1)).shape
        (1,)
    """

    layers: tuple[eqx.nn.Linear, ...]  # the linear layers, input to output

    def __init__(self, widths: Sequence[int], *, key: jax.Array, dtype=None):
        keys = jax.random.split(key, len(widths) - 1)
        self.layers = tuple(eqx.nn.Linear(n_in, n_out, key=k, dtype=dtype)
                            for n_in, n_out, k in zip(widths[:-1], widths[1:], keys))

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jnp.square(layer(x))
        return self.layers[-1](x)


def square_mlp(*, widths: Sequence[int] = (1, 8, 8, 1), n_points: int = 64, x_max: float = 2.0,
               target: str = "sin", teacher_seed: int = 1234) -> Problem:
    """Fit ``t(x)`` on ``n_points`` evenly spaced x in ``[-x_max, x_max]`` with a :class:`SquareMLP`.

    Args:
        widths: layer widths, input first; input and output must be 1.
        n_points: number of training points (> 1).
        x_max: half-width of the input interval (> 0).
        target: ``"sin"`` (t = sin x; a square-activation MLP is a polynomial, so the minimum loss is > 0 and
            unknown) or ``"teacher"`` (t = the output of a SquareMLP of the same widths drawn from
            ``teacher_seed``: realisable, minimum loss 0, and the teacher's params are a known optimum).
        teacher_seed: seed of the teacher network (only for ``target="teacher"``).

    Returns:
        A :class:`Problem` with data ``{"x": (n_points, 1), "y": (n_points, 1)}`` and metric
        ``max_abs_error`` (largest |ŷ - t| over the training points).

    Example:
        >>> problem = square_mlp(n_points=16)
        >>> params = problem.init(jax.random.key(0))
        >>> problem.value(params).shape
        ()
    """
    widths = tuple(widths)
    if len(widths) < 2 or widths[0] != 1 or widths[-1] != 1 or any(w < 1 for w in widths):
        raise ValueError(f"widths must start and end with 1 and be positive, e.g. (1, 8, 8, 1); got {widths!r}")
    if not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2, got {n_points!r}")
    if not x_max > 0:
        raise ValueError(f"x_max must be > 0, got {x_max!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")

    dtype = jnp.result_type(float)
    x = jnp.linspace(-x_max, x_max, n_points, dtype=dtype)[:, None]
    teacher = None
    if target == "teacher":
        teacher = SquareMLP(widths, key=jax.random.key(teacher_seed), dtype=dtype)
        y = jax.vmap(teacher)(x)
    else:
        y = jnp.sin(x)
    data = {"x": x, "y": y}

    # One uniform draw for all parameters, scaled per layer like equinox's default init (U(±1/sqrt(fan_in))):
    # the same distribution as SquareMLP(widths, key=...), with one PRNG call to compile instead of one per array
    # (under a vmapped grid each threefry call costs noticeable compile time).
    template = SquareMLP(widths, key=jax.random.key(0), dtype=dtype)
    flat, unravel = jax.flatten_util.ravel_pytree(template)
    limits = jnp.concatenate([jnp.full(layer.weight.size + layer.bias.size, layer.in_features**-0.5, dtype)
                              for layer in template.layers])  # ravel order: weight, bias of each layer in turn

    def init(key):
        key = jax.random.key(0) if key is None else key  # None: the default start, like the other problems
        return unravel(jax.random.uniform(key, flat.shape, dtype, -1.0, 1.0) * limits)

    def loss(model, batch):
        return jnp.mean(jnp.square(jax.vmap(model)(batch["x"]) - batch["y"]))

    def metrics(model):
        return {"max_abs_error": jnp.max(jnp.abs(jax.vmap(model)(x) - y))}

    return Problem(f"square_mlp_{target}", init, loss, data, metrics, teacher, 0.0)
