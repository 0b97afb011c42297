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
  ``EarlyStop(every=k)`` with ``k > 1`` tests once per block of ``k`` absolute steps ``[j*k, (j+1)*k)`` (with
  ``k`` = steps per epoch: once per epoch) on the block's mean recorded loss, against the best block mean;
  ``wait`` and ``patience`` count blocks. The block where ``wait >= patience`` is completed (its last update is
  applied, as in an epoch loop that checks after the epoch) and the run freezes from the next step on:
  ``stopped_at = (j + 1) * k``, still the number of applied updates. ``best_*`` keep tracking the per-step best
  loss. The block's running sum lives in ``TrainState.stop_block`` (resumes mid-block are bit-identical); a
  ``start=`` state at a mid-block step without its ``stop_block`` counts that partial block from an empty sum.

Where the parts live: the step and the jitted chunk of steps in :mod:`optlab.engine.step`, the start state (fresh,
partial or loaded) in :mod:`optlab.engine.state`, the checkpoints of ``run_grid`` cells in
:mod:`optlab.engine.cell_checkpoints`; this module validates the arguments and strings chunks between checkpoints.

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

import os
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from optlab.engine import batching
from optlab.engine import checkpoint as ckpt
from optlab.engine._checks import _int_arg, _is_traced, _nonnegative
from optlab.engine.casting import DTYPES, _cast, _resolve_dtype  # noqa: F401 (DTYPES: old import path)
# Re-exported so the old import paths keep working: optlab.engine.loop.{GridCell, grid_cell, cell_dir, start_state,
# load_state, DTYPES, SKIP_COUNTERS} (run_grid, the README and users import them from here).
from optlab.engine.cell_checkpoints import (  # noqa: F401
    GridCell,
    _take_grid_cell,
    resume_cell as _resume_cell,
    run_cell_chunks as _run_cell_chunks,
    cell_dir,
    grid_cell,
)
from optlab.engine.checkpoint import TrainState
from optlab.engine.fit_types import EarlyStop, FitResult
from optlab.engine.compaction import take_lane as _take_lane
from optlab.engine.precision import DynamicLossScale
from optlab.engine.step import SKIP_COUNTERS, _make_chunk  # noqa: F401 (SKIP_COUNTERS: old import path)
from optlab.engine.state import (  # noqa: F401
    _batching_tag,
    _block_every,
    _check_batching,
    _fill_start,
    _fresh_state,
    load_state,
    start_state,
)
from optlab.optimizers import grouping

GROUPS = ("per_layer", "per_leaf", "global")


def _group_ids(params: Any, groups: Any) -> tuple[tuple[int, ...], int, tuple[str, ...]]:
    if isinstance(groups, str):
        grouping.check_choice("groups", groups, GROUPS)
        return grouping.group_ids(params, groups)
    return grouping.group_ids(params, "per_layer", layer_labels=groups)


def _concat(parts: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    parts = [p for p in parts if p]
    if len(parts) == 1:
        return parts[0]
    return {name: jnp.concatenate([p[name] for p in parts]) for name in parts[-1]}


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
      early_stop: :class:`EarlyStop` or None (``every > 1``: a test per block of steps on the block-mean loss).
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
        one ``fit`` call from inside the compiled grid (``io_callback``) under ``cell_dir(checkpoint_dir, cell)``;
        with ``run_grid(resume=True)`` that fit continues from the cell's latest checkpoint there (traced inputs of
        the grid program; not with ``start=``).
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
            raise TypeError(f"early_stop must be EarlyStop(patience, min_delta, every) or None, got {early_stop!r}")
        if _is_traced(early_stop.every):
            raise TypeError("early_stop.every must be a static Python int >= 1 (it shapes the program), got a traced "
                            "value; vmap over patience / min_delta instead")
        early_stop = early_stop._replace(every=_int_arg("early_stop.every", early_stop.every, 1))
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
    state = _fresh_state(trainable, opt, key, record_dtype, loss_scale, early_stop)
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
    if cell is not None and cell.resume is not None:
        # run_grid(resume=True): the cell's latest checkpoint is a later state of this same run (resume_from's file
        # included), so it supersedes it; its leaves are traced inputs of the grid program, one row per cell.
        if start is not None:
            raise ValueError("run_grid(resume=True) cannot resume a cell whose fit takes start=<TrainState> (its "
                             "steps count from the traced start); re-run that grid without resume")
        state, first, stored = _resume_cell(cell.resume, state, steps=steps, log_every=log_every,
                                            batch_size=batch_size, shuffle=shuffle)

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
    lane = _take_lane()  # run_grid(compact_every=...) runs this fit's steps in segments (engine/compaction.py)
    if lane is not None:
        if checkpoint_every is not None or resume_from is not None:
            raise ValueError("run_grid(compact_every=...) cannot segment a fit with checkpoint_every or resume_from")
        state, lane_rows = lane.run(run_chunk, state, data, steps=steps, log_every=log_every, batch_size=batch_size,
                                    shuffle=shuffle, schedule=schedule, every=_block_every(early_stop))
        ends, parts = [], [lane_rows]
    if cell is not None:  # checkpointed from inside the compiled grid: one scan over equal chunks
        state, cell_trace = _run_cell_chunks(run_chunk, cell, state, data, first=first, ends=ends,
                                             log_every=log_every, stored=stored, tag=tag)
        ends, parts = [], [] if cell_trace is None else [cell_trace]
    for end in ends:
        state, rows, final = run_chunk(state, data, (end - first) // log_every)
        if stored is not None and not prefix:
            prefix = [ckpt.align_trace(stored, rows, n_stored)]
        parts.append(rows)
        if checkpoint_every is not None:
            if _is_traced(state):
                raise ValueError(
                    "checkpoint_every cannot be used inside jax.jit / jax.vmap (values are traced); for a grid of "
                    "runs pass checkpoint_every= and checkpoint_dir= to run_grid instead (one folder per cell)"
                )
            trace = {**_concat(prefix + parts), **tag}
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
