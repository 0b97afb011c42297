"""Pruning masks for a linear layer ``y = x @ w`` (``w`` is (d_in, d_out)): magnitude and Wanda-style.

A mask is a bool array shaped like ``w``, True where the weight is kept. Counts are exact: per output column
exactly ``round(sparsity · d_in)`` weights are pruned (``scope="per_output"``), or ``round(sparsity · w.size)`` over
the whole matrix (``scope="global"``). Ties are broken deterministically: among equal scores the lower index (row-major
for the global scope) is pruned first.

References:
  Han et al., Learning both Weights and Connections for Efficient Neural Networks, 2015 (magnitude pruning).
  Sun et al., A Simple and Effective Pruning Approach for Large Language Models (Wanda), 2023,
  https://arxiv.org/abs/2306.11695 (score ``|w_ji| · ||x_j||``, compared per output).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SCOPES = ("per_output", "global")
METHODS = ("magnitude", "magnitude_global", "wanda")


def _check(w, sparsity, scope):
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (d_in, d_out), got shape {w.shape}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not isinstance(sparsity, jax.core.Tracer):
        value = np.asarray(sparsity)
        if value.ndim or not 0 <= value < 1:
            raise ValueError(f"sparsity must be a scalar in [0, 1), got {sparsity!r}")
    return w


def lowest_mask(score, sparsity, *, scope: str = "per_output") -> jax.Array:
    """Keep-mask that prunes the lowest-scoring entries, exactly ``round(sparsity · count)`` of them.

    Args:
      score: (d_in, d_out) importance; lower is pruned first.
      sparsity: share pruned, in [0, 1) (may be traced).
      scope: ``"per_output"`` (each column separately) or ``"global"``.

    Returns:
      bool (d_in, d_out) mask, True = kept.

    Example::

        lowest_mask(jnp.abs(w), 0.5)  # magnitude pruning per output column
    """
    score = _check(score, sparsity, scope)
    flat = score.reshape(-1, 1) if scope == "global" else score
    n_pruned = jnp.round(sparsity * flat.shape[0]).astype(jnp.int32)
    order = jnp.argsort(flat, axis=0, stable=True)  # stable: ties keep index order, lowest index pruned first
    rank = jnp.argsort(order, axis=0)  # inverse permutation: rank of each entry within its column
    return (rank >= n_pruned).reshape(score.shape)


def magnitude_mask(w, sparsity, *, scope: str = "per_output") -> jax.Array:
    """Magnitude pruning: keep the largest ``|w|`` (per output column or globally).

    .. math:: \\text{keep}_{ji} \\iff |w_{ji}| \\text{ is not among the } \\operatorname{round}(s \\cdot d_{in})
        \\text{ smallest of column } i

    Example::

        mask = magnitude_mask(w, 0.5); w_pruned = w * mask
    """
    return lowest_mask(jnp.abs(jnp.asarray(w)), sparsity, scope=scope)


def wanda_mask(w, x, sparsity, *, scope: str = "per_output") -> jax.Array:
    """Wanda pruning: score ``|w_ji| · ||x[:, j]||``, the weight times the norm of its input feature.

    Args:
      w: (d_in, d_out) weights.
      x: (n, d_in) calibration inputs.
      sparsity: share pruned, in [0, 1).
      scope: ``"per_output"`` (Wanda's default: compare the inputs of each output) or ``"global"``.

    Example::

        mask = wanda_mask(w, x, 0.5)
    """
    w, x = jnp.asarray(w), jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"x must have shape (n, d_in) with d_in = w.shape[0] = {w.shape[0]}, got x {x.shape} "
                         f"and w {w.shape}")
    feature_norm = jnp.sqrt(jnp.sum(x * x, axis=0))
    return lowest_mask(jnp.abs(w) * feature_norm[:, None], sparsity, scope=scope)


def prune(w, x=None, *, sparsity=0.5, method: str = "magnitude") -> tuple[jax.Array, jax.Array]:
    """Prune ``w`` with one of :data:`METHODS`; returns ``(w_pruned, mask)``.

    ``"magnitude"`` is per output column, ``"magnitude_global"`` over the matrix, ``"wanda"`` needs ``x``.

    Example::

        w_pruned, mask = prune(w, x, sparsity=0.5, method="wanda")
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "wanda":
        if x is None:
            raise ValueError("method='wanda' needs the calibration inputs x (n, d_in)")
        mask = wanda_mask(w, x, sparsity)
    else:
        mask = magnitude_mask(w, sparsity, scope="global" if method == "magnitude_global" else "per_output")
    return jnp.where(mask, w, 0.0).astype(jnp.asarray(w).dtype), mask
