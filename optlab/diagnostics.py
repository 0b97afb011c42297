"""Diagnostics of training traces: best point and divergence onset, zig-zag, starvation, rates, diminishing returns.

Every function is a pure function of arrays: jittable, vmappable (no Python branching on values; only shapes and
the static ``start``/``stop`` of :func:`convergence_rate` are Python-level), and NaN-aware. Steps are trace rows:
with ``fit(..., log_every=k)`` multiply a step by ``k`` to get the optimizer step.

Example::

    import jax, jax.numpy as jnp
    from optlab import diagnostics as dg

    loss = jnp.concatenate([jnp.linspace(1.0, 0.1, 50), jnp.linspace(0.1, 0.5, 50)])
    d = dg.divergence(loss)
    dg.verdict_name(d.verdict)                       # 'diverged'
    jax.vmap(dg.divergence)(jnp.stack([loss, loss]))  # batched over runs
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

VERDICTS: tuple[str, ...] = ("converged", "plateaued", "diverged", "nan")
CONVERGED, PLATEAUED, DIVERGED, NAN = range(len(VERDICTS))

# divergence(): the defaults of its rule (see its docstring), named so studies can quote them.
DIVERGENCE_REL_TOL = 0.5  # the level a diverged run stays above: best + 0.5·|best| (zig-zag lows come back below)
DIVERGENCE_WINDOW_SHARE = 0.05  # window of the sustained-rise test: 5 % of the trace
DIVERGENCE_NOISE = 0.2  # share of a window that may dip below the level inside a sustained rise
HOVER_QUANTILE = 0.25  # the onset is the last step before the crossing at or below this quantile of the hover
REL_FLOOR = 1e-10  # losses below this share of the first loss are float noise of a finished run
PLATEAU_TOL = 0.05  # a tail that drops by less than 5 % of its start value is a plateau


class Divergence(NamedTuple):
    """Where a loss trace was best and whether (and when) it left that level for good."""

    best_step: jax.Array  # () int32: first step of the smallest finite loss (0 if none is finite)
    best_loss: jax.Array  # () float: smallest finite loss (NaN if none is finite)
    onset_step: jax.Array  # () int32: start of the sustained rise above the divergence level; -1 if none
    final_best_ratio: jax.Array  # () float: loss[-1] / best_loss (NaN/inf propagate)
    verdict: jax.Array  # () int32: index into VERDICTS


class ZigZag(NamedTuple):
    """How much a trace goes up on its way down (both 0 for a monotone non-increasing trace)."""

    up_fraction: jax.Array  # () float: share of finite steps with loss[t+1] > loss[t] (NaN if none)
    up_over_drop: jax.Array  # () float: sum of increases / sum of decreases (0 if no increase, inf if no decrease)


class Starvation(NamedTuple):
    """How unevenly gradient norm is spread over parameter groups, and when each group settles."""

    min_max_ratio: jax.Array  # (T,) float: min_g ||g_g|| / max_g ||g_g|| per step (1 where all are 0)
    settle_step: jax.Array  # (G,) int32: first step from which the group's value stays below threshold; -1 if never


def _float_array(x, name: str, ndim: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _stays_true(flags: jax.Array) -> jax.Array:
    """flags[t:] all true, for every t (along axis 0): a reverse cumulative minimum."""
    return jax.lax.cummin(flags.astype(jnp.int32), axis=0, reverse=True).astype(bool)


def _first_true(flags: jax.Array) -> jax.Array:
    """Index of the first true entry along axis 0, or -1."""
    return jnp.where(flags.any(axis=0), jnp.argmax(flags, axis=0), -1).astype(jnp.int32)


def verdict_name(code) -> str | np.ndarray:
    """Name of a verdict code from :func:`divergence` (a str for a scalar, an array of str for an array).

    Example: ``verdict_name(2) == "diverged"``; ``verdict_name(result.outputs["verdict"])`` names a whole grid.
    """
    codes = np.asarray(code)
    if not np.issubdtype(codes.dtype, np.integer) or codes.size and (codes.min() < 0 or codes.max() >= len(VERDICTS)):
        raise ValueError(f"verdict code must be an integer in [0, {len(VERDICTS)}), got {code!r}")
    names = np.asarray(VERDICTS, dtype=object)[codes]
    return str(names) if codes.ndim == 0 else names


def divergence(
    loss,
    *,
    rel_tol=DIVERGENCE_REL_TOL,
    window: int | None = None,
    noise=DIVERGENCE_NOISE,
    floor=0.0,
    rel_floor=REL_FLOOR,
    tail: float = 0.1,
    plateau_tol=None,
) -> Divergence:
    """Best point, divergence onset and a verdict for one loss trace.

    .. math::

        b = \\arg\\min_t L_t \\ (\\text{finite } L_t), \\quad
        \\phi = \\max(\\mathrm{floor},\\ \\mathrm{rel\\_floor}\\,|L_0|), \\quad
        \\ell = \\max(L_b + \\mathrm{rel\\_tol}\\,|L_b|,\\ \\phi)

    A run *diverges* when, after its best step, its loss stays above the level ``ℓ`` for good: every window of
    ``window`` consecutive steps from some step ``c`` to the end of the trace has at least ``1 - noise`` of its
    steps above ``ℓ`` (non-finite losses count as above), and that stretch is at least one window long. Dips below
    ``ℓ`` inside a rising run are tolerated (``noise``), and a zig-zag whose lows keep coming back near the best is
    not a divergence however high its spikes go. ``c`` is the first step above ``ℓ`` of that stretch.

    The onset is where the rise that crossed ``ℓ`` at ``c`` started, not the crossing itself: with ``h`` the lower
    quartile (``HOVER_QUANTILE``) of the loss over steps ``[b, c)`` (the level the run hovered at after its best),
    ``onset = 1 + max{s ∈ [b, c) : L_s ≤ h}``. For a run that hovers and then blows up, that is within a few steps
    of the start of the blow-up; for a V-shaped trace it lies a quarter of the way from the best to the crossing.
    ``-1`` if the run did not diverge.

    Losses at or below the floor ``φ`` never count as a divergence: ``rel_floor`` (default ``REL_FLOOR = 1e-10``)
    times the first finite loss is the float-noise level of a run that is done, so a run at 1e-14 of its start
    is converged without passing ``floor=``. Pass ``rel_floor=0`` for the bare ``floor``.

    Verdict rules, first match wins:

    - ``nan``: some loss is NaN or inf.
    - ``diverged``: an onset exists.
    - ``plateaued``: the lowest loss of the last ``k = max(1, ceil(tail·T))`` steps is less than ``plateau_tol``
      (relative) below the lowest loss of the ``k`` steps before them (rows ``T-1-2k … T-1-k``), and above ``φ``.
      For a monotone trace that compares the final loss with ``loss[T-1-k]``; a zig-zag is judged on its lows.
      Pass the known minimum loss (plus a tolerance) as ``floor`` to tell "stuck" from "done".
    - ``converged``: otherwise (still improving at the end, or at/below ``φ``).

    Args:
      loss: (T,) loss trace.
      rel_tol: the divergence level is ``rel_tol`` above the best loss (default ``DIVERGENCE_REL_TOL = 0.5``:
        1.5× the best for positive losses).
      window: steps per window of the sustained-rise test (Python int >= 1); None means
        ``max(1, ceil(DIVERGENCE_WINDOW_SHARE · T))`` (5 % of the trace), capped at ``T``.
      noise: share of a window that may dip to or below the level (default ``DIVERGENCE_NOISE = 0.2``).
      floor: losses at or below it count as converged and never as divergence (may be traced).
      rel_floor: the floor is at least ``rel_floor · |first finite loss|``.
      tail: share of the trace used for the plateau test (Python float in (0, 1]).
      plateau_tol: relative drop over the tail below which the run plateaued; None means ``PLATEAU_TOL = 0.05``.

    Returns:
      :class:`Divergence`.

    Example::

        d = divergence(jnp.array([3.0, 2.0, 1.0, 1.5, 2.0]))
        # best_step 2; level 1.5 is first exceeded at step 4; onset_step 3; verdict_name(d.verdict) == "diverged"
    """
    loss = _float_array(loss, "loss", 1)
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    n = loss.shape[0]
    if n == 0:
        raise ValueError("loss must have at least one step")
    if window is None:
        window = max(1, math.ceil(DIVERGENCE_WINDOW_SHARE * n))
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a Python int >= 1 or None, got {window!r}")
    window = min(window, n)
    if isinstance(noise, (int, float)) and not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise!r}")
    finite = jnp.isfinite(loss)
    ranked = jnp.where(finite, loss, jnp.inf)
    best_step = jnp.argmin(ranked).astype(jnp.int32)
    best_loss = jnp.where(finite.any(), ranked[best_step], jnp.nan)
    first_finite = jnp.where(finite.any(), jnp.abs(ranked[jnp.argmax(finite)]), 0.0)
    floor = jnp.maximum(floor, rel_floor * first_finite)
    level = jnp.maximum(best_loss + rel_tol * jnp.abs(best_loss), floor)
    steps = jnp.arange(n)
    above = ranked > level  # NaN level (nothing finite) compares false: no onset

    # Share of steps above the level in the full window starting at each step; windows that would run past the end
    # are covered by the last full one, so a single dip in the final steps does not cancel a divergence.
    counts = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(above.astype(jnp.int32))])
    starts = jnp.minimum(steps, n - window)
    share = (counts[starts + window] - counts[starts]) / window
    sustained = _stays_true(share >= 1.0 - noise)
    crossing = _first_true(sustained & above & (steps > best_step) & (steps <= n - window))

    # The rise began after the last step, between the best and the crossing, at or below the hover level.
    before = (steps >= best_step) & (steps < crossing)
    hover = jnp.nanquantile(jnp.where(before, ranked, jnp.nan), HOVER_QUANTILE)
    last_low = jnp.max(jnp.where(before & (ranked <= hover), steps, best_step))
    onset_step = jnp.where(crossing >= 0, last_low + 1, -1).astype(jnp.int32)
    final = loss[-1]
    final_best_ratio = final / best_loss

    # Lower envelopes (minima) of the tail and of the stretch before it: for a monotone trace they are the final
    # loss and loss[T-1-k]; a zig-zag is judged on its lows instead of on two arbitrary points.
    k = max(1, math.ceil(tail * n))
    ref = ranked[max(n - 1 - 2 * k, 0): max(n - k, 1)].min()
    low = ranked[max(n - k, 0):].min()
    drop = ref - low
    rel_drop = jnp.where(jnp.abs(ref) > 0, drop / jnp.abs(ref), jnp.where(drop > 0, jnp.inf, 0.0))
    plateau = (rel_drop < (PLATEAU_TOL if plateau_tol is None else plateau_tol)) & (low > floor)
    verdict = jnp.where(
        ~finite.all(), NAN, jnp.where(onset_step >= 0, DIVERGED, jnp.where(plateau, PLATEAUED, CONVERGED))
    ).astype(jnp.int32)
    return Divergence(best_step, best_loss, onset_step, final_best_ratio, verdict)


def zigzag_score(loss) -> ZigZag:
    """How much a loss trace zig-zags; steps touching a non-finite loss are ignored.

    .. math::

        d_t = L_{t+1} - L_t, \\quad \\mathrm{up\\_fraction} = \\frac{\\#\\{d_t > 0\\}}{\\#\\{d_t\\}}, \\quad
        \\mathrm{up\\_over\\_drop} = \\frac{\\sum_t \\max(d_t, 0)}{\\sum_t \\max(-d_t, 0)}

    Args:
      loss: (T,) loss trace.

    Returns:
      :class:`ZigZag`; a monotone non-increasing trace gives (0, 0), an alternating 1, 2, 1, 2, ... about (0.5, 1).

    Example::

        zigzag_score(jnp.array([4.0, 2.0, 3.0, 1.0]))  # up_fraction 1/3, up_over_drop 1/4
    """
    loss = _float_array(loss, "loss", 1)
    diffs = jnp.diff(loss)
    valid = jnp.isfinite(diffs)
    ups = jnp.where(valid, jnp.maximum(diffs, 0.0), 0.0).sum()
    downs = jnp.where(valid, jnp.maximum(-diffs, 0.0), 0.0).sum()
    n_valid = valid.sum()
    up_fraction = jnp.where(n_valid > 0, (valid & (diffs > 0)).sum() / jnp.maximum(n_valid, 1), jnp.nan)
    up_over_drop = jnp.where(downs > 0, ups / jnp.where(downs > 0, downs, 1.0), jnp.where(ups > 0, jnp.inf, 0.0))
    return ZigZag(up_fraction.astype(loss.dtype), up_over_drop.astype(loss.dtype))


def starvation(group_grad_norms, group_errors=None, threshold: float = 1e-3) -> Starvation:
    """Gradient-norm imbalance between groups over time and when each group settles ("sequential convergence").

    .. math::

        r_t = \\frac{\\min_g \\|g_{t,g}\\|}{\\max_g \\|g_{t,g}\\|}, \\quad
        \\mathrm{settle}_g = \\min\\{t : |v_{s,g}| < \\mathrm{threshold} \\ \\forall s \\ge t\\}

    where ``v`` is ``group_errors`` if given (e.g. distance of each group to its optimum) else the grad norms.

    Args:
      group_grad_norms: (T, G) per-group gradient norms (``fit``'s ``trace["group_grad_norms"]``).
      group_errors: optional (T, G) per-group errors; their absolute value is compared with ``threshold``.
      threshold: settle level.

    Returns:
      :class:`Starvation`; ``min_max_ratio`` is NaN at steps with a NaN norm, ``settle_step`` is -1 for a group that
      is not below the threshold at the end.

    Example::

        s = starvation(trace["group_grad_norms"], threshold=1e-4)
        # s.settle_step[0] < s.settle_step[1]: group 0 converged first
    """
    norms = _float_array(group_grad_norms, "group_grad_norms", 2)
    largest, smallest = norms.max(axis=1), norms.min(axis=1)
    ratio = jnp.where(largest > 0, smallest / jnp.where(largest > 0, largest, 1.0), 1.0)
    ratio = jnp.where(jnp.isnan(largest) | jnp.isnan(smallest), jnp.nan, ratio)
    values = norms
    if group_errors is not None:
        values = jnp.abs(_float_array(group_errors, "group_errors", 2))
        if values.shape[0] != norms.shape[0]:
            raise ValueError(f"group_errors must have {norms.shape[0]} steps like group_grad_norms, got {values.shape}")
    settle_step = _first_true(_stays_true(values < threshold))
    return Starvation(ratio, settle_step)


def convergence_rate(values, start: int = 0, stop: int | None = None) -> jax.Array:
    """Per-step contraction factor: exp of the least-squares slope of ``log|values[start:stop]|`` against the step.

    .. math::

        \\rho = \\exp(\\hat\\beta), \\quad
        (\\hat\\alpha, \\hat\\beta) = \\arg\\min \\sum_t (\\log|v_t| - \\alpha - \\beta t)^2

    For ``x_n = a + (x_0 - a)/2^n`` it is 1/2 on the distance ``|x_n - a|`` and 1/4 on the loss ``(x_n - a)^2``.
    Zero or non-finite values are left out of the fit; fewer than two usable values give NaN.

    Args:
      values: (T,) positive-ish trace (loss, distance to optimum, gradient norm, ...).
      start, stop: Python ints selecting the fitted window, as in ``values[start:stop]``.

    Returns:
      () float contraction factor (< 1 converges, > 1 grows).

    Example::

        convergence_rate(0.5 ** jnp.arange(20.0))  # 0.5
    """
    if not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
        raise TypeError(f"start and stop must be Python ints (static), got start={start!r}, stop={stop!r}")
    window = _float_array(values, "values", 1)[start:stop]
    if window.shape[0] < 2:
        raise ValueError(f"the window values[{start}:{stop}] must hold at least 2 steps, got {window.shape[0]}")
    logs = jnp.log(jnp.abs(window))
    valid = jnp.isfinite(logs)
    weight = valid.astype(window.dtype)
    logs = jnp.where(valid, logs, 0.0)
    steps = jnp.arange(window.shape[0], dtype=window.dtype)
    count = weight.sum()
    safe_count = jnp.maximum(count, 1.0)
    step_mean = (weight * steps).sum() / safe_count
    log_mean = (weight * logs).sum() / safe_count
    centred = weight * (steps - step_mean)
    spread = (centred * (steps - step_mean)).sum()
    slope = (centred * (logs - log_mean)).sum() / jnp.where(spread > 0, spread, 1.0)
    return jnp.where((count >= 2) & (spread > 0), jnp.exp(slope), jnp.nan)


def diminishing_returns(improvements, mask=None) -> jax.Array:
    """Mean of the second half of the valid improvements over the mean of the first half.

    .. math::

        \\frac{\\operatorname{mean}(u_{\\lfloor n/2 \\rfloor}, \\dots, u_{n-1})}
             {\\operatorname{mean}(u_0, \\dots, u_{\\lfloor n/2 \\rfloor - 1})}

    over the ``n`` masked-in entries ``u`` in order (for odd ``n`` the middle entry is in the second half, as in
    ``u[:n//2], u[n//2:]``). Below 0.5 later steps give less than half the benefit of early ones. NaN entries inside
    the mask make the result NaN (never silently dropped).

    Args:
      improvements: (N,) per-step improvements (e.g. greedy correction's ``trace["improvement"]``).
      mask: optional (N,) bool, True for entries to use (e.g. positions actually applied).

    Returns:
      () float ratio; NaN when fewer than 2 entries are masked in.

    Example::

        diminishing_returns(jnp.array([4.0, 4.0, 1.0, 1.0]))  # 0.25
    """
    values = _float_array(improvements, "improvements", 1)
    valid = jnp.ones(values.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if valid.shape != values.shape:
        raise ValueError(f"mask must have shape {values.shape} like improvements, got {valid.shape}")
    rank = jnp.cumsum(valid) - 1
    count = valid.sum()
    first = valid & (rank < count // 2)
    second = valid & (rank >= count // 2)
    first_mean = jnp.where(first, values, 0.0).sum() / jnp.maximum(first.sum(), 1)
    second_mean = jnp.where(second, values, 0.0).sum() / jnp.maximum(second.sum(), 1)
    return jnp.where(count >= 2, second_mean / first_mean, jnp.nan)
