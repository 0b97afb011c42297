"""Helpers shared by test files (import with ``from helpers import ...``; tests/ is on the path via conftest.py).

One copy of what several test files used to define for themselves: an optimizer scan-runner, a linear MSE loss and
the small random layers of the correction tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def scan_run(opt, loss_fn, params, steps: int, *, value_fn: bool = False):
    """``steps`` optimizer steps in one ``lax.scan``: returns (loss before each step, params after each, state).

    The update gets ``value=`` (the loss, for Newton-root steps) and, with ``value_fn=True``, ``value_fn=loss_fn``
    (for steps that probe the loss, e.g. Hutchinson preconditioners).
    """
    extra = {"value_fn": loss_fn} if value_fn else {}

    def body(carry, _):
        p, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = opt.update(grads, state, p, value=loss, **extra)
        p = optax.apply_updates(p, updates)
        return (p, state), (loss, p)

    (_, state), (losses, trajectory) = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return losses, trajectory, state


def mse(params, batch):
    """Mean squared error of the linear model ``x @ w + b`` on ``batch = {"x": (n, d), "y": (n, k)}``."""
    return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def scaled_layer(seed: int = 0, n: int = 40, d_in: int = 12, d_out: int = 7):
    """NumPy ``(x, w, w_pruned)``: inputs with uneven feature scales, half of ``|w|`` (below the median) pruned."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in)) * rng.uniform(0.3, 3.0, size=d_in)
    w = rng.normal(size=(d_in, d_out))
    w_pruned = np.where(np.abs(w) > np.median(np.abs(w)), w, 0.0)
    return x, w, w_pruned


def correlated_layer(seed: int = 0, n: int = 120, d_in: int = 24, d_out: int = 10):
    """NumPy ``(x, w)``: correlated, heavy-tailed inputs (Student-t noise), where reconstructions differ."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in)) @ rng.normal(size=(d_in, d_in)) * 0.3 + rng.standard_t(4, size=(n, d_in))
    w = rng.normal(size=(d_in, d_out))
    return x, w
