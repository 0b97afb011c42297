"""``fit``: one pure training loop, a ``lax.scan`` of optax steps under ``jit``, itself vmappable.

One step at ``t`` (``t`` = updates done so far):

.. math::
  \\ell_t, g_t = \\mathrm{value\\_and\\_grad}(L)(\\theta_t, B_t), \\quad
  u_t = \\eta_t \\, (\\mathrm{opt}(\\mathrm{clip}(g_t)) - \\lambda \\theta_t), \\quad
  \\theta_{t+1} = \\theta_t + u_t

with :math:`\\eta_t` the ``schedule`` multiplier and :math:`\\lambda` the ``weight_decay``. The step is skipped
(parameters and optimizer state kept) when :math:`\\ell_t`, :math:`g_t` or :math:`u_t` is not finite, and no step
is applied from the early-stopping step on.

Conventions (chosen here, documented once):

* Data. ``batch_size=None`` passes the whole ``data`` pytree every step. Otherwise an epoch is
  ``n // batch_size`` steps (the last partial batch is dropped); step ``t`` uses batch ``t % per_epoch`` of epoch
  ``t // per_epoch``, in the order ``permutation(fold_in(key, epoch), n)`` when ``shuffle`` and ``0..n-1``
  otherwise. The batch is a function of ``(key, t)`` only, which makes chunked and resumed runs bit-identical;
  the permutation is drawn once per epoch, also under ``vmap`` (:mod:`optlab.engine.batching`).
* Extra arguments. The optimizer gets ``value=`` (the loss), ``grad=`` (the raw gradient) and ``value_fn=``
  (``params -> loss`` on the current batch), so ``optax.polyak_sgd``, Newton-root optimizers and optax line
  searches work; plain optimizers ignore them (``optax.with_extra_args_support``).
* Schedule and weight decay. ``schedule(t)`` is evaluated at the global step (also after a resume) and multiplies
  the whole update, decoupled weight decay included, as in Loshchilov & Hutter's AdamW (decay multiplied by the
  schedule, not by the optimizer's learning rate). So ``fit(opt=optax.adam(lr), weight_decay=lr * wd)`` equals
  ``optax.adamw(lr, weight_decay=wd)``. ``trace["lr"]`` records the multiplier (1.0 when ``schedule`` is None).
* Precision. Inexact leaves of params are cast to ``dtype`` and data to ``compute_dtype`` (default ``dtype``);
  with another ``compute_dtype`` (mixed precision) the params are float32 master weights cast to it inside the
  loss. Updates are cast to the parameter dtype before they are added, so a float16 update below half an ulp
  leaves the parameter unchanged. Only diagnostics (losses in the trace, gradient norms) are kept in at least
  float32. Dynamic loss scaling: :mod:`optlab.engine.precision`.
* Trace. One row per ``log_every`` steps (an outer scan over rows; a row's first step computes its entries, an
  inner scan runs the window's other steps without computing any): row ``r`` holds the loss, gradient norms,
  schedule value, step scale and metrics of step ``r * log_every`` (loss and metrics at the parameters before that
  update); ``"skipped"`` is whether any step of the window was skipped. Gradient norms are computed in at least
  float32 (a float16 sum of squares overflows).
* Early stopping. ``best_*`` track the lowest loss seen; ``wait`` counts steps since the loss last beat the best by
  more than ``min_delta``; at the step where ``wait >= patience`` the run freezes (that update is not applied) and
  ``stopped_at`` is that step, i.e. the number of applied updates. Losses are per-batch losses.

Example:
  >>> loss = lambda p, batch: jnp.sum((p - 3.0) ** 2)
  >>> result = fit(loss, jnp.zeros(2), optax.sgd(0.1), steps=100)
  >>> result.trace["loss"].shape
  (100,)
  >>> # float16 compute, float32 master weights, DeepSpeed's dynamic loss scale: 2^16 is inf in float16, so the
  >>> # first steps overflow and are skipped (the first overflow only spends the hysteresis) while the scale backs off
  >>> mixed = fit(loss, jnp.zeros(2), optax.adam(0.1), steps=4, compute_dtype="float16",
  ...             loss_scale=DynamicLossScale())
  >>> mixed.params.dtype, mixed.trace["loss_scale"].tolist(), int(mixed.skipped_steps)
  (dtype('float32'), [65536.0, 65536.0, 32768.0, 16384.0], 4)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import operator
import os
import pathlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import io_callback

from optlab.engine import batching
from optlab.engine import checkpoint as ckpt
from optlab.engine import precision
from optlab.engine.batching import batch_at
from optlab.engine.checkpoint import TrainState
from optlab.engine.precision import DynamicLossScale
from optlab.optimizers import grouping

DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")
# A complex dtype names the precision of both kinds of leaves: its real twin for real leaves, itself for complex.
_REAL_OF = {"complex64": "float32", "complex128": "float64"}
_COMPLEX_OF = {"float32": jnp.complex64, "float64": jnp.complex128}
# Optimizer-state fields that count updates the optimizer itself skipped (optlab's Newton-root family, and
# optax.apply_if_finite); fit adds their increases to skipped_steps.
SKIP_COUNTERS = ("skipped", "total_notfinite")
GROUPS = ("per_layer", "per_leaf", "global")


class EarlyStop(NamedTuple):
    """Early stopping inside ``jit``: freeze after ``patience`` steps without a loss drop larger than ``min_delta``.

    A step improves when its loss is below ``best_loss - min_delta``; a non-finite loss never improves. Losses are
    those ``fit`` records (per-batch with mini-batches).

    Example:
      >>> # fit(loss, params, optax.adam(1e-3), steps=10_000, early_stop=EarlyStop(patience=200, min_delta=1e-6))
    """

    patience: Any  # int >= 1 (may be traced): steps without a significant improvement before the run freezes
    min_delta: Any = 0.0  # >= 0: a loss below best - min_delta counts as an improvement


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    params: Any  # parameters after the last applied update
    best_params: Any  # parameters whose (pre-update) loss was the lowest seen
    trace: dict[str, jax.Array]  # name -> rows, leading length steps // log_every
    best_step: jax.Array  # () int32: step of best_loss, -1 when no loss was finite
    best_loss: jax.Array  # () float: lowest finite loss (inf when none)
    stopped_at: jax.Array  # () int32: step where early stopping froze the run, `steps` when it never stopped
    skipped_steps: jax.Array  # () int32: steps skipped for a non-finite loss, gradient or update
    opt_state: Any  # optimizer state after the last step
    state: TrainState | None = None  # the final training state: fit(start=state) continues it bit-identically


def _is_traced(*trees: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return operator.index(value)


def _nonnegative(name: str, value: Any, *, strict: bool) -> None:
    if value is None or _is_traced(value):
        return
    number = float(np.asarray(value))
    if not (number > 0 if strict else number >= 0) or not np.isfinite(number):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {value!r}")


def _resolve_dtype(dtype: Any) -> jnp.dtype:
    """The real compute dtype named by ``dtype`` (a complex dtype names its real twin)."""
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed values: {DTYPES}")
    name = _REAL_OF.get(name, name)
    if name == "float64" and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError(
            f"dtype={dtype!r} needs 64-bit JAX: run inside `with jax.enable_x64(True):` or set JAX_ENABLE_X64=1"
        )
    return jnp.dtype(name)


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    """Casts real inexact leaves to ``dtype`` and complex leaves to its complex twin; integer and boolean leaves are kept.

    Casting a complex leaf to a real dtype would silently drop its imaginary part, so a complex leaf with a real
    dtype that has no complex twin (float16, bfloat16) is refused.
    """
    def cast(x):
        x = jnp.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else x
        if not eqx.is_inexact_array(x):
            return x
        if jnp.iscomplexobj(x):
            if dtype.name not in _COMPLEX_OF:
                raise ValueError(
                    f"dtype={dtype.name!r} has no complex twin for a complex leaf; use dtype='complex64' "
                    "(float32 / complex64) or 'complex128'"
                )
            return x.astype(_COMPLEX_OF[dtype.name])
        return x.astype(dtype)
    return jax.tree.map(cast, tree)


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


def _group_ids(params: Any, groups: Any) -> tuple[tuple[int, ...], int, tuple[str, ...]]:
    if isinstance(groups, str):
        grouping.check_choice("groups", groups, GROUPS)
        return grouping.group_ids(params, groups)
    return grouping.group_ids(params, "per_layer", layer_labels=groups)


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
        wait, stopped_at = state.wait, state.stopped_at
        if early_stop is not None:
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

    return jax.jit(run_chunk, static_argnums=2)


def _concat(parts: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    parts = [p for p in parts if p]
    if len(parts) == 1:
        return parts[0]
    return {name: jnp.concatenate([p[name] for p in parts]) for name in parts[-1]}


class GridCell(NamedTuple):
    """Where one ``run_grid`` cell keeps its checkpoints; set by ``run_grid(checkpoint_every=...)`` while it traces."""

    every: int  # steps between checkpoints
    directory: pathlib.Path  # the grid's checkpoint_dir; the cell writes under cell_dir(directory, cell)
    cell: jax.Array  # () int32 (traced): the cell's index in the grid, -1 for padding cells (not written)


_GRID_CELL: contextvars.ContextVar[list | None] = contextvars.ContextVar("optlab_grid_cell", default=None)


def cell_dir(directory: str | os.PathLike, cell: int) -> pathlib.Path:
    """``directory / cell_{cell:06d}``: the checkpoint folder of grid cell ``cell`` (its row in the GridResult)."""
    return pathlib.Path(directory) / f"cell_{int(cell):06d}"


@contextlib.contextmanager
def grid_cell(cell: GridCell):
    """Scope in which the (single) ``fit`` call of a grid cell checkpoints through ``cell``; used by run_grid.

    Yields a list that holds True once a ``fit`` call has taken the cell, so run_grid can tell a cell function
    that never calls ``fit`` (nothing would be checkpointed).
    """
    slot = [cell, False]
    token = _GRID_CELL.set(slot)
    try:
        yield slot
    finally:
        _GRID_CELL.reset(token)


def _take_grid_cell() -> GridCell | None:
    slot = _GRID_CELL.get()
    if slot is None:
        return None
    if slot[1]:
        raise ValueError(
            "run_grid(checkpoint_every=...) checkpoints one fit per cell, but the cell function called fit twice; "
            "checkpoint one of them with fit(checkpoint_every=..., checkpoint_dir=...) outside the grid instead"
        )
    slot[1] = True
    return slot[0]


def _write_cell(directory: pathlib.Path, key_impl: str, log_every: int, payload: Any) -> None:
    # Host side of the in-program checkpoint: called once per cell (io_callback runs vmapped cells one by one).
    state, trace, final, cell = jax.tree.map(np.asarray, payload)
    if int(cell) < 0:  # a padding cell repeats a real one
        return
    state = state._replace(key=jax.random.wrap_key_data(state.key, impl=key_impl))
    ckpt.save_checkpoint(ckpt.checkpoint_path(cell_dir(directory, cell), int(state.step)), state, trace,
                         loss=final, log_every=log_every)


def _save_in_program(cell: GridCell, state: TrainState, trace: dict, final: jax.Array, log_every: int) -> None:
    """Checkpoints ``state`` from inside the compiled grid with an (unordered) ``io_callback``.

    Unordered is enough: each cell and step writes its own file, and the callback depends on the chunk's state, so
    it runs after that state exists; run_grid waits for all callbacks (``jax.effects_barrier``) before returning.
    """
    key_impl = str(jax.random.key_impl(state.key))
    payload = (state._replace(key=jax.random.key_data(state.key)), trace, final, cell.cell)
    io_callback(functools.partial(_write_cell, cell.directory, key_impl, log_every), None, payload, ordered=False)


_BATCHING = "fit/batching"  # stored-trace entry [batch_size (-1: full batch), shuffle]: checked on resume


def _batching_tag(batch_size: int | None, shuffle: bool) -> dict[str, jax.Array]:
    return {_BATCHING: jnp.asarray([-1 if batch_size is None else batch_size, int(shuffle)], jnp.int32)}


def _check_batching(path: Any, stored: dict, batch_size: int | None, shuffle: bool) -> dict:
    """Refuses a resume whose mini-batches differ from the checkpoint's (the batch order would silently change)."""
    tag = stored.pop(_BATCHING, None)
    if tag is None:  # written before fit recorded its batching
        return stored
    stored_size, stored_shuffle = (int(v) for v in np.asarray(tag))
    stored_size = None if stored_size < 0 else stored_size
    if stored_size != batch_size:
        raise ValueError(
            f"resume_from={str(path)!r} was written with batch_size={stored_size}, got batch_size={batch_size}: "
            "the batch order would change; resume with the same batch_size (or start a new run with start=)"
        )
    if bool(stored_shuffle) != shuffle:
        warnings.warn(f"{path}: written with shuffle={bool(stored_shuffle)}, resumed with shuffle={shuffle}: the "
                      "batch order changes from here on", stacklevel=3)
    return stored


