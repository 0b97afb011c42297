"""One training step of :func:`optlab.fit` and the jitted chunk of steps it scans, as pure functions.

A chunk is an outer ``lax.scan`` over trace rows whose body runs ``log_every`` steps (an inner scan for all but
the row's first); each step computes the loss and gradient, skips the update when anything is not finite, tracks
the best loss and early stopping, and adjusts a dynamic loss scale. The conventions (data, extra arguments,
schedule and weight decay, precision, trace rows, early stopping) are documented once, in
:mod:`optlab.engine.loop`; ``fit`` validates the arguments and strings chunks together between checkpoints.

Example:
  >>> flag = _computed_once(jnp.isfinite(jnp.array(1.0)))  # the NaN guard's predicate, materialised once
  >>> bool(flag), bool(_all_finite({"w": jnp.ones(2)}, {"w": jnp.array([1.0, jnp.inf])}))
  (True, False)
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optlab.engine import batching
from optlab.engine import precision
from optlab.engine.batching import batch_at
from optlab.engine.checkpoint import TrainState
from optlab.engine.precision import DynamicLossScale
from optlab.engine.state import StopBlock, _block_every
from optlab.optimizers import grouping

# Optimizer-state fields that count updates the optimizer itself skipped (optlab's Newton-root family, and
# optax.apply_if_finite); fit adds their increases to skipped_steps.
SKIP_COUNTERS = ("skipped", "total_notfinite")


def _conj_complex(grads: Any) -> Any:
    """Conjugates complex gradient leaves: ``jax.grad`` of a real loss returns the conjugate of the steepest-ascent
    direction for a complex parameter, and optax expects the direction itself (as in optax's own complex tests)."""
    return jax.tree.map(lambda g: jnp.conj(g) if jnp.iscomplexobj(g) else g, grads)


def _skip_counters(opt_state: Any) -> list[jax.Array]:
    return [leaf for name in SKIP_COUNTERS for _, leaf in optax.tree.get_all_with_path(opt_state, name)]


def _skipped_inside(old: Any, new: Any) -> jax.Array | None:
    """Whether the optimizer counted this update as skipped (a ``SKIP_COUNTERS`` field grew); None without one."""
    before, after = _skip_counters(old), _skip_counters(new)
    if not after:
        return None
    return functools.reduce(operator.or_, [jnp.any(a > b) for a, b in zip(after, before)])


def _all_finite(grads: Any, updates: Any) -> jax.Array:
    """Whether every gradient and update entry is finite: one reduction per leaf (both trees share its shape)."""
    g_leaves, u_leaves = jax.tree.leaves(grads), jax.tree.leaves(updates)
    if [jnp.shape(g) for g in g_leaves] == [jnp.shape(u) for u in u_leaves]:
        flags = [jnp.all(jnp.isfinite(g) & jnp.isfinite(u)) for g, u in zip(g_leaves, u_leaves)]
    else:  # an optimizer whose updates are not shaped like the parameters
        flags = [jnp.all(jnp.isfinite(leaf)) for leaf in g_leaves + u_leaves]
    return functools.reduce(operator.and_, flags, jnp.asarray(True))


def _computed_once(flag: jax.Array) -> jax.Array:
    """``flag`` (bool), evaluated once per step instead of once per consumer.

    XLA:CPU duplicates cheap elementwise producers into each consumer fusion; under ``vmap`` with one-element
    leaves, the NaN guard and early-stopping predicate (finiteness of every gradient and update leaf, loss
    comparisons) was recomputed inside the select of every parameter and optimizer-state leaf. ``sqrt`` is an op
    XLA never duplicates, so routing the flag through it (``sqrt(0) = 0``, ``sqrt(1) = 1``) materialises it once.
    """
    return jnp.sqrt(flag.astype(jnp.float32)) > 0.5


class _Carry(NamedTuple):
    """The carry of the training scan: the checkpointed state plus the current epoch's example order."""

    state: TrainState  # everything a resume restores
    order: batching.Order | None  # shuffled mini-batches: the epoch's permutation (a function of key and step)


def _make_chunk(loss_of, combine, opt, *, log_every, batch_size, shuffle, schedule, clip, weight_decay,
                early_stop, loss_scale, ids, n_groups, has_step_scale, metrics_fn, record_dtype, end_loss,
                trace_updates):
    """Builds ``run_chunk(state, data, n_rows) -> (state, rows, loss at the final params)``, jitted."""
    dynamic = isinstance(loss_scale, DynamicLossScale)
    every = _block_every(early_stop)  # static: 1 keeps the per-step test (and its compiled program) unchanged

    def row_of(value, grads, lr, opt_state, scale, applied, params):
        # The trace entries derived from one step; computed on logged steps only.
        group_sq = grouping.group_sq_norms(grads, ids, n_groups)
        row = {
            "loss": value,
            "grad_norm": jnp.sqrt(jnp.sum(group_sq)),
            "group_grad_norms": jnp.sqrt(group_sq),
            "lr": lr.astype(jnp.promote_types(lr.dtype, jnp.float32)),
        }
        if has_step_scale:
            row["step_scale"] = jnp.atleast_1d(optax.tree.get_all_with_path(opt_state, "step_scale")[0][1])
        if dynamic:
            row["loss_scale"] = scale
        if trace_updates:
            row["update_ulp_ratio"] = precision.ulp_ratio(applied(), params)
            row["opt_state_finite"] = precision.all_finite(opt_state)
        return row

    def step(carry: _Carry, data: Any, log: bool):
        """One update; with ``log`` also its trace row (gradient norms etc. are computed on logged steps only)."""
        state = carry.state
        t = state.step
        batch, order = batching.next_batch(data, t, state.key, carry.order, batch_size, shuffle)

        def batch_loss(p):
            return loss_of(p, batch)

        scale = state.loss_scale.scale if dynamic else loss_scale

        def scaled_loss(p):
            value = batch_loss(p)
            if dynamic:
                # A float32 copy of the loss times the float32 scale, as DeepSpeed's `loss.float() * scale`: the
                # cotangent enters a float16 graph as the scale rounded to float16, so a scale above 65504 is inf
                # there, the gradient overflows, the step is skipped and the scaler backs off (as in DeepSpeed).
                return value.astype(jnp.promote_types(value.dtype, jnp.float32)) * scale, value
            return (value if loss_scale is None else value * loss_scale), value

        (_, value), grads = jax.value_and_grad(scaled_loss, has_aux=True)(state.params)
        if scale is not None:
            grads = jax.tree.map(lambda g: (g / scale).astype(g.dtype), grads)
        grads = _conj_complex(grads)
        direction = grads if clip is None else optax.clip_by_global_norm(clip).update(grads, optax.EmptyState())[0]
        updates, opt_state = opt.update(
            direction, state.opt_state, state.params, value=value, grad=grads, value_fn=batch_loss
        )
        if weight_decay is not None:
            updates = optax.tree.add_scale(updates, -weight_decay, state.params)
        lr = jnp.ones((), jnp.float32) if schedule is None else jnp.asarray(schedule(t))
        if schedule is not None:
            updates = optax.tree.scale(lr, updates)
        updates = optax.tree.cast_like(updates, state.params)  # no hidden upcast of the parameter add

        running = state.stopped_at < 0
        finite = _computed_once(jnp.isfinite(value) & _all_finite(grads, updates))
        value = value.astype(record_dtype)
        improved = running & (value < state.best_loss)  # False for NaN
        wait, stopped_at, block = state.wait, state.stopped_at, state.stop_block
        if every > 1:
            # Block test: once per block of `every` absolute steps, on the block's mean loss (a NaN in the block makes
            # the mean NaN: no improvement). The block's last update is applied, as an epoch loop that checks after
            # the epoch, so stopped_at is the block's end and still counts the applied updates.
            total = block.loss_sum + value
            ends = (t + 1) % every == 0
            mean = total / every
            check = running & ends
            significant = mean < block.best_mean - early_stop.min_delta
            wait = jnp.where(check, jnp.where(significant, 0, wait + 1), wait)
            stopped_at = jnp.where(check & (wait >= early_stop.patience), t + 1, stopped_at)
            block = StopBlock(jnp.where(ends, jnp.zeros_like(total), total),
                              jnp.where(check & (mean < block.best_mean), mean, block.best_mean))
        elif early_stop is not None:
            significant = value < state.best_loss - early_stop.min_delta
            wait = jnp.where(running, jnp.where(significant, 0, wait + 1), wait)
            stop_now = running & (wait >= early_stop.patience)
            stopped_at = jnp.where(stop_now, t, stopped_at)
            running = _computed_once(running & ~stop_now)
        apply, improved = running & finite, _computed_once(improved)
        skipped = running & ~finite
        inside = _skipped_inside(state.opt_state, opt_state)
        if inside is not None:  # the optimizer kept params itself (its update is 0), and fit counts that step too
            skipped = running & (~finite | inside)
        scaler_state = state.loss_scale
        if dynamic:  # the scaler sees the gradient only (DeepSpeed's overflow test); a frozen run keeps its scale
            adjusted = loss_scale.adjust(state.loss_scale, precision.all_finite(grads))
            scaler_state = optax.tree.where(running, adjusted, state.loss_scale)
        new = TrainState(
            step=t + 1,
            params=optax.tree.where(apply, optax.apply_updates(state.params, updates), state.params),
            opt_state=optax.tree.where(apply, opt_state, state.opt_state),
            key=state.key,
            best_params=optax.tree.where(improved, state.params, state.best_params),
            best_loss=jnp.where(improved, value, state.best_loss),
            best_step=jnp.where(improved, t, state.best_step),
            wait=wait,
            stopped_at=stopped_at,
            skipped=state.skipped + skipped.astype(jnp.int32),
            loss_scale=scaler_state,
            stop_block=block,
        )
        applied = lambda: optax.tree.where(apply, updates, optax.tree.zeros_like(updates))  # noqa: E731
        row = row_of(value, grads, lr, new.opt_state, scale, applied, state.params) if log else None
        return _Carry(new, order), (row, skipped)

    def window(carry: _Carry, data: Any):
        # Metrics at the window's first params; the row holds that step's entries and whether any step skipped.
        metrics = {} if metrics_fn is None else metrics_fn(combine(carry.state.params))
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics_fn must return a dict name -> array, got {type(metrics).__name__}")
        carry, (row, skipped) = step(carry, data, True)
        if log_every > 1:  # the window's other steps record nothing: no norms, no stacked rows
            carry, (_, skips) = lax.scan(lambda c, _: step(c, data, False), carry, length=log_every - 1)
            skipped = skipped | jnp.any(skips)
        row["skipped"] = skipped
        row.update({f"metrics/{name}": jnp.asarray(v) for name, v in metrics.items()})
        return carry, row

    def run_chunk(state: TrainState, data: Any, n_rows: int):
        carry = _Carry(state, batching.init_order(data, state.step, state.key, batch_size, shuffle))
        carry, rows = lax.scan(lambda c, _: window(c, data), carry, length=n_rows)
        state, final = carry.state, None
        if end_loss:  # the loss the next step will record: what best_checkpoint ranks by
            final = loss_of(state.params, batch_at(data, state.step, state.key, batch_size, shuffle))
        return state, rows, final

    jitted = jax.jit(run_chunk, static_argnums=2)
    # The same chunk with one row per step: run_grid(compact_every=...) rebuilds a frozen cell's trace from it
    # (optlab.engine.compaction); built only when asked for.
    options = dict(log_every=1, batch_size=batch_size, shuffle=shuffle, schedule=schedule, clip=clip,
                   weight_decay=weight_decay, early_stop=early_stop, loss_scale=loss_scale, ids=ids,
                   n_groups=n_groups, has_step_scale=has_step_scale, metrics_fn=metrics_fn,
                   record_dtype=record_dtype, end_loss=False, trace_updates=trace_updates)
    jitted.per_step = lambda: jitted if log_every == 1 else _make_chunk(loss_of, combine, opt, **options)
    return jitted
