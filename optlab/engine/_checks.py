"""Argument checks shared by the engine's entry points (``fit``, ``run_grid``, checkpoints, states).

Each check runs on the host before any work and raises ``TypeError`` / ``ValueError`` naming the argument and what
is allowed. Traced values (``fit`` under ``jit`` / ``vmap``) cannot be inspected, so the number checks let them pass.

Example:
  >>> _int_arg("steps", 10, 1)
  10
  >>> _is_traced(1.0, {"a": 2})
  False
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import numpy as np


def _is_traced(*trees: Any) -> bool:
    """Whether any leaf of ``trees`` is a tracer (its value is not known on the host)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _int_arg(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, refusing bools, non-integers and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return operator.index(value)


def _nonnegative(name: str, value: Any, *, strict: bool) -> None:
    """Refuses a concrete ``value`` that is not a finite number >= 0 (> 0 with ``strict``); None and tracers pass."""
    if value is None or _is_traced(value):
        return
    number = float(np.asarray(value))
    if not (number > 0 if strict else number >= 0) or not np.isfinite(number):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {value!r}")
