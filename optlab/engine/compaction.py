"""Lane compaction for ``run_grid(compact_every=K)``: finished cells stop costing compute.

Under ``vmap`` every cell (lane) of a program runs until the slowest ends: a ``cond`` on a batched predicate
becomes a ``select``, so an early-stopped cell keeps paying for its frozen steps. With ``compact_every=K`` the
grid runs the cell's one ``fit`` call in segments: the first of ``K`` steps, and each one after which no new cell
stopped twice as long as the one before (a grid where nothing stops runs ~``log2(steps / K)`` segments; a stop or
a re-pack brings the length back to ``K``). States stay on the device, each segment's feeding the next; only the
live cells' ``stopped_at`` come to the host. When dropping the stopped cells would shrink the programs' total width,
the live ones are re-packed (gathered on the host: states are a few numbers per cell) into narrower programs whose
widths are buckets 2, 3, 4, 6, 8, 12, ... (powers of two and 3/4 of them: a grid compiles at most
``2 log2(width)`` widths, and a program pads less than a third of its width); otherwise the stopped cells stay,
frozen, as in the uncompacted grid. Until the first re-pack each program keeps its segments' trace rows as they
came and its last segment computes ``fn``'s outputs itself (the rows of the earlier segments are inputs, the new
ones appended in the program). After a re-pack the rows go into one ``(cells, rows)`` buffer on the device
(written in place per segment) and at the end one *finish* program per chunk traces the cell function again with
each cell's final state and trace rows, so ``fn`` computes its outputs from them as if ``fit`` had run all its
steps at once. Segments carry only the trace columns ``fn``'s outputs use (found by dead-code elimination of the
finish program's jaxpr in the probe). A grid whose cells can never be dropped (shuffled mini-batches, below) runs
the uncompacted program. This module is the traced side (what a cell's ``fit`` does in each lane mode, the frozen
tail); :mod:`optlab.engine.lane_schedule` is the host side (``run_lanes``, ``bucket_width``).

Bit-identity: every output of every cell equals the uncompacted grid's bit for bit, on XLA:CPU with the compile
option run_grid sets (:data:`optlab.engine.grid_program._COMPILER_OPTIONS`: no YNNPACK reduce fusions), for the problems
in ``tests/engine/test_compaction.py`` (widths 8, 6, 4 and 2) and ``benchmarks/bench_compaction.py`` (1024
cells re-packed to 192; 1024 cells in 5 growing segments). Why it holds: a segment restarts ``fit``'s training scan from the state the previous segment ended with, as a
checkpointed ``fit`` does (its batches are a function of ``(key, step)``). A frozen cell's later trace rows are
not constant: ``fit`` records the loss and gradient norms at the frozen parameters on each step's batch. They are
periodic, though: with full-batch data every step sees the same batch (period 1) and with fixed-order mini-batches
step ``t`` sees batch ``t mod per_epoch`` (period ``per_epoch``). The finish program runs the frozen state for one
period (no update is applied to a frozen cell) and tiles those rows over the rest of the trace, with the schedule
column evaluated at each row's step, so the dropped cell's trace, best, stop step and counters equal the
uncompacted run's. With shuffled mini-batches every epoch differs, so no cell can be dropped and the grid runs
uncompacted.

What the guarantee rests on, and where it ends: the re-packed programs differ from the uncompacted one only in
their width (and scan length), so bit-identity needs XLA to round a cell the same way at every width. Three things
broke that and are handled: (1) XLA:CPU's YNNPACK reduce fusion splits a reduction (the mean over 256 examples)
into a reduce-window and a reduce that form one fusion at width 1024 but two at 256, summing in another order (at
256 cells 93 of 256 losses differed in the last bit from the same cells at 1024); run_grid compiles with those
fusions off. (2) A width-1 program drops the batch dimension and its dots round differently: widths are >= 2.
(3) A trace column that fn does not use is dead in the uncompacted program, and XLA then fuses a sibling
column's reductions differently (``grad_norm`` without ``group_grad_norms`` differed by 1 ulp): segments carry
only the used columns. Other backends, other XLA versions or other shape-dependent choices (an XLA:GPU autotuned
kernel, a reduction XLA splits at a size threshold) may still make a narrower program round differently; the
results then agree to float rounding, as after a change of ``chunk_size``.

Which cells are dropped, and why only those: a cell that early stopped (``stopped_at >= 0``) never changes again,
so its outputs are known. A diverging or non-finite cell that has not stopped keeps changing (the NaN guard skips
its steps and counts them, a mini-batch may be finite again, a dynamic loss scale backs off), so dropping it would
change its result; stop such cells with ``fit(early_stop=...)`` (a non-finite loss never improves, so a cell that
goes non-finite stops after ``patience`` steps) and compaction drops them like any stopped cell.

Example:
  >>> bucket_width(5, chunk=64, n_devices=1), bucket_width(7, 64, 1), bucket_width(5, chunk=4, n_devices=1)
  (6, 8, 4)
  >>> bucket_width(1, 64, 1), bucket_width(192, 1024, 1), bucket_width(193, 1024, 1)
  (2, 192, 256)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from optlab.engine import batching
from optlab.engine.checkpoint import TrainState
from optlab.engine import fn_cache as _fn_cache
from optlab.engine.cell_slot import CellSlot
from optlab.engine.lane_schedule import bucket_width, run_lanes  # noqa: F401 (grid.py and the tests use them here)



class Lane:
    """What one traced cell's ``fit`` does under ``run_grid(compact_every=...)``; set by run_grid while it traces.

    ``mode`` is ``("probe", info)`` (record the run's static layout in ``info``, run normally: only shapes are
    traced), ``("run", n_rows, columns)`` (run ``n_rows`` trace rows from ``inputs[0]``, or from fit's own start
    state where its step is negative, and keep the new state and the trace ``columns`` of its rows in ``outputs``;
    None: all), ``("last", n_rows)`` (run the last ``n_rows`` rows like ``"run"``; the result is the new state and
    the rows of the earlier segments, ``inputs[1]``, a tuple of row dicts, followed by the new ones: fn's outputs come
    from the same program) or ``("finish", with_tail)`` (no steps: the result is the state and rows in ``inputs``,
    columns missing there filled with zeros, frozen tails rebuilt when ``with_tail``).
    """

    def __init__(self, mode: tuple, inputs: Any):
        self.mode, self.inputs, self.outputs = mode, inputs, None

    def run(self, run_chunk, state: TrainState, data: Any, *, steps: int, log_every: int, batch_size, shuffle: bool,
            schedule, every: int) -> tuple[TrainState, dict]:
        """The training of the ``fit`` that took this lane: ``(final state, trace rows)`` as ``fit`` returns them.

        Args:
          run_chunk: fit's jitted chunk ``(state, data, n_rows) -> (state, rows, final loss)``; its attribute
            ``per_step`` builds the same chunk with one row per step (for frozen tails).
          state: fit's start state (fresh, ``start=`` or loaded).
          data, steps, log_every, batch_size, shuffle, schedule: fit's arguments.
          every: the early-stopping block length (1 without block early stopping).

        Returns:
          The state after the steps this lane runs, and the trace rows (full length, ``steps // log_every``).
        """
        total_rows = steps // log_every
        period = _period(data, batch_size, shuffle)
        kind = self.mode[0]
        if kind == "probe":
            new, rows, _ = run_chunk(state, data, total_rows)
            # one cell's lane inputs as shapes (a leading cell axis of 1), for used_columns
            shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape), a.dtype),
                                  (state._replace(key=jax.random.key_data(state.key)), rows))
            self.mode[1].update(total_rows=total_rows, log_every=log_every, steps=steps, period=period,
                                lane_shapes=shapes)
            return new, rows
        impl = jax.random.key_impl(state.key)
        given_state, given_rows = self.inputs
        if kind in ("run", "last"):
            # a negative step marks a cell's first segment: it starts from fit's own start state (one program serves
            # the first segment and the later ones)
            own = state._replace(key=jax.random.key_data(state.key))
            start = _wrap_key(jax.tree.map(lambda a, b: jnp.where(given_state.step < 0, a, b), own, given_state), impl)
            new, rows, _ = run_chunk(start, data, self.mode[1])
            if kind == "last":
                if not given_rows:  # one segment: fit's own run
                    return new, rows
                # columns the segments did not carry are dead in fn's outputs (zeros keep their shapes)
                return new, {k: jnp.concatenate([p[k] for p in given_rows] + [v]) if k in given_rows[0] else
                             jnp.zeros((total_rows, *v.shape[1:]), v.dtype) for k, v in rows.items()}
            # Only the columns fn's outputs depend on: the uncompacted program drops the others, and XLA fuses (and
            # rounds) a live column's reductions differently when a sibling column is dead (e.g. grad_norm without
            # group_grad_norms recomputes the gradient's reduction in another order).
            kept = rows if self.mode[2] is None else {k: v for k, v in rows.items() if k in self.mode[2]}
            self.outputs = {"state": new._replace(key=jax.random.key_data(new.key)), "rows": kept}
            # fn's outputs are discarded in a segment (XLA drops their computation); full-length placeholders keep
            # fn's shape logic (reshapes of the trace, slices) valid
            placeholder = jax.tree.map(lambda r: jnp.zeros((total_rows, *r.shape[1:]), r.dtype), rows)
            return new, placeholder
        final = _wrap_key(given_state, impl)
        layout = jax.eval_shape(run_chunk, state, data, total_rows)[1]
        given_rows = {k: given_rows[k] if k in given_rows else jnp.zeros(v.shape, v.dtype) for k, v in layout.items()}
        if not self.mode[1] or period is None:  # shuffled: no cell was dropped
            return final, given_rows
        return _frozen_tail(run_chunk.per_step(), final, given_rows, data, first_step=state.step, steps=steps,
                            log_every=log_every, period=period, schedule=schedule, every=every)


_LANE = CellSlot("lane", "run_grid(compact_every=...)", "run the grid without compact_every")


def lane(mode: tuple, inputs: Any = (None, None)):
    """Scope in which the (single) ``fit`` call of a grid cell runs as a :class:`Lane`; used by run_grid.

    Yields a :class:`~optlab.engine.cell_slot.Holder`: ``.value`` is the Lane (its ``outputs`` after a segment),
    ``.taken`` whether a ``fit`` took it.
    """
    return _LANE.holding(Lane(mode, inputs))


def take_lane() -> Lane | None:
    """The lane of the cell being traced (None outside ``run_grid(compact_every=...)``); one ``fit`` per cell."""
    return _LANE.take()


def _period(data: Any, batch_size: int | None, shuffle: bool) -> int | None:
    """Steps after which a frozen cell's rows repeat: 1 for full batch, per_epoch in fixed order, None shuffled."""
    if data is None or batch_size is None:
        return 1
    if shuffle:
        return None
    return batching.n_examples(data) // batch_size


def _wrap_key(state: TrainState, impl) -> TrainState:
    return state._replace(key=jax.random.wrap_key_data(state.key, impl=impl))


def _lr_column(schedule, steps: jax.Array) -> jax.Array:
    # the expression of step.py's row entry "lr", evaluated per row step
    def lr(t):
        value = jnp.ones((), jnp.float32) if schedule is None else jnp.asarray(schedule(t))
        return value.astype(jnp.promote_types(value.dtype, jnp.float32))

    # lax.map, not vmap: one scalar evaluation per step as in the training loop (a vectorised cos / exp may round
    # differently in the last bit)
    return lax.map(lr, steps)


def _frozen_tail(per_step, state: TrainState, rows: dict, data: Any, *, first_step, steps: int, log_every: int,
                 period: int, schedule, every: int) -> tuple[TrainState, dict]:
    """A dropped (frozen) cell's final state and full trace; a cell that ran to the end comes back unchanged.

    ``state`` is the cell's state when it was dropped (``state.step = d``), ``rows`` its trace up to ``d`` (rows
    after it are placeholders). Frozen, each step records the loss and norms at the frozen parameters on that step's
    batch, which repeats with ``period``: the rows of steps ``d .. d + period - 1`` give every later row.
    """
    dropped_at = state.step
    end = (first_step + steps).astype(dropped_at.dtype)
    # Frozen: no update is applied, so only the step counter moves. At least two steps: XLA inlines a one-trip loop
    # into the surrounding program, where the row's reductions fuse (and round) differently than in the training
    # loop of the uncompacted grid.
    _, step_rows, _ = per_step(state, data, max(period, 2))
    row_steps = first_step + log_every * jnp.arange(steps // log_every, dtype=dropped_at.dtype)
    if period == 1:  # full batch: every frozen row is the first one (a broadcast, not a gather per row)
        tail = {name: values[0] for name, values in step_rows.items()}
    else:
        offset = (row_steps - dropped_at) % period
        tail = {name: values[offset] for name, values in step_rows.items()}
    # without a schedule the column is the constant 1 the step records (a loop over the rows would compute it again)
    tail["lr"] = (jnp.ones((), rows["lr"].dtype) if schedule is None else
                  _lr_column(schedule, row_steps).astype(rows["lr"].dtype))
    after = row_steps >= dropped_at
    trace = {name: jnp.where(after.reshape(-1, *[1] * (v.ndim - 1)), tail[name], v) for name, v in rows.items()}
    block = state.stop_block
    if block is not None:
        # Block early stopping keeps summing the frozen losses of the current block (reset at each block end): the
        # final sum covers the steps of the last, partial block, added in step order as the step does.
        last_start = (end // every) * every

        def add(i, total):
            t = last_start + i
            active = (t >= dropped_at) & (t < end)
            return jnp.where(active, total + step_rows["loss"][(t - dropped_at) % period], total)

        total = jnp.where(dropped_at >= last_start, block.loss_sum, jnp.zeros_like(block.loss_sum))
        block = block._replace(loss_sum=lax.fori_loop(0, every, add, total))
    final = state._replace(step=end, stop_block=block)
    return jax.tree.map(lambda a, b: jnp.where(dropped_at < end, a, b), final, state), trace


# fn -> {(static values, axis names): the layout its fit recorded in a probe}. Tracing fn for the probe costs ~0.3 s
# even on a tiny problem, so it is kept as long as jit keeps the program; weak keys let a grid's fn be collected.
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe_layout(fn: Callable, key: Any, trace: Callable[[dict], None]) -> dict:
    """The static layout of the ``fit`` in ``fn`` (``steps``, ``log_every``, ``total_rows``, ``period``), probed once.

    Args:
      fn: the grid's cell function (the cache holds it weakly).
      key: what else selects the program (static values, axis names), hashable; None: do not cache.
      trace: ``trace(layout)`` traces ``fn`` with a ``("probe", layout)`` lane, which fills ``layout``.

    Returns:
      The layout dict.
    """
    def probe() -> dict:
        layout: dict = {}
        trace(layout)
        return layout

    return _fn_cache.per_fn(_PROBES, fn, key, probe)


def used_columns(finish: Callable, state: Any, rows: dict) -> tuple[str, ...] | None:
    """The trace columns that a finish program's outputs depend on (dead-code elimination of its jaxpr).

    Args:
      finish: ``finish(state, rows) -> outputs``, the cell function in ``("finish", True)`` mode.
      state, rows: shape structs of one cell's lane inputs (the rows at full length).

    Returns:
      The sorted names of the used columns, or None (keep all) where JAX's DCE is unavailable.
    """
    try:
        from jax._src.interpreters import partial_eval as pe  # no public DCE; without it every column is kept
    except ImportError:
        return None
    closed = jax.make_jaxpr(finish)(state, rows)
    _, used = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    n_state = len(jax.tree.leaves(state))
    flags = dict(zip(rows, [False] * len(rows)))
    for (path, _), flag in zip(jax.tree_util.tree_flatten_with_path(rows)[0], used[n_state:]):
        flags[path[0].key] |= flag
    return tuple(sorted(k for k, flag in flags.items() if flag))


__all__ = ["bucket_width"]
