r"""Newton-root step: one Newton root-finding step on the loss, per group of parameters.

For a loss :math:`L` with gradient :math:`g`, the step :math:`p \leftarrow p - \frac{L - f^\star}
{\lVert g\rVert^2} g` is Newton's method for the *root* of :math:`L - f^\star` (not its minimum),
projected onto the gradient: it is the point where the linearised loss reaches :math:`f^\star`.
With one group it is the Polyak step size (:func:`optax.scale_by_polyak`); with several groups
(per leaf, per layer, user labels) each group gets its own step, so a group with small gradients
is not starved by one with large gradients.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab.optimizers import grouping, guards

VARIANTS = ("sps", "sps+")
SHARES = ("equal", "full")


class NewtonRootState(NamedTuple):
    """State of :func:`scale_by_newton_root`."""

    count: jax.Array  # shape=(), int32: steps applied (skipped steps not counted).
    step_scale: jax.Array  # shape=(G,), float >= float32: last step per group (0 on a skipped step).
    grad_sq_norms: jax.Array  # shape=(G,), float >= float32: squared gradient norm per group, last applied step.
    skipped: jax.Array  # shape=(), int32: steps skipped for a non-finite loss, gradient, update or norm.


def suboptimality_gap(value: jax.typing.ArrayLike, f_min: jax.typing.ArrayLike, variant: str, dtype) -> jax.Array:
    """``value - f_min`` in ``dtype``, clipped at 0 for ``variant="sps+"`` (as optax does)."""
    gap = jnp.asarray(value - f_min).astype(dtype)
    return jax.nn.relu(gap) if variant == "sps+" else gap


def root_step(gap: jax.Array, denominator: jax.Array, max_scale: jax.typing.ArrayLike) -> jax.Array:
    """``min(gap / denominator, max_scale)``, and 0 where the denominator is ~0.

    The threshold is ``jnp.finfo(float).eps`` (float64 epsilon), the one
    :func:`optax.scale_by_polyak` uses, so the global step matches it exactly.
    """
    tiny = denominator <= jnp.finfo(float).eps
    # The inner where keeps the division finite, so no inf is ever formed (nor its gradient).
    return jnp.where(tiny, 0.0, jnp.minimum(gap / jnp.where(tiny, 1.0, denominator), max_scale)).astype(gap.dtype)


def scale_by_newton_root(
    scaling: str = "global",
    *,
    f_min: jax.typing.ArrayLike = 0.0,
    max_scale: jax.typing.ArrayLike = math.inf,
    eps: jax.typing.ArrayLike = 0.0,
    variant: str = "sps",
    share: str = "equal",
    layer_labels: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Scales each group of the gradient by its Newton-root (Polyak) step.

    For group :math:`k` with gradient block :math:`g_k` among :math:`G` groups (groups made only of
    integer leaves are not counted: they never move):

    .. math::
      s_k = \min\left(\frac{\Delta_k}{\lVert g_k\rVert^2 + \epsilon}, s_{\max}\right),\qquad
      \Delta_k = \begin{cases} L - f^\star & \text{share="full"}\\
                               (L - f^\star)/G & \text{share="equal"}\end{cases}

    and :math:`s_k = 0` where :math:`\lVert g_k\rVert^2 + \epsilon` is ~0. The update is
    :math:`s_k g_k` (no sign flip; chain :func:`optax.scale_by_learning_rate` or use
    :func:`newton_root`). ``variant="sps+"`` uses :math:`(L - f^\star)_+`.

    ``share`` only matters for more than one group. The default, ``"equal"``, keeps the defining
    property of the step: the linearised loss drop of the whole update,
    :math:`\sum_k s_k\lVert g_k\rVert^2`, is the gap :math:`L - f^\star` (uncapped, ``eps=0``), so
    the update lands on the root of the linearised loss. ``"full"`` (each group removes the whole
    gap on its own, the formula of the per-layer idea in lab note 001) predicts a drop of
    :math:`G` times the gap: even on the separable quadratic :math:`(x-1)^2 + 100(y-2)^2` with
    ``per_leaf``, one step maps :math:`e_x \mapsto e_x/2 - 50 e_y^2/e_x`, which overshoots.

    With ``scaling="global"`` the result equals
    ``optax.scale_by_polyak(f_min, max_learning_rate=max_scale, eps=eps, variant=variant)``
    (squared norms of half-precision gradients are summed in float32 here).

    Precision: squared norms and the step are computed in at least float32 and the update is cast
    back to each leaf's dtype, so a float16 gradient whose :math:`\lVert g\rVert^2` would underflow
    still gets its step. Integer leaves get a zero update and add nothing to the norms.

    A non-finite loss, gradient, squared norm or update (e.g. a float16 update that overflows)
    gives a zero update for that step, leaves ``count`` and the norms unchanged and increments
    ``state.skipped`` (the guard is :func:`optlab.optimizers.guards.skip_non_finite`).

    Args:
      scaling: ``"global"`` (one step), ``"per_leaf"`` (one per array) or ``"per_layer"`` (one per
        parent path, or per label of ``layer_labels``); see :mod:`optlab.optimizers.grouping`.
      f_min: lower bound (guess) of the loss, :math:`f^\star`; finite. Traceable.
      max_scale: cap :math:`s_{\max}` on each step, >= 0 (``inf``: no cap). Traceable.
      eps: added to each squared norm, finite and >= 0. Traceable.
      variant: ``"sps"`` or ``"sps+"``.
      share: ``"equal"`` (default) or ``"full"``: how the gap is shared among the groups.
      layer_labels: with ``scaling="per_layer"``, a pytree of labels like params (or a prefix),
        or a callable ``params -> labels`` (called on the updates tree in ``update``).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose ``update`` needs ``value=`` (the
      loss, a scalar) and ignores other extra arguments. Its state is :class:`NewtonRootState`.

    Raises:
      ValueError: for a choice not listed above, or a concrete ``f_min`` / ``max_scale`` / ``eps``
        out of range (traced values are not checked).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> f = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = scale_by_newton_root()
      >>> p = jnp.array([1.0]); state = tx.init(p)
      >>> loss, g = jax.value_and_grad(f)(p)
      >>> u, state = tx.update(g, state, value=loss)
      >>> p - u  # (x + 3) / 2
      Array([2.], dtype=float32)

    References:
      Loizou et al., `Stochastic Polyak step-size for SGD <https://arxiv.org/abs/2002.10542>`_, 2021.
      Garrigos et al., `Function value learning (SPS+) <https://arxiv.org/abs/2307.14528>`_, 2023.
    """
    grouping.check_choice("scaling", scaling, grouping.SCALINGS)
    grouping.check_choice("variant", variant, VARIANTS)
    grouping.check_choice("share", share, SHARES)
    if layer_labels is not None and scaling != "per_layer":
        raise ValueError(f"layer_labels is only used with scaling='per_layer'; got scaling={scaling!r}")
    check_step_hyperparameters(f_min=f_min, max_scale=max_scale, eps=eps)

    def init_fn(params: optax.Params) -> NewtonRootState:
        _, n_groups, _ = grouping.group_ids(params, scaling, layer_labels)
        dtype = grouping.norm_dtype(params)
        return NewtonRootState(
            count=jnp.zeros([], jnp.int32),
            step_scale=jnp.zeros((n_groups,), dtype),
            grad_sq_norms=jnp.zeros((n_groups,), dtype),
            skipped=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: optax.Updates,
        state: NewtonRootState,
        params: optax.Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, NewtonRootState]:
        del params, extra_args  # Only the gradient and the loss enter the step.
        ids, n_groups, _ = grouping.group_ids(updates, scaling, layer_labels)
        sq_norms = grouping.group_sq_norms(updates, ids, n_groups)
        gap = suboptimality_gap(value, f_min, variant, sq_norms.dtype)
        if share == "equal":
            # Groups of integer leaves only take no step, so they take no share of the gap either.
            trainable = {k for leaf, k in zip(jax.tree.leaves(updates), ids, strict=True) if guards.is_trainable(leaf)}
            gap = gap / max(len(trainable), 1)
        step = root_step(gap, sq_norms + eps, max_scale)
        new_state = NewtonRootState(
            count=optax.safe_increment(state.count),
            step_scale=step.astype(state.step_scale.dtype),
            grad_sq_norms=sq_norms.astype(state.grad_sq_norms.dtype),
            skipped=state.skipped,  # counted by the finiteness guard
        )
        return grouping.scale_groups(updates, step, ids), new_state

    return guards.skip_non_finite(
        optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_newton_root"
    )


