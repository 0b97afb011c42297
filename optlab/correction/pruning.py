"""Pruning masks for a linear layer ``y = x @ w`` (``w`` is (d_in, d_out)): magnitude, Wanda-style, and N:M.

A mask is a bool array shaped like ``w``, True where the weight is kept. Counts are exact: per output column
exactly ``round(sparsity · d_in)`` weights are pruned (``scope="per_output"``), or ``round(sparsity · w.size)`` over
the whole matrix (``scope="global"``). Ties are broken deterministically: among equal scores the lower index (row-major
for the global scope) is pruned first. N:M semi-structured masks (:func:`nm_mask`, e.g. 2:4 as sparse tensor cores
run it) keep exactly N of every group of M consecutive input weights of each output, by the same scores.

References:
  Han et al., Learning both Weights and Connections for Efficient Neural Networks, 2015 (magnitude pruning).
  Sun et al., A Simple and Effective Pruning Approach for Large Language Models (Wanda), 2023,
  https://arxiv.org/abs/2306.11695 (score ``|w_ji| · ||x_j||``, compared per output).
  Mishra et al., Accelerating Sparse Deep Neural Networks, 2021, https://arxiv.org/abs/2104.08378 (2:4 sparsity).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SCOPES = ("per_output", "global")
METHODS = ("magnitude", "magnitude_global", "wanda")
PATTERNS = ("2:4", "4:8")  # the semi-structured patterns offered by name; any "N:M" with 0 <= N <= M is accepted


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` -> ``(N, M)``: keep N of every M consecutive input weights; ValueError for anything else.

    Example::

        parse_pattern("2:4")  # (2, 4)
    """
    parts = pattern.split(":") if isinstance(pattern, str) else ()
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"pattern must be a string 'N:M' such as {' or '.join(PATTERNS)}, got {pattern!r}")
    keep, group = (int(p) for p in parts)
    if group < 1 or keep > group:
        raise ValueError(f"pattern 'N:M' needs M >= 1 and 0 <= N <= M, got {pattern!r}")
    return keep, group


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


def group_mask(score, keep: int, group: int) -> jax.Array:
    """Keep-mask that keeps the ``keep`` highest scores of every ``group`` consecutive input rows of each column.

    Groups are rows ``[g·M, (g+1)·M)`` of each output column (the d_in axis, along which N:M hardware packs a
    row of ``W = wᵀ``); exactly ``M - N`` entries of each group are pruned, ties pruning the lower index first.

    Args:
      score: (d_in, d_out) importance, d_in a multiple of ``group``; lower is pruned first.
      keep, group: N and M (static ints, 0 <= N <= M).

    Returns:
      bool (d_in, d_out) mask, True = kept.

    Example::

        group_mask(jnp.abs(w), 2, 4)  # 2:4 magnitude pruning
    """
    score = jnp.asarray(score)
    if score.ndim != 2:
        raise ValueError(f"score must be 2-D (d_in, d_out), got shape {score.shape}")
    if not (isinstance(keep, int) and isinstance(group, int) and group >= 1 and 0 <= keep <= group):
        raise ValueError(f"keep and group must be ints with 0 <= keep <= group, group >= 1; got {keep!r}, {group!r}")
    d_in, d_out = score.shape
    if d_in % group:
        raise ValueError(f"an N:M mask needs d_in divisible by M: d_in={d_in}, M={group}")
    grouped = score.reshape(d_in // group, group, d_out)
    order = jnp.argsort(grouped, axis=1, stable=True)  # stable: equal scores prune the lower index first
    rank = jnp.argsort(order, axis=1)
    return (rank >= group - keep).reshape(d_in, d_out)


def nm_mask(w, pattern: str = "2:4", x=None) -> jax.Array:
    """N:M semi-structured mask: per output, keep the N largest of every M consecutive input weights.

    The score is ``|w|`` (magnitude) or, when calibration inputs ``x`` (n, d_in) are given, Wanda's
    ``|w_ji| · ||x[:, j]||``. Sparsity is exactly ``1 - N/M``.

    Example::

        mask = nm_mask(w, "2:4")            # magnitude 2:4
        mask = nm_mask(w, "4:8", x=x)       # Wanda 4:8
    """
    keep, group = parse_pattern(pattern)
    w = jnp.asarray(w)
    score = jnp.abs(w)
    if x is not None:
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != w.shape[0]:
            raise ValueError(f"x must have shape (n, d_in) with d_in = w.shape[0] = {w.shape[0]}, got {x.shape}")
        score = score * jnp.sqrt(jnp.sum(x * x, axis=0))[:, None]
    return group_mask(score, keep, group)


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
    ``sparsity`` is a share in [0, 1) (unstructured) or an ``"N:M"`` string (semi-structured, :func:`nm_mask`;
    with ``"magnitude"`` or ``"wanda"`` scores).

    Example::

        w_pruned, mask = prune(w, x, sparsity=0.5, method="wanda")
        w_24, mask_24 = prune(w, sparsity="2:4")
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "wanda" and x is None:
        raise ValueError("method='wanda' needs the calibration inputs x (n, d_in)")
    if isinstance(sparsity, str):
        if method == "magnitude_global":
            raise ValueError("an N:M sparsity is per group of each output; use method 'magnitude' or 'wanda'")
        mask = nm_mask(w, sparsity, x if method == "wanda" else None)
    elif method == "wanda":
        mask = wanda_mask(w, x, sparsity)
    else:
        mask = magnitude_mask(w, sparsity, scope="global" if method == "magnitude_global" else "per_output")
    return jnp.where(mask, w, 0.0).astype(jnp.asarray(w).dtype), mask
