"""Mixed precision for ``fit``: a dynamic loss scaler with DeepSpeed's fp16 semantics, and ulp diagnostics.

Dynamic loss scaling multiplies the loss by a scale :math:`s` before differentiating and divides the gradient by
:math:`s` after, so small float16 gradients do not underflow; when the scaled gradient overflows the step is
skipped and the scale adjusted. With an overflow flag :math:`o_t` per step, a count :math:`c_t` of good steps since
the last overflow (mod the window :math:`W`) and a hysteresis budget :math:`h_t` (starting at :math:`H`):

.. math::
  o_t:\\; s_{t+1} = \\begin{cases} \\max(s_t / f, s_{\\min}) & h_t = 1 \\text{ or } H = 1 \\\\ s_t & \\text{else},
  \\; h_{t+1} = h_t - 1 \\end{cases}, \\qquad c_{t+1} = 0

.. math::
  \\lnot o_t:\\; c_{t+1} = (c_t + 1) \\bmod W, \\qquad s_{t+1} = f \\, s_t,\\; h_{t+1} = H \\text{ when } c_{t+1} = 0

This is ``DynamicLossScaler.update_scale`` of DeepSpeed's fp16 engine with its defaults (``initial_scale_power``
16, ``loss_scale_window`` 1000, ``hysteresis`` 2, ``min_loss_scale`` 1, ``consecutive_hysteresis`` False): the
hysteresis budget is only refilled when the scale doubles (or after every good step with
``consecutive_hysteresis=True``), and every overflow skips its step, also one the hysteresis absorbs.

Why not ``jmp`` (DeepMind's mixed-precision library, 0.0.4, last released 2023): its ``DynamicLossScale`` has no
hysteresis (every overflow halves the scale), keeps ``period`` / ``factor`` static (a grid cannot vmap over the
window), and drops ``min_loss_scale`` when the scale is flattened and rebuilt as a pytree (it is not among the
pytree children, so after one trip through ``jit`` / ``scan`` the minimum is back at its default). The scaler
here is a few lines, pure and jittable, with every hyperparameter traceable.

One deviation, documented: a doubling that would overflow the float32 scale to inf keeps the scale (as jmp does);
DeepSpeed's Python float would reach inf only after ~10^5 good steps.

Example:
  >>> scaler = DynamicLossScale(initial=8.0, window=2, hysteresis=1)
  >>> state = scaler.init()
  >>> state = scaler.adjust(state, jnp.asarray(False))  # overflow: halve
  >>> float(state.scale)
  4.0
  >>> state = scaler.adjust(scaler.adjust(state, jnp.asarray(True)), jnp.asarray(True))  # a window of good steps
  >>> float(state.scale)
  8.0

References:
  Micikevicius et al., Mixed Precision Training, 2018, https://arxiv.org/abs/1710.03740
  DeepSpeed, ``deepspeed/runtime/fp16/loss_scaler.py`` (DynamicLossScaler), https://github.com/microsoft/DeepSpeed
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LossScaleState(NamedTuple):
    """The dynamic loss scaler's state; lives in ``TrainState.loss_scale`` (checkpointed, vmappable)."""

    scale: jax.Array  # () float32: the scale the next step multiplies its loss by
    good_steps: jax.Array  # () int32: steps without overflow since the last overflow, mod the window
    hysteresis: jax.Array  # () int32: overflows still absorbed before the scale drops (1: the next one halves)