def check_step_hyperparameters(**hyperparameters: jax.typing.ArrayLike) -> None:
    """Range checks shared by the Newton-root factories (concrete values only).

    ``f_min`` must be finite, ``max_scale`` >= 0 (``inf`` allowed), and ``eps`` /
    ``denominator_eps`` finite and >= 0.
    """
    rules = {
        "f_min": {},
        "max_scale": {"minimum": 0.0, "allow_inf": True},
        "eps": {"minimum": 0.0},
        "denominator_eps": {"minimum": 0.0},
    }
    for name, value in hyperparameters.items():
        guards.check_number(name, value, **rules[name])


def newton_root(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    scaling: str = "global",
    *,
    f_min: jax.typing.ArrayLike = 0.0,
    max_scale: jax.typing.ArrayLike = math.inf,
    eps: jax.typing.ArrayLike = 0.0,
    variant: str = "sps",
    share: str = "equal",
    layer_labels: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Newton-root optimizer: :func:`scale_by_newton_root` then the (negative) learning rate.

    .. math::
      p_k \leftarrow p_k - \eta\, s_k\, g_k

    ``learning_rate`` :math:`\eta` multiplies the step linearly: ``learning_rate=2`` doubles the
    update. This differs from ``optax.polyak_sgd(scaling=s)`` (optax 0.2.8), which scales the
    gradient *before* measuring its norm, so its update is :math:`-\frac{L - f^\star}
    {s\lVert g\rVert^2} g`, proportional to :math:`1/s`.

    **The clip trap.** Do not clip the gradient *before* this step:
    ``optax.chain(optax.clip_by_global_norm(c), newton_root(...))`` makes the step *longer* when
    the clip binds. The step scale :math:`(L - f^\star)/\lVert g\rVert^2` is measured on the
    clipped gradient, of norm :math:`c`, so it grows as :math:`1/c^2` while the direction shrinks
    as :math:`c`: the update has norm :math:`(L - f^\star)/c`, growing as the clip tightens. On
    :math:`L = x^2` from :math:`x_0 > c` that gives :math:`x \leftarrow x - x^2/c`, which
    diverges. Safe compositions, both bounding the update as clipping is meant to:

    * clip the update *after* the step: ``optax.chain(newton_root(...), optax.clip_by_global_norm(c))``
      (the update norm is at most :math:`c`);
    * or cap the step: ``newton_root(..., max_scale=s)`` (the update is at most
      :math:`\eta\, s\, \lVert g\rVert`).

    Args:
      learning_rate: scalar or schedule ``count -> multiplier`` (:class:`optax.ScalarOrSchedule`);
        a concrete scalar must be finite and >= 0.
      scaling, f_min, max_scale, eps, variant, share, layer_labels: see
        :func:`scale_by_newton_root`.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; ``update`` needs ``value=`` (the loss).
      Works with :func:`optax.inject_hyperparams` (pass ``static_args="layer_labels"`` when
      ``layer_labels`` is a callable, which would otherwise be taken for a schedule).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> f = lambda p: (p - 3.0) ** 2
      >>> opt = newton_root(1.0)
      >>> p = jnp.array(11.0); state = opt.init(p)
      >>> for _ in range(3):
      ...     loss, g = jax.value_and_grad(f)(p)
      ...     u, state = opt.update(g, state, p, value=loss)
      ...     p = optax.apply_updates(p, u)
      >>> p  # 3 + 8 / 2**3
      Array(4., dtype=float32)
    """
    guards.check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_newton_root(
            scaling,
            f_min=f_min,
            max_scale=max_scale,
            eps=eps,
            variant=variant,
            share=share,
            layer_labels=layer_labels,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
