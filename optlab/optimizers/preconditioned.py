r"""Newton-root step along a preconditioned direction.

Instead of stepping along the gradient :math:`g`, step along :math:`d = P g` for a positive
diagonal preconditioner :math:`P`, by the root of the loss linearised along :math:`d`:

.. math::
  t = \min\left(\frac{L - f^\star}{g^\top d + \epsilon}, t_{\max}\right),\qquad
  \text{update} = t\, d

(:math:`t = 0` where :math:`g^\top d + \epsilon` is ~0), so that, uncapped,
:math:`g^\top (t d) = L - f^\star`: the linearised loss reaches :math:`f^\star`. Two
preconditioners are provided: Adam's :math:`P = 1/(\sqrt{\hat v} + \epsilon)` (here) and a Hutchinson
estimate of the Hessian diagonal, :math:`P = 1/(\lvert\operatorname{diag} H\rvert + \lambda)`
(:mod:`optlab.optimizers.hutchinson`, which reuses this module's step).

Closest relatives: MoMo-Adam (Schaipp et al. 2023, :func:`optax.contrib.momo_adam`, which adds
momentum and a model of past losses) and preconditioned SPS (Abdukhakimov et al. 2023, which
uses the :math:`P`-norm :math:`g^\top P g` in the Polyak step exactly as here).

References:
  Schaipp et al., `MoMo: Momentum Models for Adaptive Learning Rates
  <https://arxiv.org/abs/2305.07583>`_, 2023.
  Abdukhakimov et al., `Stochastic Gradient Descent with Preconditioned Polyak Step-size
  <https://arxiv.org/abs/2310.02093>`_, 2023.
  Hutchinson, `A stochastic estimator of the trace of the influence matrix for Laplacian
  smoothing splines`, 1990.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab.optimizers import grouping, guards
from optlab.optimizers.newton_root import VARIANTS, check_step_hyperparameters, root_step, suboptimality_gap


class NewtonRootAdamState(NamedTuple):
    """State of :func:`scale_by_newton_root_adam`."""

    count: jax.Array  # shape=(), int32: steps applied (drives Adam's bias correction).
    nu: optax.Updates  # like params, real float >= float32: EMA of squared gradients (Adam's second moment).
    step_scale: jax.Array  # shape=(1,), float: last step t (0 on a skipped step).
    skipped: jax.Array  # shape=(), int32: steps skipped for a non-finite loss, gradient, moment or update.


def _root_step_along(
    updates: optax.Updates,
    direction: optax.Updates,
    value: jax.typing.ArrayLike,
    f_min: jax.typing.ArrayLike,
    max_scale: jax.typing.ArrayLike,
    denominator_eps: jax.typing.ArrayLike,
    variant: str,
) -> tuple[optax.Updates, jax.Array]:
    """``(t * d in the leaves' dtypes, t of shape (1,))`` for gradient ``updates`` and direction ``d``.

    ``direction`` is in the compute dtype (>= float32, zero on integer leaves), so the slope and
    the step do not underflow in half precision; only the final update is cast back.
    """
    dtype = grouping.norm_dtype(updates)
    # Re(g^H d): real for complex leaves, and the direction is a positive rescaling of g.
    slope = jnp.real(optax.tree.vdot(guards.upcast(updates), direction)).astype(dtype)
    gap = suboptimality_gap(value, f_min, variant, dtype)
    step = root_step(gap, slope + denominator_eps, max_scale)
    return guards.cast_back(optax.tree.scale(step, direction), updates), step[None]


def _statistic_zeros(params: optax.Params) -> optax.Params:
    """Zeros like ``params`` in a real dtype of at least float32, for per-element statistics."""
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), guards.real_dtype(p)), params)


def _check_variant(variant: str) -> None:
    grouping.check_choice("variant", variant, VARIANTS)


def scale_by_newton_root_adam(
    *,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    f_min: jax.typing.ArrayLike = 0.0,
    max_scale: jax.typing.ArrayLike = math.inf,
    variant: str = "sps",
    denominator_eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Newton-root step along Adam's preconditioned gradient.

    .. math::
      v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2,\quad \hat v = v_t/(1-\beta_2^t),\quad
      d = g / (\sqrt{\hat v} + \epsilon),\quad
      t = \min\left(\frac{L - f^\star}{g^\top d + \epsilon_d}, t_{\max}\right)

    and the update is :math:`t\,d` (no sign flip). No first moment: the direction is the current
    gradient, so :math:`g^\top d > 0` and the step is the root of the linearised loss along
    :math:`d`.

    :math:`v`, :math:`d` and :math:`t` are computed in at least float32 (the update is cast back
    to each leaf's dtype), and an exactly-zero gradient entry has :math:`d = 0` even when
    :math:`\sqrt{\hat v} + \epsilon` is 0, so half precision neither underflows into 0/0 nor
    stalls. Integer leaves get a zero update. A non-finite loss, gradient, moment or update gives
    a zero update, leaves :math:`v` and ``count`` unchanged and increments ``skipped``.

    Args:
      b2: decay of the second moment, in [0, 1) (traceable).
      eps: Adam's epsilon in the preconditioner, finite and >= 0 (traceable).
      f_min: lower bound (guess) of the loss, finite (traceable).
      max_scale: cap :math:`t_{\max}` on the step, >= 0 (traceable).
      variant: ``"sps"`` or ``"sps+"`` (gap clipped at 0).
      denominator_eps: :math:`\epsilon_d` added to :math:`g^\top d`, finite and >= 0 (traceable).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose update needs ``value=`` (the loss).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p**2)
      >>> tx = scale_by_newton_root_adam()
      >>> p = jnp.array([1.0, 1.0]); state = tx.init(p)
      >>> loss, g = jax.value_and_grad(f)(p)
      >>> u, state = tx.update(g, state, p, value=loss)
      >>> bool(jnp.allclose(jnp.vdot(g, u), loss))  # linearised root: g . update = L - f_min
      True

    References:
      Schaipp et al., MoMo (:func:`optax.contrib.momo_adam`), 2023; Abdukhakimov et al.,
      preconditioned SPS, 2023.
    """
    _check_variant(variant)
    guards.check_number("b2", b2, minimum=0.0, maximum=1.0, maximum_exclusive=True)
    guards.check_number("eps", eps, minimum=0.0)
    check_step_hyperparameters(f_min=f_min, max_scale=max_scale, denominator_eps=denominator_eps)

    def init_fn(params: optax.Params) -> NewtonRootAdamState:
        dtype = grouping.norm_dtype(params)
        return NewtonRootAdamState(
            count=jnp.zeros([], jnp.int32),
            nu=_statistic_zeros(params),
            step_scale=jnp.zeros((1,), dtype),
            skipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: optax.Updates,
        state: NewtonRootAdamState,
        params: optax.Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, NewtonRootAdamState]:
        del params, extra_args  # Only the gradient and the loss enter the step.
        count = optax.safe_increment(state.count)
        wide = guards.upcast(updates)
        nu = optax.tree.update_moment_per_elem_norm(wide, state.nu, b2, 2)
        nu = jax.tree.map(lambda new, old: new.astype(old.dtype), nu, state.nu)  # a fixed carry dtype
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        direction = jax.tree.map(lambda g, v: guards.safe_divide(g, jnp.sqrt(v) + eps), wide, nu_hat)
        new_updates, step = _root_step_along(updates, direction, value, f_min, max_scale, denominator_eps, variant)
        new_state = NewtonRootAdamState(
            count=count,
            nu=nu,
            step_scale=step.astype(state.step_scale.dtype),
            skipped=state.skipped,  # counted by the finiteness guard
        )
        return new_updates, new_state

    return guards.skip_non_finite(
        optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_newton_root_adam"
    )


def newton_root_adam(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    f_min: jax.typing.ArrayLike = 0.0,
    max_scale: jax.typing.ArrayLike = math.inf,
    variant: str = "sps",
    denominator_eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Ready optimizer: :func:`scale_by_newton_root_adam`, then :math:`-\eta` (linear in ``learning_rate``).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> f = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p**2)
      >>> opt = newton_root_adam(0.5)
      >>> p = jnp.array([1.0, 1.0]); state = opt.init(p)
      >>> loss, g = jax.value_and_grad(f)(p)
      >>> u, state = opt.update(g, state, p, value=loss)
      >>> bool(f(optax.apply_updates(p, u)) < loss)
      True
    """
    guards.check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_newton_root_adam(
            b2=b2, eps=eps, f_min=f_min, max_scale=max_scale, variant=variant, denominator_eps=denominator_eps
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
