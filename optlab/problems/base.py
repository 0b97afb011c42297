"""The :class:`Problem` record every optlab problem returns.

A problem is data plus pure functions: ``init(key) -> params``, ``loss(params, batch) -> scalar`` and
``metrics(params) -> dict of scalars``. It holds no state, so a grid may build one problem per cell inside a
``jax.vmap`` (problem hyperparameters such as a curvature ``c`` may then be traced arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


def no_metrics(params: PyTree) -> dict[str, jax.Array]:
    """Default ``metrics``: no extra diagnostics."""
    del params  # the default problem reports nothing beyond the loss
    return {}


class Problem(NamedTuple):
    """A small pure optimisation problem.

    Example:
        >>> from optlab.problems import quadratic_1d
        >>> problem = quadratic_1d(a=3.0, x0=10.0)
        >>> params = problem.init(None)  # None: the exact start; a key draws one around it
        >>> float(problem.value(params))
        49.0
    """

    name: str  # short identifier used in tables and file names
    init: Callable[[jax.Array | None], PyTree]  # PRNG key -> initial params; None -> the default start
    loss: Callable[[PyTree, Any], jax.Array]  # (params, batch) -> scalar loss; batch is None when data is None
    data: PyTree | None = None  # full data set (arrays with a leading example axis), or None for data-free problems
    metrics: Callable[[PyTree], dict[str, jax.Array]] = no_metrics  # params -> dict of scalar diagnostics
    optimum: PyTree | None = None  # a minimiser with the structure of params, or None when unknown
    f_min: Any = 0.0  # the minimum loss value (0 for realisable problems); the Newton-root step's target

    def value(self, params: PyTree) -> jax.Array:
        """Loss on the whole data set (``loss(params, data)``)."""
        return self.loss(params, self.data)

    def distance_to_optimum(self, params: PyTree) -> jax.Array:
        """Euclidean distance ``||params - optimum||`` over all leaves; NaN when the optimum is unknown."""
        if self.optimum is None:
            return jnp.asarray(jnp.nan)
        return optax.tree.norm(optax.tree.sub(params, self.optimum))


def check_positive(name: str, value: Any) -> None:
    """Raise ValueError when a concrete ``value`` is not > 0; traced values (grid axes) are not checked."""
    if isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value)
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def float_array(value: Any) -> jax.Array:
    """``value`` as an array of the default float dtype (float64 under ``jax.enable_x64(True)``)."""
    return jnp.asarray(value, dtype=jnp.result_type(float))