class DynamicLossScale(NamedTuple):
    """Dynamic loss scaling as DeepSpeed's fp16 engine does it by default (see the module docstring for the rule).

    Pass it as ``fit(..., loss_scale=DynamicLossScale())``; a plain number there is a static scale. Every field may
    be a traced array (vmap a grid over ``initial`` or ``window``).

    Example:
      >>> # fit(loss, params, optax.adam(1e-3), steps=100, dtype="float16", loss_scale=DynamicLossScale())
    """

    initial: Any = 2.0**16  # > 0: the first scale (DeepSpeed: 2 ** initial_scale_power, power 16)
    window: Any = 1000  # int >= 1: good steps after which the scale grows by `factor` (loss_scale_window)
    hysteresis: Any = 2  # int >= 1: overflows tolerated before the scale drops (DeepSpeed's delayed_shift)
    minimum: Any = 1.0  # > 0: the scale never drops below this (min_loss_scale)
    factor: Any = 2.0  # > 1: growth / shrink factor (scale_factor)
    consecutive_hysteresis: Any = False  # refill the hysteresis budget after every good step, not only on growth

    def check(self) -> DynamicLossScale:
        """Validates the concrete fields (traced ones are skipped); raises ValueError / TypeError naming the field.

        Returns:
          ``self``.
        """
        def concrete(value):
            return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))

        for name, strict in (("initial", True), ("minimum", True)):
            value = getattr(self, name)
            if concrete(value) and not (np.isfinite(float(np.asarray(value))) and float(np.asarray(value)) > 0):
                raise ValueError(f"DynamicLossScale.{name} must be a finite number > 0, got {value!r}")
        for name in ("window", "hysteresis"):
            value = getattr(self, name)
            if concrete(value):
                array = np.asarray(value)
                if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
                    raise TypeError(f"DynamicLossScale.{name} must be an int >= 1, got {value!r}")
                if int(array) < 1:
                    raise ValueError(f"DynamicLossScale.{name} must be an int >= 1, got {value!r}")
        if concrete(self.factor) and not float(np.asarray(self.factor)) > 1:
            raise ValueError(f"DynamicLossScale.factor must be a number > 1, got {self.factor!r}")
        if concrete(self.initial) and concrete(self.minimum) and float(self.initial) < float(self.minimum):
            raise ValueError(f"DynamicLossScale.initial={self.initial!r} must be >= minimum={self.minimum!r}")
        return self

    def init(self) -> LossScaleState:
        """The state before the first step: scale ``initial``, no good steps, the full hysteresis budget."""
        return LossScaleState(
            scale=jnp.asarray(self.initial, jnp.float32),
            good_steps=jnp.zeros((), jnp.int32),
            hysteresis=jnp.asarray(self.hysteresis, jnp.int32),
        )

    def adjust(self, state: LossScaleState, grads_finite: jax.Array) -> LossScaleState:
        """The state after a step whose (unscaled) gradient was finite (``grads_finite``) or overflowed.

        Args:
          state: the state the step used.
          grads_finite: () bool, False on overflow (that step is skipped by the caller).

        Returns:
          The next :class:`LossScaleState`.
        """
        full = jnp.asarray(self.hysteresis, jnp.int32)
        factor = jnp.asarray(self.factor, jnp.float32)
        # Overflow: drop the scale once the hysteresis budget is spent, else spend one unit of it.
        drop = (state.hysteresis <= 1) | (full <= 1)
        shrunk = jnp.where(drop, jnp.maximum(state.scale / factor, jnp.asarray(self.minimum, jnp.float32)),
                           state.scale)
        spent = jnp.where(drop, state.hysteresis, state.hysteresis - 1)
        # Good step: grow after every `window` good steps since the last overflow (DeepSpeed's modulo test).
        good = (state.good_steps + 1) % jnp.asarray(self.window, jnp.int32)
        grow = good == 0
        grown = state.scale * factor
        grown = jnp.where(grow & jnp.isfinite(grown), grown, state.scale)
        refill = grow | jnp.asarray(self.consecutive_hysteresis, jnp.bool_)
        return LossScaleState(
            scale=jnp.where(grads_finite, grown, shrunk),
            good_steps=jnp.where(grads_finite, good, 0).astype(jnp.int32),
            hysteresis=jnp.where(grads_finite, jnp.where(refill, full, state.hysteresis), spent).astype(jnp.int32),
        )


def all_finite(tree: Any) -> jax.Array:
    """() bool: whether every entry of every inexact leaf of ``tree`` is finite (True for a tree without any)."""
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return functools.reduce(operator.and_, flags, jnp.asarray(True))


def _real_parts(x: jax.Array) -> list[jax.Array]:
    return [jnp.real(x), jnp.imag(x)] if jnp.iscomplexobj(x) else [x]


def ulp_ratio(updates: Any, params: Any) -> jax.Array:
    """Largest ``|update| / (ulp(param) / 2)`` over every entry: below 1, adding the update leaves the param unchanged.

    .. math::
      r = \\max_i \\frac{|u_i|}{\\tfrac12 \\, \\mathrm{ulp}(\\theta_i)}, \\qquad
      \\mathrm{ulp}(\\theta) = \\mathrm{spacing}(|\\theta|) \\text{ in the parameter's dtype}

    Round-to-nearest maps :math:`\\theta + u` back to :math:`\\theta` when :math:`|u| < \\mathrm{ulp}/2` (and at a
    tie to even), so ``r < 1`` means no entry moves. Computed in at least float32 (a float16 ulp of 0 is
    subnormal but representable there); an ulp below that dtype's smallest normal number is taken as that number
    (so the ratio stays finite at a zero parameter). Complex leaves count their real and imaginary parts
    separately.

    Args:
      updates: the update pytree (already in the parameters' dtypes).
      params: the parameters it is added to.

    Returns:
      () float, 0 for an all-zero update.

    Example:
      >>> float(ulp_ratio(jnp.asarray(1e-4, jnp.float16), jnp.asarray(1.0, jnp.float16)))  # ulp(1) = 2^-10
      0.2048...
    """
    ratios = []
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        for u_part, p_part in zip(_real_parts(u), _real_parts(p)):
            wide = jnp.promote_types(p_part.dtype, jnp.float32)
            # XLA:CPU flushes subnormals to 0, so a float32 ulp below the smallest normal (|param| < 2^-103, the
            # ulp of 0 included) would divide by 0: it is floored there (a float16 ulp is normal in float32).
            ulp = jnp.maximum(jnp.spacing(jnp.abs(p_part)).astype(wide), jnp.finfo(wide).tiny)
            ratios.append(jnp.max(2 * jnp.abs(u_part).astype(wide) / ulp, initial=0.0))
    if not ratios:
        return jnp.zeros((), jnp.float32)
    wide = functools.reduce(jnp.promote_types, [r.dtype for r in ratios])
    return jnp.max(jnp.stack([r.astype(wide) for r in ratios]))
