"""Lane compaction, the host side: which cells run in which program, segment by segment (``run_lanes``).

:mod:`optlab.engine.compaction` says what a segment is and why the results are bit-identical; this module
schedules them: bucket widths (:func:`bucket_width`), segment lengths (doubling while no new cell stops), when to
re-pack (only when it shrinks the programs' total width), where states and trace rows live between segments (on
the device; states on the host only at a re-pack) and which program computes ``fn``'s outputs (the last segment
when nothing was re-packed, else one finish program per chunk).

Example:
  >>> [bucket_width(n, chunk=1024, n_devices=1) for n in (1, 3, 5, 7, 9, 192, 193)]
  [2, 3, 6, 8, 12, 192, 256]
  >>> bucket_width(5, chunk=4, n_devices=1), bucket_width(5, chunk=64, n_devices=4)
  (4, 8)
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# A frozen cell's tail is rebuilt from one period of its rows; beyond this share of the run's steps that costs
# more than running it (e.g. one batch per example of a large data set): such grids run uncompacted.
_MAX_PERIOD_SHARE = 0.25
# A segment after which no new cell stopped is followed by one this many times as long (1: fixed segments).
_GROWTH = 2


def bucket_width(live: int, chunk: int, n_devices: int) -> int:
    """Width of the program that carries ``live`` cells: the next of 2, 3, 4, 6, 8, 12, ... (powers of two and 3/4
    of them), at most ``chunk``, a multiple of ``n_devices`` (so a grid compiles one program per bucket, not one per
    live count, and a program pads at most a third of its width: half with powers of two alone).

    Never 1 below a wider chunk: XLA simplifies the size-1 batch dimension of a width-1 program away, and its dots
    then round differently from the same cell's in a wider program."""
    need = max(live, 2)
    power = 1 << (need - 1).bit_length()
    width = min(power * 3 // 4 if power * 3 // 4 >= need else power, chunk)
    return math.ceil(width / n_devices) * n_devices


def _parts(cells: np.ndarray, n_cells: int, chunk: int, n_devices: int) -> list[tuple[np.ndarray, ...]]:
    """The programs that carry ``cells``: per chunk ``(cells, gather positions, scatter positions)``.

    A program is padded to its bucket width with copies of its last cell (gathered, never written back: the scatter
    positions of the padding are ``n_cells``, out of range, and dropped)."""
    parts = []
    for first in range(0, len(cells), chunk):
        part = cells[first:first + chunk]
        pad = bucket_width(len(part), chunk, n_devices) - len(part)
        parts.append((part, np.concatenate([part, np.repeat(part[-1:], pad)]).astype(np.int32),
                      np.concatenate([part, np.full(pad, n_cells)]).astype(np.int32)))
    return parts


def _take(tree: Any, positions: np.ndarray) -> Any:
    return jax.tree.map(lambda a: a[positions], tree)


def _put_states(full: Any, positions: np.ndarray, states: Any) -> None:
    # host arrays, in place; the padding's positions are n_cells (past the end) and are not written
    keep = positions < len(full.step)
    jax.tree.map(lambda dst, src: dst.__setitem__(positions[keep], np.asarray(src)[keep]), full, states)


def _write(full: dict, positions: jax.Array, first_row: jax.Array, rows: dict) -> dict:
    """``full`` with a segment's rows ``(width, n, ...)`` at ``full[positions, first_row:first_row + n]``."""

    def put(f, r):
        # one window of n rows per cell: a per-element scatter (jnp's .at[i, j]) costs a loop step per row
        where = jnp.stack([positions, jnp.broadcast_to(first_row, positions.shape).astype(positions.dtype)], axis=1)
        numbers = lax.ScatterDimensionNumbers(update_window_dims=tuple(range(1, r.ndim)), inserted_window_dims=(0,),
                                              scatter_dims_to_operand_dims=(0, 1))
        return lax.scatter(f, where, r, numbers, mode=lax.GatherScatterMode.FILL_OR_DROP)

    return jax.tree.map(put, full, rows)


# In place (the buffer is donated): one compile per segment shape.
_put_rows = jax.jit(_write, donate_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _trace_buffer(n_cells: int, total_rows: int, segments: list, positions: list, first_rows: tuple) -> dict:
    """The ``(n_cells, total_rows, ...)`` trace buffer holding every program's segments so far, in one program.

    ``segments[i][j]`` are program ``i``'s rows of segment ``j`` (which starts at row ``first_rows[j]``),
    ``positions[i]`` its scatter positions."""
    full = jax.tree.map(lambda r: jnp.zeros((n_cells, total_rows, *r.shape[2:]), r.dtype), segments[0][0])
    for own, where in zip(segments, positions):
        for rows, first in zip(own, first_rows):
            full = _write(full, where, first, rows)
    return full


def run_lanes(program: Callable, probe: dict, n_cells: int, *, compact_every: int, chunk: int, n_devices: int,
              to_host: Callable, interrupted: Callable[[], bool]) -> tuple[dict | None, dict]:
    """Runs one static group's cells in segments of steps, dropping early-stopped cells between them.

    States and trace rows stay on the device: a segment's state feeds the next segment directly, and only the
    live cells' ``stopped_at`` come to the host. The live cells are re-packed (gathered into narrower programs)
    only when that shrinks the total width; stopped cells stay in their program (frozen, as in the uncompacted
    grid) until then. A segment after which no new cell stopped is followed by one twice as long (a grid where
    nothing stops runs ~log2(steps / compact_every) segments); after a re-pack or a new stop the length returns to
    ``compact_every``. Until the first re-pack each program keeps its segments' rows as they came, and its last
    segment computes fn's outputs itself (``("last", ...)`` lane: no finish program, no copy into a full trace);
    after one, rows go into a ``(cells, rows)`` buffer on the device and one finish program per chunk computes the
    outputs, rebuilding the dropped cells' frozen tails. Grids whose cells can never be dropped (shuffled
    mini-batches) run the uncompacted program (``program(None, positions, None)``).

    Args:
      program: ``program(mode, positions, lane_inputs) -> device outputs`` for the cells at ``positions`` of the
        group (``positions`` already padded to a bucket width).
      probe: the layout the probe recorded (``total_rows``, ``log_every``, ``steps``, ``period``, ``lane_shapes``,
        ``columns``).
      n_cells: cells in the group.
      compact_every: steps of the first segment (and after each re-pack or new stop), a multiple of fit's
        ``log_every``.
      chunk: the widest program.
      n_devices: widths are multiples of it; with more than one device (or process) the segment outputs go
        through ``to_host`` (re-packing then mixes shardings freely).
      to_host: device array -> NumPy array.
      interrupted: checked between segments; True stops the group (its cells are not returned).

    Returns:
      ``(outputs, stats)``: host outputs with leading axis ``n_cells`` (None when interrupted) and counters
      (``segments``, ``lane_segments`` = cell-segments run, ``dropped``, ``widths``, ``repacks``, ``seconds``:
      host wall time in ``segments`` (dispatch and waiting for each segment), ``repack`` and ``finish``).
    """
    log_every, total_rows, steps, period = (probe[k] for k in ("log_every", "total_rows", "steps", "period"))
    columns = probe.get("columns")
    if compact_every % log_every:
        raise ValueError(f"compact_every={compact_every} must be a multiple of fit's log_every={log_every} (a "
                         "segment ends on a trace row)")
    droppable = period is not None and period <= max(1, _MAX_PERIOD_SHARE * steps)
    stats = {"segments": 0, "lane_segments": 0, "dropped": 0, "widths": set(), "repacks": 0,
             "seconds": {"segments": 0.0, "repack": 0.0, "finish": 0.0}}
    clock = time.perf_counter

    def host(result, cells):
        return {k: to_host(v)[: len(cells)] for k, v in result.items()}

    if not droppable:  # no cell can be dropped: the uncompacted program, in one segment
        start, outputs = clock(), []
        for cells, gather, _ in _parts(np.arange(n_cells), n_cells, chunk, n_devices):
            outputs.append(host(program(None, gather, None), cells))
            stats["widths"].add(len(gather))
            stats["lane_segments"] += len(gather)
        stats.update(segments=1, widths=sorted(stats["widths"]))
        stats["seconds"]["segments"] = clock() - start
        return _joined(outputs), stats
    base_rows = compact_every // log_every
    on_host = lambda a: a if isinstance(a, np.ndarray) else to_host(a)  # noqa: E731
    keep = (lambda tree: jax.tree.map(to_host, tree)) if n_devices > 1 or jax.process_count() > 1 else (lambda t: t)
    # every cell's state on the host, written at re-packs only (a few small arrays per cell); between them a
    # segment's device state feeds the next segment
    full = jax.tree.map(lambda s: np.zeros((n_cells, *s.shape[1:]), s.dtype), probe["lane_shapes"][0])
    full.step[:] = -1  # not started (see Lane.run)

    def pack(cells):
        parts = _parts(cells, n_cells, chunk, n_devices)
        stats["widths"].update(len(p[1]) for p in parts)
        return parts, [_take(full, gather) for _, gather, _ in parts]

    parts, states = pack(np.arange(n_cells))
    segments = [[] for _ in parts]  # per program, its segments' rows until the first re-pack (then in ``rows``)
    rows, outputs, lengths = None, [], []
    done, seg_rows, stopped_before = 0, base_rows, 0
    while done < total_rows and parts:
        start = clock()
        n = min(seg_rows, total_rows - done)
        last = done + n == total_rows and rows is None
        for i, (cells, gather, scatter) in enumerate(parts):
            stats["lane_segments"] += len(gather)
            if last:
                outputs.append(host(program(("last", n), gather, (states[i], tuple(segments[i]))), cells))
                continue
            out = keep(program(("run", n, columns), gather, (states[i], None)))
            states[i] = out["state"]
            if rows is None:
                segments[i].append(out["rows"])
            else:
                rows = _put_rows(rows, scatter, np.int32(done), out["rows"])
        done += n
        lengths.append(n)
        stats["segments"] += 1
        if not last and interrupted():
            return None, stats
        if done >= total_rows:
            jax.block_until_ready(states)
            stats["seconds"]["segments"] += clock() - start
            continue
        flags = [on_host(state.stopped_at)[: len(cells)] >= 0 for state, (cells, _, _) in zip(states, parts)]
        stopped = sum(int(f.sum()) for f in flags)
        stats["seconds"]["segments"] += clock() - start
        live = np.concatenate([cells[~f] for f, (cells, _, _) in zip(flags, parts)])
        if sum(len(p[1]) for p in _parts(live, n_cells, chunk, n_devices)) < sum(len(p[1]) for p in parts):
            start = clock()
            if rows is None:  # the first re-pack: the segments so far go into the trace buffer
                rows = _trace_buffer(n_cells, total_rows, segments, [p[2] for p in parts],
                                     tuple(np.cumsum([0, *lengths[:-1]], dtype=np.int32)))
                segments = None
            for state, (_, _, scatter) in zip(states, parts):
                _put_states(full, scatter, jax.tree.map(on_host, state))
            parts, states = pack(live)
            seg_rows, stopped_before = base_rows, 0
            stats["repacks"] += 1
            stats["seconds"]["repack"] += clock() - start
        else:
            seg_rows = base_rows if stopped > stopped_before else _GROWTH * seg_rows
            stopped_before = stopped
    stats["widths"] = sorted(stats["widths"])
    if outputs:  # the last segments computed the outputs
        return _joined(outputs), stats
    start = clock()
    stats["dropped"] = int(n_cells - sum(len(p[0]) for p in parts))
    for state, (_, _, scatter) in zip(states, parts):
        _put_states(full, scatter, jax.tree.map(on_host, state))
    everything = np.arange(n_cells)
    for cells, gather, _ in _parts(everything, n_cells, chunk, n_devices):
        inputs = (full, rows) if np.array_equal(gather, everything) else (_take(full, gather), _take(rows, gather))
        outputs.append(host(program(("finish", stats["dropped"] > 0), gather, inputs), cells))
    stats["seconds"]["finish"] = clock() - start
    return _joined(outputs), stats


def _joined(outputs: list[dict]) -> dict:
    if len(outputs) == 1:  # one program: no copy
        return outputs[0]
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


__all__ = ["bucket_width", "run_lanes"]