def _fresh_state(trainable: Any, opt: optax.GradientTransformation, key: jax.Array, record_dtype: Any,
                 loss_scale: Any = None) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        opt_state=opt.init(trainable),
        key=key,
        best_params=trainable,
        best_loss=jnp.full((), jnp.inf, record_dtype),
        best_step=jnp.full((), -1, jnp.int32),
        wait=jnp.zeros((), jnp.int32),
        stopped_at=jnp.full((), -1, jnp.int32),
        skipped=jnp.zeros((), jnp.int32),
        loss_scale=loss_scale.init() if isinstance(loss_scale, DynamicLossScale) else None,
    )


def _same_layout(name: str, given: Any, expected: Any) -> None:
    given_def, expected_def = jax.tree.structure(given), jax.tree.structure(expected)
    if given_def != expected_def:
        raise ValueError(f"{name} must have the structure of fit's {name.split('.')[-1]}: got {given_def}, "
                         f"expected {expected_def}")
    for g, e in zip(jax.tree.leaves(given), jax.tree.leaves(expected)):
        if jnp.shape(g) != jnp.shape(e):
            raise ValueError(f"{name} has a leaf of shape {jnp.shape(g)} where fit expects {jnp.shape(e)}")


def _fill_start(start: TrainState, fresh: TrainState, opt, dtype, record_dtype, reset_optimizer_state) -> TrainState:
    """``start`` with its None fields taken from ``fresh`` (and a fresh optimizer state from start's params)."""
    params = fresh.params if start.params is None else start.params
    if start.params is not None:
        _same_layout("start.params", params, fresh.params)
        params = _cast(params, dtype)
    opt_state = start.opt_state
    if opt_state is None or reset_optimizer_state:
        opt_state = opt.init(params)
    else:
        _same_layout("start.opt_state", opt_state, fresh.opt_state)
    best_params = params if start.best_params is None else _cast(start.best_params, dtype)
    if start.best_params is not None:
        _same_layout("start.best_params", best_params, fresh.params)
    key = fresh.key if start.key is None else start.key
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)

    def scalar(value, default, dtype_):
        return default if value is None else jnp.asarray(value).astype(dtype_)

    scaler = fresh.loss_scale
    if start.loss_scale is not None:
        if fresh.loss_scale is None:
            raise ValueError("start.loss_scale holds a dynamic loss scaler's state, but this fit has none: pass "
                             "loss_scale=DynamicLossScale(...) or start.loss_scale=None")
        scaler = precision.LossScaleState(*(scalar(v, d, jnp.asarray(d).dtype)
                                            for v, d in zip(start.loss_scale, fresh.loss_scale)))

    return TrainState(
        step=scalar(start.step, fresh.step, jnp.int32),
        params=params,
        opt_state=opt_state,
        key=key,
        best_params=best_params,
        best_loss=scalar(start.best_loss, fresh.best_loss, record_dtype),
        best_step=scalar(start.best_step, fresh.best_step, jnp.int32),
        wait=scalar(start.wait, fresh.wait, jnp.int32),
        stopped_at=scalar(start.stopped_at, fresh.stopped_at, jnp.int32),
        skipped=scalar(start.skipped, fresh.skipped, jnp.int32),
        loss_scale=scaler,
    )


