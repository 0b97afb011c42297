"""Greedy fixed-magnitude correction of a pruned linear layer: one ``lax.scan`` over input positions.

The layer is ``y = x @ w`` with calibration inputs ``x`` (n, d_in) and weights ``w`` (d_in, d_out). Pruning zeroes
entries of ``w_dense``; the correction nudges the *kept* weights of one input row ``j`` at a time so that
``x @ w_c`` moves back towards ``x @ w_dense``. Pruned weights stay exactly zero.

With the residual ``R = x @ (w_c - w_dense)`` and ``P_i = R[:, i] · x[:, j]``, changing ``w_c[j, i]`` by ``δ_i``
changes ``||R||²_F`` by exactly ``ΔE_i = 2 δ_i P_i + δ_i² ||x[:, j]||²``. Every step picks the unused row with the
largest total gain ``Σ_i max(0, -ΔE_i)`` and applies the improving ``δ_i`` of that row.

Everything runs on the Gram form: ``H = xᵀx`` and ``G = xᵀR`` hold every ``P`` (``P = G[j]``) and every
``||x[:, j]||² = H[j, j]``; applying a row update ``Δ_j`` is ``G += H[:, j] Δ_jᵀ``. After the set-up a step costs
O(d_in · d_out), independent of n, so layers with huge calibration sets only need their accumulated Grams
(:func:`gram_stats` is additive over batches of rows).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optlab.diagnostics import diminishing_returns

from optlab.correction._checks import (  # noqa: F401 (MODES: old import path)
    MODES,
    _check_finite,
    _check_gram_consistency,
    _check_options,
    _check_verbose,
    _concrete,
)


class CorrectionTrace(NamedTuple):
    """One entry per scan step (length ``max_steps``); steps after the stop are no-ops recorded as such."""

    position: jax.Array  # (K,) int32 input row j changed at the step; -1 where the step changed nothing
    channels: jax.Array  # (K,) int32 number of output channels of row j that changed
    improvement: jax.Array  # (K,) error decrease of the step, -Σ_i ΔE_i / (n·d_out) over changed channels (>= 0)
    linear: jax.Array  # (K,) Σ_i 2 δ_i P_i / (n·d_out) over changed channels (<= 0: the first-order gain)
    quad: jax.Array  # (K,) Σ_i δ_i² ||x_j||² / (n·d_out) over changed channels (>= 0: the quadratic penalty)
    error: jax.Array  # (K,) ||R||²_F / (n·d_out) after the step
    applied: jax.Array  # (K,) bool, True where the step changed weights


class CorrectionResult(NamedTuple):
    """What :func:`greedy_correction` returns."""

    weights: jax.Array  # (d_in, d_out) corrected weights; zero wherever w_pruned is pruned
    trace: CorrectionTrace  # per-step record
    n_applied: jax.Array  # () int32 number of positions changed
    stopped_early: jax.Array  # () bool, True when no unused position improved before K positions were used
    diminishing_ratio: jax.Array  # () second-half / first-half mean of applied improvements (NaN if < 2 applied)
    initial_error: jax.Array  # () ||R||²_F / (n·d_out) before any change
    final_error: jax.Array  # () ||R||²_F / (n·d_out) after the last step
    max_positions: jax.Array  # () int32 K = round(fraction · d_in), the most positions allowed to change


class GramStats(NamedTuple):
    """Sufficient statistics of a layer for the correction; every field is a sum over calibration rows."""

    gram: jax.Array  # (d_in, d_in) H = xᵀx
    cross: jax.Array  # (d_in, d_out) G = xᵀR with R = x @ (w_pruned - w_dense)
    r_sq: jax.Array  # () ||R||²_F
    n: jax.Array  # () number of calibration rows


@jax.jit
def gram_stats(x, w_dense, w_pruned) -> GramStats:
    """Gram statistics of one batch of calibration rows; sum them over batches (``jax.tree.map(jnp.add, a, b)``).

    .. math:: H = x^\\top x, \\quad G = x^\\top x (w_p - w_d), \\quad r = \\|x (w_p - w_d)\\|_F^2

    Example::

        stats = gram_stats(x[:1000], w, w_p)
        stats = jax.tree.map(jnp.add, stats, gram_stats(x[1000:], w, w_p))
    """
    residual = x @ (w_pruned - w_dense)
    return GramStats(x.T @ x, x.T @ residual, jnp.sum(residual * residual), jnp.asarray(x.shape[0], x.dtype))


def format_trace(result: CorrectionResult) -> list[str]:
    """The note's debug lines for one correction: each applied position, then the summary and a warning.

    Pure and host-side: call it on a finished (not traced, not vmapped) result and print the lines yourself.

    Args:
      result: a :class:`CorrectionResult` of one correction (trace fields 1-D).

    Returns:
      ``"Position t/K: j=…, channels=…, improvement=…, linear=…, quad=…, error=…"`` for each applied step, then
      ``"Applied n/K positions"``, ``"Diminishing returns: 2nd half avg / 1st half avg = r"`` and, when
      ``r < 0.5``, a warning line.

    Example::

        res = greedy_correction(x, w, w_pruned, magnitude=0.01, fraction=0.1)
        print("\\n".join(format_trace(res)))
    """
    if not isinstance(result, CorrectionResult):
        raise TypeError(f"result must be a CorrectionResult, got {type(result).__name__}")
    trace = jax.tree.map(np.asarray, result.trace)
    if trace.position.ndim != 1:
        raise ValueError(f"result must be one correction (1-D trace), got trace shape {trace.position.shape}; "
                         f"index a vmapped result first, e.g. jax.tree.map(lambda a: a[0], result)")
    limit = int(result.max_positions)
    lines = [f"Position {t + 1}/{limit}: j={int(trace.position[t])}, channels={int(trace.channels[t])}, "
             f"improvement={float(trace.improvement[t]):.3e}, linear={float(trace.linear[t]):.3e}, "
             f"quad={float(trace.quad[t]):.3e}, error={float(trace.error[t]):.3e}"
             for t in np.flatnonzero(trace.applied)]
    ratio = float(result.diminishing_ratio)
    lines.append(f"Applied {int(result.n_applied)}/{limit} positions")
    lines.append(f"Diminishing returns: 2nd half avg / 1st half avg = {ratio:.3f}")
    if ratio < 0.5:
        lines.append("WARNING: improvements dropped by >50% - consider reducing correction magnitude!")
    return lines


def _scan_length(fraction, max_steps, d_in) -> int:
    """Static scan length: K itself when fraction is known now, else max_steps (default d_in)."""
    if max_steps is not None:
        return max_steps
    concrete = _concrete(fraction)
    return d_in if concrete is None else int(np.round(float(concrete) * d_in))


@functools.partial(jax.jit, static_argnames=("mode", "relative", "bounded", "steps"))
def _correct(gram, cross, w_pruned, kept, r_sq, n, magnitude, fraction, max_relative, *, mode, relative, bounded,
             steps) -> CorrectionResult:
    d_in, d_out = w_pruned.shape
    dtype = cross.dtype
    gram = 0.5 * (gram + gram.T)  # rows of a symmetric H are its columns: contiguous reads of H[:, j]
    h = jnp.diagonal(gram)
    norm = n * d_out
    limit = jnp.round(fraction * d_in).astype(jnp.int32)
    row_factor = jnp.where(h > 0, (4.0 if mode == "fixed" else 1.0) / jnp.where(h > 0, h, 1.0), 0.0)

    def size(rows, keep):
        """|w| (relative) or 1 (absolute) on kept weights, 0 on pruned ones: the unit of a fixed step."""
        return jnp.where(keep, jnp.abs(rows) if relative else 1.0, 0.0).astype(dtype)

    def bound(rows, keep):
        """Largest allowed |δ| in optimal mode (inf without max_relative or when it is inf), 0 on pruned weights."""
        if not bounded:
            return jnp.where(keep, jnp.inf, 0.0).astype(dtype)
        cap = jnp.where(jnp.isinf(max_relative), jnp.inf, max_relative * jnp.abs(rows))
        return jnp.where(keep, cap, 0.0).astype(dtype)

    # The scores cost one pass over G per step, so they read one precomputed array ("level") and use few ops;
    # the per-row factor 1/h is applied after the row sum. With c = m·s·h/2 and u = min(|G|, bound·h):
    #   fixed:   max(0, -ΔE) = max(0, 2m s|G| - m²s²h) = (4/h) · c · max(|G| - c, 0)
    #   optimal: max(0, -ΔE) = u (2|G| - u) / h       (unclipped, u = |G|: the exact gain G²/h)
    if mode == "fixed":
        level = 0.5 * magnitude * size(w_pruned, kept) * h[:, None]
    else:
        level = jnp.where(kept & (h[:, None] > 0), bound(w_pruned, kept) * h[:, None], 0.0)

    def scores_of(g):
        a = jnp.abs(g)
        if mode == "fixed":
            gain = level * jnp.maximum(a - level, 0.0)
        else:
            u = jnp.minimum(a, level)
            gain = u * (2.0 * a - u)
        return gain.sum(axis=1) * row_factor

    def row_change(g_row, j):
        """δ, ΔE terms and the improving channels of row j (the rule itself, exactly as documented)."""
        keep, h_j = kept[j], h[j]
        if mode == "fixed":
            delta = -jnp.sign(g_row) * magnitude * size(w_pruned[j], keep)
        else:
            delta = jnp.where(h_j > 0, -g_row / jnp.where(h_j > 0, h_j, 1.0), 0.0)
            limit_j = bound(w_pruned[j], keep)
            delta = jnp.clip(delta, -limit_j, limit_j)
        linear = 2.0 * delta * g_row
        quad = delta * delta * h_j
        change = keep & (linear + quad < 0)
        return delta, linear, quad, change

    def step(carry, t):
        g, used, r_sq_now, stopped, last_row, last_delta = carry
        # The previous step's row update lands here, from the carry: a materialised (d_out,) vector, so the one
        # full pass over G that applies it cannot fuse (and re-evaluate) the row rule, and G is updated in place.
        g = g + gram[last_row][:, None] * last_delta[None, :]
        open_scores = jnp.where(used, -jnp.inf, scores_of(g))
        j = jnp.argmax(open_scores)  # ties: lowest j
        active = (t < limit) & ~stopped
        go = active & (open_scores[j] > 0)
        stopped = stopped | (active & ~go)
        delta, linear, quad, change = row_change(g[j], j)
        change = change & go
        delta = jnp.where(change, delta, 0.0)
        linear_sum = jnp.where(change, linear, 0.0).sum()
        quad_sum = jnp.where(change, quad, 0.0).sum()
        r_sq_now = r_sq_now + linear_sum + quad_sum
        record = CorrectionTrace(
            position=jnp.where(go, j, -1).astype(jnp.int32), channels=change.sum().astype(jnp.int32),
            improvement=-(linear_sum + quad_sum) / norm, linear=linear_sum / norm, quad=quad_sum / norm,
            error=r_sq_now / norm, applied=go)
        carry = (g, used.at[j].set(used[j] | go), r_sq_now, stopped, j.astype(jnp.int32), delta)
        return carry, (record, j, delta)

    init = (cross, jnp.zeros(d_in, bool), r_sq, jnp.asarray(False), jnp.asarray(0, jnp.int32),
            jnp.zeros(d_out, dtype))
    (_, _, r_sq_end, stopped, _, _), (trace, rows, deltas) = lax.scan(step, init, jnp.arange(steps))
    weights = w_pruned.at[rows].add(deltas)  # no-op steps add zero rows
    n_applied = trace.applied.sum().astype(jnp.int32)
    ratio = diminishing_returns(trace.improvement, trace.applied)
    return CorrectionResult(weights, trace, n_applied, stopped, ratio, r_sq / norm, r_sq_end / norm, limit)


def correct_from_gram(gram, cross, w_pruned, *, n, r_sq, magnitude=0.01, fraction=0.10, mode="fixed",
                      max_relative=None, relative=True, mask=None, max_steps=None,
                      verbose=False) -> CorrectionResult:
    """Greedy correction from accumulated Gram statistics (see :func:`greedy_correction` for the rule).

    Args:
      gram: (d_in, d_in) ``H = xᵀx`` summed over all calibration rows.
      cross: (d_in, d_out) ``G = xᵀ x (w_pruned - w_dense)`` summed over the same rows.
      w_pruned: (d_in, d_out) pruned weights (zeros where pruned).
      n: number of calibration rows (the error is ``||R||²_F / (n·d_out)``).
      r_sq: ``||x (w_pruned - w_dense)||²_F`` over the same rows; the error after each step is tracked exactly
        from it through ``ΔE``. :func:`gram_stats` returns all four, additive over batches of rows.
      magnitude, fraction, mode, max_relative, relative, mask, max_steps, verbose: as in
        :func:`greedy_correction`.

    Raises:
      ValueError: bad shapes or options, ``round(fraction · d_in) == 0``, ``r_sq < 0``, a negative ``gram``
        diagonal, or a ``cross`` that no rows with this ``gram`` and ``r_sq`` can give (checked when concrete).

    Returns:
      :class:`CorrectionResult`.

    Example::

        s = gram_stats(x, w, w_p)
        res = correct_from_gram(s.gram, s.cross, w_p, n=s.n, r_sq=s.r_sq, magnitude=0.01, fraction=0.1)
    """
    w_pruned = jnp.asarray(w_pruned)
    gram, cross = jnp.asarray(gram), jnp.asarray(cross)
    if w_pruned.ndim != 2:
        raise ValueError(f"w_pruned must be 2-D (d_in, d_out), got shape {w_pruned.shape}")
    d_in, d_out = w_pruned.shape
    if gram.shape != (d_in, d_in):
        raise ValueError(f"gram must have shape (d_in, d_in) = {(d_in, d_in)} for w_pruned {w_pruned.shape}, "
                         f"got {gram.shape}")
    if cross.shape != (d_in, d_out):
        raise ValueError(f"cross must have shape (d_in, d_out) = {(d_in, d_out)} like w_pruned, got {cross.shape}")
    kept = w_pruned != 0 if mask is None else jnp.asarray(mask, bool)
    if kept.shape != (d_in, d_out):
        raise ValueError(f"mask must have shape {(d_in, d_out)} like w_pruned, got {kept.shape}")
    _check_verbose(verbose)
    _check_options(magnitude, fraction, mode, max_relative, max_steps, d_in)
    concrete_n = _concrete(n)
    if concrete_n is not None and (concrete_n.ndim or not concrete_n > 0):
        raise ValueError(f"n must be a positive scalar (number of calibration rows), got {n!r}")
    _check_finite(gram=gram, cross=cross, w_pruned=w_pruned, r_sq=r_sq)
    _check_gram_consistency(gram, cross, r_sq)
    dtype = jnp.result_type(gram, cross, w_pruned)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    steps = _scan_length(fraction, max_steps, d_in)
    bounded = max_relative is not None
    return _correct(gram.astype(dtype), cross.astype(dtype), w_pruned.astype(dtype), kept,
                    jnp.asarray(r_sq, dtype), jnp.asarray(n, dtype), jnp.asarray(magnitude, dtype),
                    jnp.asarray(fraction, dtype), jnp.asarray(max_relative if bounded else 1.0, dtype),
                    mode=mode, relative=bool(relative), bounded=bounded, steps=steps)


def greedy_correction(x, w_dense, w_pruned, *, magnitude=0.01, fraction=0.10, mode="fixed", max_relative=None,
                      relative=True, mask=None, max_steps=None, verbose=False) -> CorrectionResult:
    """Correct a pruned layer greedily, one input position (row of ``w``) at a time.

    .. math::

        \\Delta E_{ji} = 2\\,\\delta_{ji} P_{ji} + \\delta_{ji}^2 \\|x_j\\|^2, \\qquad
        P = x^\\top R, \\qquad R = x (w_c - w_d)

    ``mode="fixed"``: ``δ_ji = -sign(P_ji) · magnitude · s_ji`` with ``s = |w_pruned|`` (``relative=True``) or
    ``s = 1`` on kept weights (``relative=False``, absolute steps). ``mode="optimal"``: the exact minimiser
    ``δ_ji = -P_ji / ||x_j||²``, clipped to ``±max_relative · |w_pruned[j, i]|`` when ``max_relative`` is given.
    Only kept weights with ``ΔE < 0`` change. Each step takes the unused row ``j`` with the largest
    ``Σ_i max(0, -ΔE_ji)`` (ties: lowest ``j``); at most ``K = round(fraction · d_in)`` rows are used; the scan
    stops (later steps are no-ops) when no unused row improves. ``error = ||R||²_F / (n · d_out)``.

    Jittable and vmappable over ``magnitude``, ``fraction`` and the arrays; when ``fraction`` is traced, pass a
    static ``max_steps`` (>= every K; default d_in) and steps beyond K are no-ops.

    Args:
      x: (n, d_in) calibration inputs.
      w_dense: (d_in, d_out) dense weights.
      w_pruned: (d_in, d_out) pruned weights, zeros where pruned.
      magnitude: fixed step, relative to ``|w|`` (or absolute); > 0. Unused in optimal mode.
      fraction: share of input rows that may change, in (0, 1].
      mode: ``"fixed"`` or ``"optimal"``.
      max_relative: optimal mode only: bound on ``|δ| / |w_pruned|``; None (or inf, which can be mixed with finite
        bounds under vmap) is unbounded.
      relative: fixed mode: scale the step by ``|w_pruned|`` (True) or not.
      mask: optional bool (d_in, d_out) of kept weights; default ``w_pruned != 0``.
      max_steps: static scan length (needed only when ``fraction`` is traced, e.g. under vmap).
      verbose: must stay False: the maths never prints; :func:`format_trace` gives the note's lines to print.

    Returns:
      :class:`CorrectionResult` (weights, trace, n_applied, stopped_early, diminishing_ratio, initial_error,
      final_error, max_positions); :func:`format_trace` turns one into the note's debug lines.

    Example::

        mask = optlab.correction.magnitude_mask(w, 0.5)
        res = greedy_correction(x, w, w * mask, magnitude=0.01, fraction=0.1)
        res.initial_error - res.final_error  # error reduction
    """
    x, w_dense, w_pruned = jnp.asarray(x), jnp.asarray(w_dense), jnp.asarray(w_pruned)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, d_in), got shape {x.shape}")
    if w_dense.ndim != 2 or w_dense.shape[0] != x.shape[1]:
        raise ValueError(f"w_dense must have shape (d_in, d_out) with d_in = x.shape[1] = {x.shape[1]}, "
                         f"got x {x.shape} and w_dense {w_dense.shape}")
    if w_pruned.shape != w_dense.shape:
        raise ValueError(f"w_pruned must have the shape of w_dense {w_dense.shape}, got {w_pruned.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"x needs at least one calibration row, got shape {x.shape}")
    _check_verbose(verbose)
    _check_options(magnitude, fraction, mode, max_relative, max_steps, x.shape[1])
    _check_finite(x=x, w_dense=w_dense, w_pruned=w_pruned)
    dtype = jnp.result_type(x, w_dense, w_pruned)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    stats = gram_stats(x.astype(dtype), w_dense.astype(dtype), w_pruned.astype(dtype))
    return correct_from_gram(stats.gram, stats.cross, w_pruned, n=stats.n, r_sq=stats.r_sq, magnitude=magnitude,
                             fraction=fraction, mode=mode, max_relative=max_relative, relative=relative, mask=mask,
                             max_steps=max_steps, verbose=verbose)
