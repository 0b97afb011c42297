r"""Newton-root step along a Hutchinson estimate of the inverse Hessian diagonal.

The direction is :math:`d = P g` with :math:`P = 1/(\lvert\operatorname{diag} H\rvert + \lambda)`, the diagonal
estimated by Hutchinson's probes (Rademacher :math:`z`, :math:`z \odot Hz` from a forward-over-reverse
Hessian-vector product), optionally as an EMA over steps; the step length is the Newton root of the loss
linearised along :math:`d`, as in :mod:`optlab.optimizers.preconditioned` (which holds the Adam-preconditioned twin
and the shared step).

References:
  Hutchinson, `A stochastic estimator of the trace of the influence matrix for Laplacian
  smoothing splines`, 1990.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from optlab.optimizers import grouping, guards
from optlab.optimizers.newton_root import check_step_hyperparameters
from optlab.optimizers.preconditioned import _check_variant, _root_step_along, _statistic_zeros


class NewtonRootHutchinsonState(NamedTuple):
    """State of :func:`scale_by_newton_root_hutchinson`."""

    count: jax.Array  # shape=(), int32: steps applied.
    key: jax.Array  # uint32 key data of the PRNG key for the next probes.
    hess_diag: optax.Updates  # like params, real float >= float32: (EMA of) the Hutchinson estimate of diag H.
    step_scale: jax.Array  # shape=(1,), float: last step t (0 on a skipped step).
    skipped: jax.Array  # shape=(), int32: steps skipped for a non-finite loss, gradient or estimate.


def hutchinson_diagonal(
    value_fn: Callable[[optax.Params], jax.Array], params: optax.Params, key: jax.Array, n_probes: int
) -> optax.Params:
    r"""Hutchinson estimate of the Hessian diagonal, :math:`\frac1k\sum_i z_i \odot H z_i`.

    Each :math:`z_i` is Rademacher (entries :math:`\pm1`) and :math:`Hz` is a forward-over-reverse
    Hessian-vector product (``jax.jvp`` of ``jax.grad(value_fn)``); the probes are vmapped. The
    estimate is exact for a diagonal Hessian, since then :math:`z \odot H z = \operatorname{diag}(H)
    \odot z^2`.

    Args:
      value_fn: ``params -> scalar loss``.
      params: where the Hessian is taken.
      key: PRNG key.
      n_probes: number of probes :math:`k` (static).

    Returns:
      A pytree like ``params`` (zeros, float32, on integer leaves, which are not differentiated).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p**2)
      >>> hutchinson_diagonal(f, jnp.ones(2), jax.random.key(0), 1)
      Array([ 2., 20.], dtype=float32)
    """
    trainable, frozen = eqx.partition(params, guards.is_trainable)
    estimate = _trainable_hutchinson(lambda p: value_fn(eqx.combine(p, frozen)), trainable, key, n_probes)
    return jax.tree.map(
        lambda e, p: jnp.zeros(jnp.shape(p), jnp.float32) if e is None else e,
        estimate,
        params,
        is_leaf=lambda x: x is None,
    )


def _trainable_hutchinson(
    value_fn: Callable[[optax.Params], jax.Array], params: optax.Params, key: jax.Array, n_probes: int
) -> optax.Params:
    grad_fn = jax.grad(value_fn)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    # One draw for all probes and leaves: a single PRNG call compiles and runs faster than one per leaf.
    probes = jax.random.rademacher(key, (n_probes, flat.size), flat.dtype)

    def one_probe(z_flat: jax.Array) -> optax.Params:
        z = unravel(z_flat)
        _, hz = jax.jvp(grad_fn, (params,), (z,))
        return jax.tree.map(jnp.multiply, z, hz)

    estimates = jax.vmap(one_probe)(probes)
    return jax.tree.map(lambda e: jnp.mean(e, axis=0), estimates)


def _ema_or_first(first: jax.Array, ema: jax.typing.ArrayLike, old: jax.Array, new: jax.Array) -> jax.Array:
    # where(), not a blend with weight 1/0: an old inf must not turn the first estimate into NaN.
    return jnp.where(first, new, ema * old + (1 - ema) * new).astype(old.dtype)


def scale_by_newton_root_hutchinson(
    *,
    n_probes: int = 1,
    damping: jax.typing.ArrayLike = 1e-4,
    ema: jax.typing.ArrayLike = 0.0,
    f_min: jax.typing.ArrayLike = 0.0,
    max_scale: jax.typing.ArrayLike = math.inf,
    seed: jax.typing.ArrayLike = 0,
    variant: str = "sps",
    denominator_eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Newton-root step along the gradient preconditioned by a Hutchinson Hessian diagonal.

    .. math::
      D_t = \begin{cases}\hat D_t & t = 1\\ \beta D_{t-1} + (1-\beta)\hat D_t & t > 1\end{cases},
      \quad d = g / (\lvert D_t\rvert + \lambda),\quad
      t = \min\left(\frac{L - f^\star}{g^\top d + \epsilon_d}, t_{\max}\right)

    with :math:`\hat D_t` the Hutchinson estimate from ``n_probes`` Rademacher probes
    (:func:`hutchinson_diagonal`) and :math:`\beta` = ``ema``. The update is :math:`t\,d` (no
    sign flip). Each step costs ``n_probes`` extra Hessian-vector products. The PRNG key lives in
    the state (seeded by ``seed``) and advances every step. A non-finite loss, gradient or estimate
    gives a zero update, keeps :math:`D` and ``count`` and increments ``skipped`` (the key still
    advances, so the next step draws new probes). :math:`D`, :math:`d` and :math:`t` are kept in
    at least float32 and an exactly-zero gradient entry has :math:`d = 0`; integer leaves get a
    zero update.

    Args:
      n_probes: Rademacher probes per step (static, >= 1).
      damping: :math:`\lambda`, added to :math:`\lvert D\rvert`, finite and >= 0 (traceable).
      ema: :math:`\beta`, EMA decay of the estimate, in [0, 1]; 0 uses the current estimate (traceable).
      f_min: lower bound (guess) of the loss, finite (traceable).
      max_scale: cap :math:`t_{\max}` on the step, >= 0 (traceable).
      seed: seed of the probe PRNG key (traceable integer).
      variant: ``"sps"`` or ``"sps+"``.
      denominator_eps: :math:`\epsilon_d` added to :math:`g^\top d` (traceable).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose update needs ``params``, ``value=``
      (the loss) and ``value_fn=`` (``params -> loss`` of the current batch), as
      :func:`optax.scale_by_zoom_linesearch` takes it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p**2)
      >>> tx = scale_by_newton_root_hutchinson(damping=0.0)
      >>> p = jnp.array([1.0, 1.0]); state = tx.init(p)
      >>> loss, g = jax.value_and_grad(f)(p)
      >>> u, state = tx.update(g, state, p, value=loss, value_fn=f)
      >>> state.hess_diag  # exact for a diagonal Hessian
      Array([ 2., 20.], dtype=float32)

    References:
      Abdukhakimov et al., preconditioned SPS, 2023; Schaipp et al., MoMo, 2023;
      Yao et al., `AdaHessian <https://arxiv.org/abs/2006.00719>`_, 2021.
    """
    _check_variant(variant)
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes={n_probes!r} must be a Python int >= 1 (it fixes the number of probes)")
    guards.check_number("damping", damping, minimum=0.0)
    guards.check_number("ema", ema, minimum=0.0, maximum=1.0)
    check_step_hyperparameters(f_min=f_min, max_scale=max_scale, denominator_eps=denominator_eps)

    def init_fn(params: optax.Params) -> NewtonRootHutchinsonState:
        dtype = grouping.norm_dtype(params)
        return NewtonRootHutchinsonState(
            count=jnp.zeros([], jnp.int32),
            # Raw key data, so optax wrappers that jnp.where / cast the state handle it.
            key=jax.random.key_data(jax.random.key(seed)),
            hess_diag=_statistic_zeros(params),
            step_scale=jnp.zeros((1,), dtype),
            skipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: optax.Updates,
        state: NewtonRootHutchinsonState,
        params: optax.Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        value_fn: Callable[[optax.Params], jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, NewtonRootHutchinsonState]:
        del extra_args  # value_fn carries the batch; nothing else enters the step.
        if value_fn is None:
            raise TypeError(
                "scale_by_newton_root_hutchinson.update needs value_fn=<params -> loss of the current batch> "
                "to estimate the Hessian diagonal"
            )
        if params is None:
            raise ValueError("scale_by_newton_root_hutchinson.update needs params (the Hessian is taken there)")
        key, probe_key = jax.random.split(jax.random.wrap_key_data(state.key))
        estimate = hutchinson_diagonal(value_fn, params, probe_key, n_probes)
        first = state.count == 0
        hess_diag = jax.tree.map(
            lambda old, new: _ema_or_first(first, ema, old, jnp.real(new).astype(old.dtype)),
            state.hess_diag,
            estimate,
        )
        wide = guards.upcast(updates)
        direction = jax.tree.map(lambda g, h: guards.safe_divide(g, jnp.abs(h) + damping), wide, hess_diag)
        new_updates, step = _root_step_along(updates, direction, value, f_min, max_scale, denominator_eps, variant)
        new_state = NewtonRootHutchinsonState(
            count=optax.safe_increment(state.count),
            key=jax.random.key_data(key),
            hess_diag=hess_diag,
            step_scale=step.astype(state.step_scale.dtype),
            skipped=state.skipped,  # counted by the finiteness guard
        )
        return new_updates, new_state

    return guards.skip_non_finite(
        optax.GradientTransformationExtraArgs(init_fn, update_fn),
        "scale_by_newton_root_hutchinson",
        always_advance=("key",),
    )


def newton_root_hutchinson(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    n_probes: int = 1,
    damping: jax.typing.ArrayLike = 1e-4,
    ema: jax.typing.ArrayLike = 0.0,
    f_min: jax.typing.ArrayLike = 0.0,
    max_scale: jax.typing.ArrayLike = math.inf,
    seed: jax.typing.ArrayLike = 0,
    variant: str = "sps",
    denominator_eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Ready optimizer: :func:`scale_by_newton_root_hutchinson`, then :math:`-\eta`.

    ``update`` needs ``params``, ``value=`` and ``value_fn=``. With ``optax.inject_hyperparams``
    pass ``static_args="n_probes"`` (it fixes array shapes).
    """
    guards.check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_newton_root_hutchinson(
            n_probes=n_probes,
            damping=damping,
            ema=ema,
            f_min=f_min,
            max_scale=max_scale,
            seed=seed,
            variant=variant,
            denominator_eps=denominator_eps,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