def start_state(
    params: Any = None,
    opt_state: Any = None,
    *,
    step: Any = None,
    key: jax.Array | None = None,
    best_params: Any = None,
    best_loss: Any = None,
    best_step: Any = None,
    wait: Any = None,
    stopped_at: Any = None,
    skipped: Any = None,
    loss_scale: Any = None,
) -> TrainState:
    """A partial :class:`TrainState` for ``fit(start=...)``: fields left None are filled by ``fit``.

    Filled values: ``params`` from fit's ``params``, ``opt_state`` from ``optimizer.init(params)`` (a moment
    reset), ``key`` from fit's ``key``, ``step`` 0, ``best_params`` the start params, ``best_loss`` inf, ``best_step``
    / ``stopped_at`` -1, ``wait`` / ``skipped`` 0, ``loss_scale`` (a :class:`~optlab.engine.precision.LossScaleState`,
    only with ``fit(loss_scale=DynamicLossScale(...))``) the scaler's initial state. Every field may be a traced
    array (vmap over cells' states).
    ``params`` are the trainable (inexact-array) leaves, as in a checkpoint's ``state.params``.

    Args:
      params, opt_state, step, key, best_params, best_loss, best_step, wait, stopped_at, skipped, loss_scale: as in
        :class:`TrainState`.

    Returns:
      A :class:`TrainState` whose missing fields are None.

    Example:
      >>> s = load_state(best_checkpoint("ckpt"), params, optax.adam(1e-3))       # doctest: +SKIP
      >>> fit(loss, params, optax.sgd(1e-2), steps=500, start=start_state(s.params, step=s.step))  # doctest: +SKIP
    """
    return TrainState(step, params, opt_state, key, best_params, best_loss, best_step, wait, stopped_at, skipped,
                      loss_scale)


