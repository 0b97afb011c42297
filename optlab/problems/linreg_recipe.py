"""Lab note 002's problem: noise-free ``y = 2x + 1``, ``x ~ N(0, 1)``, one linear unit, MSE, as plain arrays.

.. math::

    L(w, b) = \\frac{1}{N}\\sum_i (w x_i + b - 2 x_i - 1)^2 = \\Delta w^2\\, m_2 + 2\\,\\Delta w\\,\\Delta b\\, m_1
    + \\Delta b^2, \\qquad \\Delta w = w - 2,\\; \\Delta b = b - 1,\\; m_k = \\tfrac1N \\sum_i x_i^k

Without label noise the loss at any ``(w, b)`` is that closed form in the two sample moments, so every measured
loss can be checked against it, and so can every ``(loss, W error, b error)`` row of the note.
Params are a dict ``{"w": (), "b": ()}``: the model is one ``nn.Linear(1, 1)``, and a dict keeps the two
scalars traceable without a module template.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

TRUE_W, TRUE_B = 2.0, 1.0
XAVIER_LIMIT = math.sqrt(3.0)  # Xavier-uniform bound sqrt(6 / (fan_in + fan_out)) for a 1 -> 1 layer
INIT_BIAS = 0.5  # the bias the note's enhanced script sets
MOMENT_Z = 3.0  # sample moments of N draws of N(0, 1) lie within this many standard errors (99.7 %)


def make_data(key: jax.Array, n: int, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """``n`` examples ``{"x", "y"}`` with ``x ~ N(0, 1)`` and ``y = 2x + 1`` exactly.

    Example: ``make_data(jax.random.key(0), 8)["y"].shape == (8,)``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    x = jax.random.normal(key, (n,), dtype)
    return {"x": x, "y": TRUE_W * x + TRUE_B}


def init_params(key: jax.Array, xavier: Any = False) -> dict[str, jax.Array]:
    """The start ``{"w", "b"}``: PyTorch's default ``nn.Linear(1, 1)`` init, or the note's enhanced one.

    Default (``xavier`` false): ``w, b ~ U(-1, 1)`` (bound ``1/sqrt(fan_in)``). Enhanced (``xavier`` true, may be a
    traced 0/1 so a grid vmaps both): ``w ~ U(-sqrt 3, sqrt 3)`` (Xavier-uniform), ``b = 0.5``. Both draws come
    from the same uniforms, so flipping ``xavier`` changes the start and nothing else.

    Example: ``init_params(jax.random.key(0), xavier=True)["b"] == 0.5``.
    """
    u = jax.random.uniform(key, (2,), jnp.float32, -1.0, 1.0)
    on = jnp.asarray(xavier, jnp.float32) > 0.5
    return {"w": jnp.where(on, XAVIER_LIMIT * u[0], u[0]), "b": jnp.where(on, INIT_BIAS, u[1])}


def loss(params: dict, batch: dict) -> jax.Array:
    """Mean squared error of ``w x + b`` on ``batch``. Example: ``loss({"w": 2., "b": 1.}, data) == 0``."""
    return jnp.mean(jnp.square(params["w"] * batch["x"] + params["b"] - batch["y"]))


def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The sample moments ``(m1, m2) = (mean x, mean x²)`` that fix the loss surface (in float32 at least)."""
    x = jnp.asarray(x, jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))
    return jnp.mean(x), jnp.mean(jnp.square(x))


def closed_form_loss(w: Any, b: Any, m1: Any, m2: Any) -> jax.Array:
    """``Δw² m2 + 2 Δw Δb m1 + Δb²``: the exact loss at ``(w, b)`` for noise-free data with moments ``m1, m2``.

    Example: ``closed_form_loss(1.498, 0.855, 0.0, 1.0)`` ≈ 0.273 (the note's baseline row: 0.2715).
    """
    dw, db = jnp.asarray(w) - TRUE_W, jnp.asarray(b) - TRUE_B
    return dw * dw * m2 + 2 * dw * db * m1 + db * db


def loss_band(w_err: float, b_err: float, n: int, z: float = MOMENT_Z) -> tuple[float, float]:
    """The range of losses possible at absolute errors ``|Δw| = w_err, |Δb| = b_err`` for any sign and any sample.

    The moments of ``n`` standard-normal draws lie (with probability ≈ 99.7 % at ``z = 3``) in
    ``|m1| <= z/sqrt(n)`` and ``|m2 - 1| <= z sqrt(2/n)``; the signs of the errors are unknown, so the cross term
    takes either sign. Returns ``(lo, hi)``; a claimed loss outside it cannot go with those errors.

    Example: ``loss_band(0.502, 0.145, 1000)`` ≈ ``(0.22, 0.33)``.
    """
    m1, dm2 = z / math.sqrt(n), z * math.sqrt(2.0 / n)
    cross = 2 * w_err * b_err * m1
    lo = w_err ** 2 * (1 - dm2) + b_err ** 2 - cross
    hi = w_err ** 2 * (1 + dm2) + b_err ** 2 + cross
    return max(lo, 0.0), hi


__all__ = ["INIT_BIAS", "MOMENT_Z", "TRUE_B", "TRUE_W", "XAVIER_LIMIT", "closed_form_loss", "init_params", "loss",
           "loss_band", "make_data", "moments"]
