"""Argument checks of the greedy correction (:mod:`optlab.correction.greedy`), run on the host before any work:
concrete values are checked now; traced ones cannot be checked here and pass through."""

from __future__ import annotations

import jax
import numpy as np

MODES = ("fixed", "optimal")


def _concrete(value):
    """The value as a NumPy array when it is known now (not traced), else None."""
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def _check_finite(**arrays) -> None:
    for name, value in arrays.items():
        concrete = _concrete(value)
        if concrete is not None and not np.all(np.isfinite(concrete)):
            raise ValueError(f"{name} must be finite; it has {int(np.sum(~np.isfinite(concrete)))} NaN/inf "
                             f"entries (shape {tuple(np.shape(value))})")


def _check_options(magnitude, fraction, mode, max_relative, max_steps, d_in) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    concrete = _concrete(magnitude)
    if concrete is not None and (concrete.ndim or not np.isfinite(concrete) or concrete <= 0):
        raise ValueError(f"magnitude must be a finite scalar > 0, got {magnitude!r}")
    concrete = _concrete(max_relative)
    if concrete is not None and (concrete.ndim or np.isnan(concrete) or concrete <= 0):
        raise ValueError(f"max_relative must be None or a scalar > 0 (inf: unbounded), got {max_relative!r}")
    concrete = _concrete(fraction)
    if concrete is not None and (concrete.ndim or not 0 < concrete <= 1):
        raise ValueError(f"fraction must be a scalar in (0, 1], got {fraction!r}")
    if concrete is not None and int(np.round(float(concrete) * d_in)) == 0:
        # Zero positions would return the pruned weights unchanged with no sign that nothing was tried.
        raise ValueError(f"fraction · d_in rounds to 0 positions (fraction={float(concrete):g}, d_in={d_in}); "
                         f"use fraction > 0.5 / d_in = {0.5 / d_in:.3g}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                  or not 0 <= max_steps <= d_in):
        raise ValueError(f"max_steps must be an int in [0, d_in={d_in}], got {max_steps!r}")


def _check_verbose(verbose) -> None:
    if verbose:
        raise TypeError("verbose printing moved out of the jitted maths: call without verbose and print "
                        "'\\n'.join(optlab.correction.format_trace(result)) on the host")


# Relative slack for the Gram consistency check: float32 sums of n products differ from exact ones by ~1e-6·n.
_GRAM_RTOL = 1e-3


def _check_gram_consistency(gram, cross, r_sq) -> None:
    """Raise when concrete statistics cannot come from one set of rows: ``H = xᵀx``, ``G = xᵀR``, ``r = ||R||²``.

    Necessary conditions, O(d_in·d_out): ``r >= 0``, ``diag H >= 0`` and, by Cauchy-Schwarz per input row ``j``,
    ``||G[j]||² <= H[j, j] · r`` (the best one-row gain cannot exceed the whole error).
    """
    gram, cross, r_sq = _concrete(gram), _concrete(cross), _concrete(r_sq)
    if r_sq is not None and (r_sq.ndim or r_sq < 0):
        raise ValueError(f"r_sq must be a scalar >= 0 (it is ||x (w_pruned - w_dense)||²_F), got {r_sq!r}")
    if gram is None:
        return
    h = np.diagonal(gram).astype(np.float64)
    if np.any(h < 0):
        raise ValueError(f"gram must be xᵀx (diagonal >= 0); {int(np.sum(h < 0))} diagonal entries are negative, "
                         f"e.g. gram[{int(np.argmin(h))}, {int(np.argmin(h))}] = {float(h.min()):.3g}")
    if cross is None or r_sq is None:
        return
    row_sq = np.sum(np.square(cross.astype(np.float64)), axis=1)
    bound = h * float(r_sq)
    bad = row_sq > bound * (1 + _GRAM_RTOL) + np.finfo(np.float32).tiny
    if np.any(bad):
        j = int(np.argmax(np.where(bad, row_sq - bound, -np.inf)))
        raise ValueError(f"cross is inconsistent with gram and r_sq: ||cross[{j}]||² = {row_sq[j]:.6g} exceeds "
                         f"gram[{j}, {j}] · r_sq = {bound[j]:.6g} (Cauchy-Schwarz); pass statistics of the same "
                         f"rows, e.g. from gram_stats(x, w_dense, w_pruned)")