def load_state(
    path: str | os.PathLike,
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    dtype: Any = "float32",
    reset_optimizer_state: bool = False,
    loss_scale: Any = None,
) -> TrainState:
    """Loads a checkpoint written by ``fit`` into a :class:`TrainState` for ``fit(start=...)``, on the host.

    Args:
      path: the checkpoint (e.g. ``best_checkpoint(folder)``, or one of ``cell_dir(grid_dir, i)``).
      params: the parameters passed to the ``fit`` that wrote it (their structure, shapes and dtypes).
      optimizer: that fit's optimizer (the layout of the stored optimizer state).
      dtype: that fit's ``dtype``.
      reset_optimizer_state: drop the stored optimizer state (``opt_state`` None: ``fit`` re-initialises it).
      loss_scale: that fit's ``loss_scale`` (a :class:`DynamicLossScale` stores its state in the checkpoint).

    Returns:
      The stored :class:`TrainState` (a stacked list of them vmaps: ``jax.tree.map(lambda *x: jnp.stack(x), ...)``).

    Example:
      >>> state = load_state(best_checkpoint("ckpt"), params, optax.adam(1e-3))  # doctest: +SKIP
      >>> fit(loss, params, optax.adam(1e-3), steps=100, start=state._replace(stopped_at=-1, wait=0))  # doctest: +SKIP
    """
    dtype = _resolve_dtype(dtype)
    trainable = _cast(eqx.partition(params, eqx.is_inexact_array)[0], dtype)
    opt = optax.with_extra_args_support(optimizer)
    like = _fresh_state(trainable, opt, jax.random.key(0), jnp.promote_types(dtype, jnp.float32), loss_scale)
    with jax.ensure_compile_time_eval():
        loaded = ckpt.load_checkpoint(path, like._replace(opt_state=None) if reset_optimizer_state else like)
    return loaded.state


def fit(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    key: jax.Array | None = None,
    data: Any = None,
    batch_size: int | None = None,
    shuffle: bool = True,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    clip: Any = None,
    weight_decay: Any = None,
    early_stop: EarlyStop | None = None,
    dtype: Any = "float32",
    compute_dtype: Any = None,
    loss_scale: Any = None,
    trace_updates: bool = False,
    log_every: int = 1,
    metrics_fn: Callable[[Any], Mapping[str, jax.Array]] | None = None,
    groups: Any = "per_layer",
    checkpoint_every: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    reset_optimizer_state: bool = False,
    start: TrainState | None = None,
    overwrite_checkpoints: bool = False,
) -> FitResult:
    """Runs ``steps`` optimizer steps of ``optimizer`` on ``loss_fn`` as one jitted ``lax.scan``.

    Args:
      loss_fn: ``(params, batch) -> scalar``; ``batch`` is None without ``data``, all of ``data`` without
        ``batch_size``, else a mini-batch (leading axis ``batch_size``).
      params: initial parameters (pytree or equinox Module; only inexact-array leaves are trained).
      optimizer: any optax ``GradientTransformation`` (extra args ``value``/``grad``/``value_fn`` are passed).
      steps: number of optimizer steps, >= 1.
      key: PRNG key for the data order (required when drawing shuffled mini-batches).
      data: pytree of arrays with a shared leading example axis, or None.
      batch_size: mini-batch size (<= number of examples), None for full batch.
      shuffle: per-epoch permutation (True) or fixed order (False) of mini-batches.
      schedule: ``step -> multiplier`` of the update (see :mod:`optlab.engine.schedules`), None for 1.
      clip: global-norm clipping threshold applied to the gradient before the optimizer, None for none. Not for
        Newton-root optimizers: their step grows as 1/c² while the clipped gradient shrinks as c, so clipping
        before the step lengthens it; bound them with ``max_scale`` or clip the update after the step.
      weight_decay: decoupled weight decay per step (times the schedule), None for none.
      early_stop: :class:`EarlyStop` or None.
      dtype: ``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"`` (needs x64), ``"complex64"`` or
        ``"complex128"`` (needs x64) for params, data, compute. Complex leaves stay complex: a real dtype casts them
        to its complex twin (float32 -> complex64, float64 -> complex128; float16 / bfloat16 have none and are
        refused for complex leaves), a complex dtype casts real leaves to its real twin. Gradients of complex
        leaves are conjugated before the optimizer (the optax convention: ``jax.grad`` returns the conjugate of
        the steepest-ascent direction).
      compute_dtype: mixed precision: the dtype the loss and its gradient are computed in, None for ``dtype``.
        Params (the master weights) and the optimizer state stay in ``dtype``; each step casts them to
        ``compute_dtype`` for the loss (data is cast to ``compute_dtype``), and the gradient flows back through the
        cast into ``dtype``. ``dtype="float32", compute_dtype="float16"`` is float16 compute with float32 master
        weights and moments; ``dtype="float16"`` alone is pure float16 (optax's Adam then keeps float16 moments,
        where its ``eps=1e-8`` rounds to 0).
      loss_scale: a number: multiply the loss by it before differentiating and divide the gradient after (static
        scaling; it multiplies the loss in its own dtype). A :class:`~optlab.engine.precision.DynamicLossScale`:
        DeepSpeed-style dynamic scaling (the float32 scale multiplies a float32 copy of the loss; on a non-finite
        gradient the step is skipped and the scale halves once the hysteresis is spent; it doubles after
        ``window`` good steps); its state is ``TrainState.loss_scale`` (checkpointed, resumable, vmappable) and
        ``trace["loss_scale"]`` records the scale each logged step used.
      trace_updates: also record ``trace["update_ulp_ratio"]`` (max over entries of ``|applied update| /
        (ulp(param) / 2)``, :func:`~optlab.engine.precision.ulp_ratio`; below 1 no parameter entry changed; 0 on
        a skipped or frozen step) and ``trace["opt_state_finite"]`` (whether every inexact leaf of the optimizer
        state kept after the step is finite: float16 moments can hold inf while the update stays finite). Off:
        nothing extra is computed.
      log_every: steps per trace row; must divide ``steps``.
      metrics_fn: ``params -> {name: array}`` recorded as ``trace["metrics/<name>"]``.
      groups: split for ``trace["group_grad_norms"]``: ``"per_layer"``, ``"per_leaf"``, ``"global"``, or a labels
        pytree / callable (as ``layer_labels`` of the Newton-root optimizers).
      checkpoint_every: save a checkpoint every this many steps (a multiple of ``log_every``) and at the end.
      checkpoint_dir: where checkpoints go (one file ``checkpoint_{step:06d}.eqx`` each). Not under ``jit`` /
        ``vmap``, except inside ``run_grid(checkpoint_every=..., checkpoint_dir=...)``, which checkpoints the cell's
        one ``fit`` call from inside the compiled grid (``io_callback``) under ``cell_dir(checkpoint_dir, cell)``.
      resume_from: a checkpoint file to continue from; its step must be <= ``steps``. Its stored key, counters and
        trace are used; the result is bit-identical to an uninterrupted run. It is loaded on the host, so this also
        works under ``jit`` / ``vmap`` (every cell resumes from the same file). The ``batch_size`` must be the one
        the checkpoint was written with (ValueError otherwise; another ``shuffle`` warns).
      reset_optimizer_state: on resume (or with ``start``), ignore the stored optimizer state and use
        ``optimizer.init(params)``. This also happens (with a warning) when the stored state of ``resume_from``
        does not fit ``optimizer`` (another optimizer).
      start: a :class:`TrainState` to continue from, as arrays (may be traced: vmap over cells' states); fields
        left None are filled as in :func:`start_state`. Unlike ``resume_from``, fit then runs ``steps`` *further*
        steps (global steps ``start.step ... start.step + steps - 1``: the schedule sees the global step) and the
        trace holds only those rows. A per-cell ``start.step`` (batched under vmap) is supported; the batch order
        is then redrawn with a select instead of a branch (slower with shuffled mini-batches).
      overwrite_checkpoints: a ``checkpoint_dir`` holding another run's checkpoints is refused (CheckpointError,
        before any work) unless this is True, which deletes them. A run resumed from a checkpoint continues its run.

    Returns:
      A :class:`FitResult` (``stopped_at`` is the final step when the run never stopped); ``trace`` has ``"loss"``, ``"grad_norm"``, ``"group_grad_norms"`` (rows, G),
      ``"lr"``, ``"skipped"``, ``"step_scale"`` (rows, G) when the optimizer state has one, ``"metrics/*"``,
      ``"loss_scale"`` with a dynamic scaler and ``"update_ulp_ratio"`` / ``"opt_state_finite"`` with
      ``trace_updates``.

    Example:
      >>> loss = lambda p, batch: jnp.mean((batch["x"] @ p - batch["y"]) ** 2)
      >>> data = {"x": jnp.ones((8, 2)), "y": jnp.ones(8)}
      >>> run = lambda lr, key: fit(loss, jnp.zeros(2), optax.adam(lr), steps=40, data=data, batch_size=4,
      ...                           key=key).trace["loss"]
      >>> jax.vmap(run)(jnp.array([0.01, 0.1]), jax.random.split(jax.random.key(0), 2)).shape
      (2, 40)
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (params, batch) -> scalar, got {loss_fn!r}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    steps = _int_arg("steps", steps, 1)
    log_every = _int_arg("log_every", log_every, 1)
    if steps % log_every:
        raise ValueError(f"log_every={log_every} must divide steps={steps} (the trace has steps // log_every rows)")
    dtype = _resolve_dtype(dtype)
    if batch_size is not None:
        batch_size = _int_arg("batch_size", batch_size, 1)
        if data is None:
            raise ValueError("batch_size needs data: pass data= (arrays with a leading example axis)")
        if batch_size > (n := batching.n_examples(data)):
            raise ValueError(f"batch_size={batch_size} exceeds the number of examples n={n}")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
    for name, fn in (("schedule", schedule), ("metrics_fn", metrics_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {fn!r}")
    _nonnegative("clip", clip, strict=True)
    _nonnegative("weight_decay", weight_decay, strict=False)
    compute_dtype = dtype if compute_dtype is None else _resolve_dtype(compute_dtype)
    if isinstance(loss_scale, DynamicLossScale):
        loss_scale.check()
    else:
        _nonnegative("loss_scale", loss_scale, strict=True)
    if not isinstance(trace_updates, bool):
        raise TypeError(f"trace_updates must be True or False, got {trace_updates!r}")
    if early_stop is not None:
        if not isinstance(early_stop, EarlyStop):
            raise TypeError(f"early_stop must be EarlyStop(patience, min_delta) or None, got {early_stop!r}")
        if not _is_traced(early_stop.patience):
            _int_arg("early_stop.patience", early_stop.patience, 1)
        _nonnegative("early_stop.min_delta", early_stop.min_delta, strict=False)
    if checkpoint_every is not None:
        checkpoint_every = _int_arg("checkpoint_every", checkpoint_every, 1)
        if checkpoint_every % log_every:
            raise ValueError(f"checkpoint_every={checkpoint_every} must be a multiple of log_every={log_every}")
    if (checkpoint_every is None) != (checkpoint_dir is None):
        raise ValueError("checkpoint_every and checkpoint_dir go together: pass both or neither")
    if not isinstance(overwrite_checkpoints, bool):
        raise TypeError(f"overwrite_checkpoints must be True or False, got {overwrite_checkpoints!r}")
    run_id = None if checkpoint_dir is None else ckpt.start_run(checkpoint_dir, resume_from,
                                                                overwrite=overwrite_checkpoints)
    if reset_optimizer_state and resume_from is None and start is None:
        raise ValueError("reset_optimizer_state=True only applies with resume_from=<checkpoint> or start=<state>")
    if start is not None:
        if not isinstance(start, TrainState):
            raise TypeError(f"start must be a TrainState (see start_state / load_state) or None, got {start!r}")
        if resume_from is not None:
            raise ValueError("pass resume_from=<checkpoint> or start=<TrainState>, not both")
    cell = _take_grid_cell()
    if cell is not None:
        if checkpoint_every is not None:
            raise ValueError("this fit runs in run_grid(checkpoint_every=...): leave checkpoint_every / "
                             "checkpoint_dir to run_grid")
        if cell.every % log_every:
            raise ValueError(f"run_grid checkpoint_every={cell.every} must be a multiple of log_every={log_every}")
        checkpoint_every = cell.every
    if key is None:
        if batch_size is not None and shuffle:
            raise ValueError("key is required to shuffle mini-batches (batch_size set, shuffle=True)")
        key = jax.random.key(0)  # unused: the data order does not depend on it
    elif not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)

    trainable, static = eqx.partition(params, eqx.is_inexact_array)
    trainable = _cast(trainable, dtype)
    data = _cast(data, compute_dtype)

    def combine(p):
        return eqx.combine(p, static)

    def loss_of(p, batch):
        # Mixed precision: the master weights p are cast for the loss; its gradient flows back through the cast.
        return loss_fn(combine(p if compute_dtype == dtype else _cast(p, compute_dtype)), batch)

    opt = optax.with_extra_args_support(optimizer)
    record_dtype = jnp.promote_types(dtype, jnp.float32)
    ids, n_groups, _ = _group_ids(trainable, groups)
    state = _fresh_state(trainable, opt, key, record_dtype, loss_scale)
    opt_state = state.opt_state
    first, total, stored = 0, steps, None
    if resume_from is not None:
        # Loaded on the host even when fit is traced (jit / vmap): the file's arrays become constants of the program.
        with jax.ensure_compile_time_eval():
            state, first, stored = ckpt.resume(resume_from, state, opt.init, steps=steps, log_every=log_every,
                                               reset_optimizer_state=reset_optimizer_state)
        stored = _check_batching(resume_from, dict(stored), batch_size, shuffle)
    elif start is not None:
        state = _fill_start(start, state, opt, dtype, record_dtype, reset_optimizer_state)

    run_chunk = _make_chunk(
        loss_of, combine, opt, log_every=log_every, batch_size=batch_size, shuffle=shuffle, schedule=schedule,
        clip=clip, weight_decay=weight_decay, early_stop=early_stop, loss_scale=loss_scale, ids=ids,
        n_groups=n_groups, has_step_scale=bool(optax.tree.get_all_with_path(opt_state, "step_scale")),
        metrics_fn=metrics_fn, record_dtype=record_dtype, end_loss=checkpoint_every is not None,
        trace_updates=trace_updates,
    )
    # Chunk ends: multiples of checkpoint_every, counted from step 0 of the run (absolute steps, so a resumed run
    # reuses the same chunk length) or, with start=, from the start state (its step may be traced).
    every = checkpoint_every or total
    ends = sorted({*range((first // every + 1) * every, total, every), total}) if first < total else []
    n_stored = first // log_every
    prefix: list[dict[str, jax.Array]] = []  # stored rows of a resumed run, aligned to this run's trace keys
    parts: list[dict[str, jax.Array]] = []
    tag = _batching_tag(batch_size, shuffle)
    for end in ends:
        state, rows, final = run_chunk(state, data, (end - first) // log_every)
        if stored is not None and not prefix:
            prefix = [ckpt.align_trace(stored, rows, n_stored)]
        parts.append(rows)
        if checkpoint_every is not None:
            trace = {**_concat(prefix + parts), **tag}
            if cell is not None:
                _save_in_program(cell, state, trace, final, log_every)
            elif _is_traced(state):
                raise ValueError(
                    "checkpoint_every cannot be used inside jax.jit / jax.vmap (values are traced); for a grid of "
                    "runs pass checkpoint_every= and checkpoint_dir= to run_grid instead (one folder per cell)"
                )
            else:
                ckpt.save_checkpoint(ckpt.checkpoint_path(checkpoint_dir, int(state.step)), state, trace,
                                     loss=final, log_every=log_every, run_id=run_id, overwrite=overwrite_checkpoints)
        first = end
    trace = _concat(prefix + parts) if parts else (stored or {})
    return FitResult(
        params=combine(state.params),
        best_params=combine(state.best_params),
        trace=trace,
        best_step=state.best_step,
        best_loss=state.best_loss,
        stopped_at=jnp.where(state.stopped_at < 0, state.step, state.stopped_at),
        skipped_steps=state.skipped,
        opt_state=state.opt_state,
        state=state,
    )
