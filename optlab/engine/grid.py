"""run_grid: a hyperparameter × seed grid as one ``jit(vmap(fn))`` per static value, optionally sharded over devices.

A study is a pure function ``fn(hparams, key) -> dict of arrays``. The grid is the cartesian product of ``axes``
and a ``"seed"`` axis (innermost). Dynamic axes (numbers) become traced arrays and are vmapped in one compiled
program; static axes (shapes, optimizer names, ...) loop in Python with one compilation each.
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from optlab.engine import cell_checkpoints as _cell_ckpt
from optlab.engine import interrupt as _interrupt
from optlab.engine import chunking as _chunking
from optlab.engine._checks import _int_arg
from optlab.engine.grid_axes import (  # noqa: F401 (_is_number: imported from here by optlab.ablation)
    _check_axes,
    _check_cell_index,
    _check_seeds,
    _describe,
    _is_number,
    _resolve_mesh,
    _write_cell_index,
    product_index,
)
from optlab.engine import grid_program as _grid_program
from optlab.engine.grid_program import (
    _ByIdentity,
    _cells_program,
    _hashable,
    _place,
    _to_host,
    _uncacheable,
)
from optlab.engine.grid_result import SEED_AXIS, GridResult

# tqdm.auto picks the widget bar inside Jupyter, whose stderr is not a terminal but shows bars fine
_NOTEBOOK_BAR = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)


def _stack(pieces: list[np.ndarray]) -> np.ndarray:
    if len({(p.shape[1:], p.dtype) for p in pieces}) == 1:
        return np.concatenate(pieces)
    stacked = np.empty(sum(len(p) for p in pieces), dtype=object)
    stacked[:] = [cell for p in pieces for cell in p]
    return stacked


def _auto_chunk(program, inputs_of, cell_ids, n_devices) -> int:
    """``chunk_size="auto"``: the width :mod:`optlab.engine.chunking` picks for this group's program."""
    n = len(cell_ids)
    if n <= _chunking.SMALL_GRID:
        return n
    static = program.keywords
    fn = static["fn"]
    key = None if isinstance(fn, _ByIdentity) or _uncacheable(static["fixed"]) else (
        static["fixed"], static["names"], static["checkpoint"], n, n_devices)

    def lower(width):  # the shapes of a chunk of ``width`` cells; values do not matter to the cost analysis
        values, seed_column = inputs_of(cell_ids[:width])
        return program.func.lower(values, seed_column, None, **{**static, "sharding": None})

    def choose():
        per_cell = _chunking.bytes_per_cell(lower, n)
        return n if per_cell is None else _chunking.auto_width(per_cell, n, _chunking.cache_budget())

    return _chunking.cached_width(fn.value if isinstance(fn, _ByIdentity) else fn, key, choose)


def run_grid(
    fn: Callable[[dict, jax.Array], Mapping[str, Any]],
    axes: Mapping[str, Sequence],
    *,
    seeds: int | Sequence[int] = 1,
    static: Sequence[str] = (),
    mesh=None,
    chunk_size: int | str | None = "auto",
    progress: bool = True,
    label: str | None = None,
    checkpoint_every: int | None = None,
    checkpoint_dir=None,
    resume: bool = False,
    compact_every: int | None = None,
) -> GridResult:
    """Evaluate ``fn`` on the cartesian product of ``axes`` × seeds, vmapped, chunked and sharded.

    .. math::

        \\mathrm{cell}(v_1, \\dots, v_k, s) = \\mathtt{fn}(\\{a_i: v_i\\}, \\mathtt{jax.random.key}(s))

    Reproducibility rule: a cell's key is ``jax.random.key(seed)`` and its dynamic values are 0-d arrays of the
    axis dtype (float32 for Python floats unless x64 is on), so ``fn({"lr": jnp.asarray(0.1)}, jax.random.key(3))``
    re-runs that cell alone with the same numbers, to float rounding: another compiled program (plain ``jit``)
    may order sums differently, and chaotic runs (e.g. a zig-zagging Newton-root step on a non-convex loss) amplify
    that last-bit difference over the steps. Within run_grid the width does not matter: programs are compiled with
    XLA:CPU's YNNPACK reduce fusions off (:mod:`optlab.engine.grid_program`), whose split of a reduction depends on
    the vmap width, so a cell gives the same bits in a chunk of any width >= 2 (checked on the engine's tests and
    benchmarks; other backends may still differ in the last bits).

    Each combination of static values is one ``jax.jit(jax.vmap(cell))`` program (reused by later calls with the
    same ``fn`` object and static values) that runs the dynamic × seed cells in chunks of ``chunk_size``: the last
    chunk is padded by repeating its last cell, so one compilation serves all chunks, and the padding is dropped;
    at most two chunks are in memory at once. With a ``mesh`` the chunk axis is sharded over all mesh devices
    (``NamedSharding`` over the flattened mesh axes), chunks are padded to a multiple of the device count, and jit
    keeps the outputs sharded.

    Ctrl-C (see :mod:`optlab.engine.interrupt`): while the grid runs in the main thread, SIGINT only sets a flag that
    is checked between chunks, so no ``KeyboardInterrupt`` lands inside JAX / XLA. The chunk already on the device
    is finished (it cannot be cancelled), no new chunk starts, and the finished cells come back with
    ``complete=False``, ``info["cells_total"]`` and a warning. The interrupt is sticky for the scope: a later
    ``run_grid`` raises :class:`~optlab.engine.interrupt.GridInterrupted` at its start (outside an explicit
    ``interrupt_scope`` the scope is the process, or one cell in IPython). A second Ctrl-C while the grid waits for
    its last chunk only prints a note. A ``KeyboardInterrupt`` that still reaches the loop (fn raised it, or the
    grid runs outside the main thread) also returns the finished cells.

    Multi-host: call ``jax.distributed.initialize()`` at the start of the same script on every host, then
    ``run_grid(..., mesh="auto")``: the mesh spans ``jax.devices()`` of all hosts, every process gets the whole
    ``GridResult`` (outputs are gathered with ``multihost_utils.process_allgather``); write files from
    ``jax.process_index() == 0`` only.

    Args:
      fn: ``fn(hparams, key) -> dict[str, array]``; ``hparams`` maps every axis name (not "seed") to a traced scalar
        (dynamic axes) or the Python value (static axes). Nested dicts are flattened to ``"a/b"`` names.
      axes: name -> non-empty sequence of values; dynamic values must be numbers.
      seeds: an int N (seeds 0..N-1) or a sequence of distinct ints in [0, 2**31); the innermost axis ``"seed"``.
      static: axis names looped in Python (shapes, optimizer names, ...), one compilation per combination.
      mesh: None (no sharding), ``"auto"`` (all devices) or a ``jax.sharding.Mesh``.
      chunk_size: cells per compiled call. ``"auto"`` (default): groups of up to
        :data:`~optlab.engine.chunking.SMALL_GRID` cells run at once; larger ones get the widest power of two whose
        step working set (XLA's cost analysis, bytes accessed per cell) fits the cache budget
        (:mod:`optlab.engine.chunking`), all cells if they fit. An int forces the width (bounds memory); None runs
        all cells of a static combination at once.
      progress: report progress on stderr: a ``tqdm.auto`` bar advancing per chunk in a terminal or a notebook,
        otherwise one plain line per grid with its size and time.
      label: what the grid is, shown before its size in the bar / line, e.g. ``"exp 5"`` gives
        ``"exp 5: 6 optimizer × 4 learning_rate × 8 seed = 192 cells"``.
      checkpoint_every: with ``checkpoint_dir``, the one ``optlab.fit`` call of each cell saves its state every
        this many steps (and at its end) into ``cell_dir(checkpoint_dir, i)`` = ``<checkpoint_dir>/cell_{i:06d}/``,
        ``i`` the cell's index in the product (``info["checkpoint_cells"]`` per result row); ``cells.json`` there
        maps each index to its hyperparameters and seed. The saves are ``io_callback``s from inside the compiled
        grid (no host round trip per segment; the program is the same one with the writes added), so every
        checkpoint holds that cell's ``best_params`` / ``best_step`` so far and ``best_checkpoint(cell_dir(...))``
        recovers its best saved state (load it with ``optlab.engine.loop.load_state``).
      checkpoint_dir: the grid's checkpoint folder (see ``checkpoint_every``). Without ``resume``, a folder that
        already holds checkpoints is run again from step 0: cells.json is replaced and each cell's files are
        rewritten as its steps come (files of steps this grid does not write, e.g. under another
        ``checkpoint_every``, stay).
      resume: with ``checkpoint_every`` / ``checkpoint_dir``, continue each cell from its latest intact checkpoint
        there (an interrupted or killed grid: finished chunks, the running chunk's last saved step, untouched cells
        at 0). ``cells.json`` must be this grid's cell index (same axes, static axes, seeds), else ValueError
        before any work; a missing or empty folder is a fresh run. Cells resumed at the same step (and static
        values) form one program whose ``fit`` scans only the remaining steps, from the cells' stored states and
        trace rows, which enter as batched inputs (not constants: one compile serves any number of cells and
        chunks, and an interrupted grid has few distinct resume steps, so few compiles); a cell saved at its last
        step runs no step, only ``fn`` on its stored result. Every output, trace row, ``best_*`` and stop step
        equals the uninterrupted grid's bit for bit (XLA:CPU, by the reproducibility rule: a resumed group
        narrower than the chunk is padded to 2 cells per device, because only widths >= 2 round alike; checked on
        one and two devices in ``tests/engine/test_grid_resume.py``). An early-stopped cell continues frozen (no
        update is applied), so its later trace rows are recorded as in the uninterrupted grid. The cell's ``fit``
        must not take ``start=``. ``info["resumed"]``: per result row, the step its cell resumed from.
      compact_every: lane compaction (:mod:`optlab.engine.compaction`), for grids where many cells stop early.
        The cell's one ``optlab.fit`` call runs in segments, the first of this many steps (a multiple of its
        ``log_every``), each twice as long as the last while no new cell stops; between segments the cells that
        early stopped (``stopped_at >= 0``; not cells that diverged or went non-finite without stopping: they
        still change) are dropped and the rest re-packed into narrower programs (widths 2, 3, 4, 6, 8, 12, ...)
        when that shrinks the width. A dropped cell's remaining trace rows (fit keeps recording the loss at its
        frozen parameters) are rebuilt from one period of frozen steps, so it is dropped only with full-batch or
        fixed-order mini-batches (with shuffled mini-batches the grid runs uncompacted). Guarantee: every output equals the
        uncompacted grid's bit for bit on XLA:CPU (the compile option of the reproducibility rule makes a cell round alike at every
        width >= 2; :mod:`optlab.engine.compaction` says what this rests on); elsewhere to float rounding.
        Limits: one ``fit`` per cell, not with ``checkpoint_every`` / ``resume_from``; each segment costs a
        dispatch and a host read of the live cells' stop flags (states and rows stay on the device); an interrupt
        between segments drops the unfinished group's cells. ``info["compaction"]`` counts segments, cell-segments
        run, dropped cells, re-packs, the widths used and host seconds, per static group. None (default): no segments.

    Returns:
      :class:`GridResult`.

    Example::

        def fn(hp, key):
            x = jax.random.normal(key, (3,))
            res = optlab.fit(lambda p, _: jnp.sum(p**2), x, optax.sgd(hp["lr"]), steps=100)
            return {"final_loss": res.trace["loss"][-1], "loss": res.trace["loss"]}

        res = run_grid(fn, {"lr": [0.01, 0.1, 0.5]}, seeds=8)
        res.aggregate()  # final_loss_mean / _std / ... per lr
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable fn(hparams, key) -> dict, got {fn!r}")
    checked, static = _check_axes(axes, static)
    seed_values = _check_seeds(seeds)
    auto = isinstance(chunk_size, str) and chunk_size == "auto"
    if not auto and chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be 'auto', None or a positive int, got {chunk_size!r}")
    mesh = _resolve_mesh(mesh)
    if (checkpoint_every is None) != (checkpoint_dir is None):
        raise ValueError("checkpoint_every and checkpoint_dir go together: pass both or neither")
    if compact_every is not None:
        compact_every = _int_arg("compact_every", compact_every, 1)
        if checkpoint_every is not None:
            raise ValueError("compact_every and checkpoint_every cannot be combined: pass one of them")
    checkpoint = None
    if checkpoint_every is not None:
        checkpoint = (_int_arg("checkpoint_every", checkpoint_every, 1), str(pathlib.Path(checkpoint_dir)))
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True continues cells from their checkpoints: pass checkpoint_every and "
                         "checkpoint_dir too")
    all_axes = {**checked, SEED_AXIS: seed_values}
    names = list(all_axes)
    index, groups = product_index(all_axes, static)
    dynamic = [n for n in checked if n not in static]
    columns = {n: np.asarray(checked[n]) for n in dynamic}
    columns[SEED_AXIS] = np.asarray(seed_values, dtype=np.int32)

    def inputs_of(ids):  # the dynamic values and the seed of the cells ``ids``, on the host
        inputs = {n: columns[n][index[ids, names.index(n)]] for n in columns}
        return inputs, inputs.pop(SEED_AXIS)

    n_devices = mesh.size if mesh is not None else 1
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names))) if mesh is not None else None
    group_size = len(next(iter(groups.values())))
    def width_of(size):  # a forced or chosen width, capped at the group, a multiple of the device count
        return math.ceil(min(size or group_size, group_size) / n_devices) * n_devices

    chunk = width_of(None if auto else chunk_size)  # auto: the estimate until the cost model picks the width
    n_chunks = math.ceil(group_size / chunk) * len(groups)

    description = _describe(label, all_axes)
    if _interrupt.interrupt_requested():  # an earlier grid of this run was interrupted: do no work at all
        empty = GridResult(all_axes, index[:0], {}, static, False, {"cells_total": len(index), "n_chunks": 0})
        raise _interrupt.GridInterrupted(
            f"{description}: not started because an earlier grid of this run was interrupted (Ctrl-C); "
            f"optlab.engine.interrupt.reset_interrupt() runs grids again", empty)
    plan = None  # resume: per cell, (its latest checkpoint, ResumeGroup) or None (starts at step 0)
    if resume:
        _check_cell_index(checkpoint[1], all_axes, index, names)
        plan = _cell_ckpt.resume_plan(checkpoint[1], len(index))
    if checkpoint is not None:  # which cell folder is which: written before any work, so it survives a crash
        _write_cell_index(checkpoint[1], all_axes, index, names)

    finished: list[tuple[np.ndarray, dict, int]] = []  # (cell ids, host outputs, devices) per collected chunk
    compaction: list[dict] = []  # per static group under compact_every: segments, cell-segments, dropped, widths

    padded, programs, complete, started, in_flight = 0, 0, True, time.perf_counter(), None
    show_bar = progress and (_NOTEBOOK_BAR or sys.stderr.isatty())
    bar = tqdm(total=n_chunks, desc=description, unit="chunk", disable=not show_bar)

    def collect(ids, result):
        if finished and finished[-1][0] is ids:  # already collected before an interrupt
            return
        devices = min((len(a.sharding.device_set) for a in result.values()), default=0)
        finished.append((ids, {k: _to_host(a)[: len(ids)] for k, a in result.items()}, devices))
        bar.update(1)

    with _interrupt.grid_running() as scope:
        try:
            for key, cell_ids in groups.items():
                fixed = {s: checked[s][j] for s, j in zip(static, key)}
                bar.set_postfix(fixed, refresh=False)
                program = functools.partial(
                    _cells_program(),
                    fn=_hashable(fn),
                    fixed=tuple((s, _hashable(v)) for s, v in fixed.items()),
                    names=tuple(checked),
                    sharding=sharding,
                    checkpoint=checkpoint,
                )
                programs += 1
                if auto:
                    chosen = width_of(_auto_chunk(program, inputs_of, cell_ids, n_devices))
                    if chosen != chunk:
                        bar.total += math.ceil(group_size / chosen) - math.ceil(group_size / chunk)
                    chunk = chosen
                if compact_every is not None:
                    host, group_stats = _grid_program.compacted_group(program, inputs_of, cell_ids, every=compact_every,
                                                         chunk=chunk, n_devices=n_devices, sharding=sharding,
                                                         interrupted=lambda: scope.interrupted)
                    compaction.append({**fixed, **group_stats})
                    if host is None:  # interrupted between segments: the group's cells are unfinished
                        break
                    finished.append((cell_ids, host, n_devices))
                    bar.update(math.ceil(group_size / chunk))
                    continue
                parts = _cell_ckpt.resume_parts(cell_ids, plan)
                programs -= all(resumed_at is not None for resumed_at, _ in parts)  # the fresh one never runs
                # a part narrower than the group's chunk still runs >= 2 cells per device (as the chunk does,
                # unless it is 1 per device itself): only widths >= 2 round alike (the reproducibility rule)
                widths = [chunk if len(ids) == group_size else min(chunk, width_of(max(len(ids), 2 * n_devices)))
                          for _, ids in parts]
                bar.total += sum(math.ceil(len(ids) / w) for (_, ids), w in zip(parts, widths)) - \
                    math.ceil(group_size / chunk)
                for (resumed_at, part_ids), width in zip(parts, widths):
                    part_program = program
                    if resumed_at is not None:  # one program per resume point: fit scans the steps after it
                        part_program = functools.partial(program, checkpoint=(*checkpoint, resumed_at))
                        programs += 1
                    for first in range(0, len(part_ids), width):
                        if scope.interrupted:  # Ctrl-C arrived: start nothing new, keep what is on the device
                            break
                        ids = part_ids[first : first + width]
                        padded_ids = np.concatenate([ids, np.repeat(ids[-1:], width - len(ids))])
                        inputs, seed_column = inputs_of(padded_ids)
                        cells = None if checkpoint is None else np.where(  # padding cells repeat a real one: no writes
                            np.arange(width) < len(ids), padded_ids, -1).astype(np.int32)
                        if resumed_at is None:
                            values, seed_column, cells = _place((inputs, seed_column, cells), sharding)
                            # dispatch this chunk before copying the previous one to the host: transfers overlap
                            result = program(values, seed_column, cells)
                        else:
                            stored = _cell_ckpt.load_cells([plan[i][0] for i in padded_ids])
                            values, seed_column, cells, stored = _place((inputs, seed_column, cells, stored),
                                                                        sharding)
                            result = part_program(values, seed_column, cells, None, stored)
                        padded += width - len(ids)
                        if in_flight is not None:
                            collect(*in_flight)
                        in_flight = (ids, result)
                    if scope.interrupted:
                        break
                if scope.interrupted:
                    break
            if in_flight is not None:
                collect(*in_flight)
            complete = not scope.interrupted
        except KeyboardInterrupt:
            complete = False
            # under optlab's handler Ctrl-C never raises here, so this one came from fn itself (not sticky);
            # without the handler (another thread, a user's own handler) it is a real Ctrl-C: later grids stop
            if not _interrupt.deferring():
                _interrupt.mark_interrupted()
            if in_flight is not None:  # it is already running and cannot be cancelled: keep its cells
                collect(*in_flight)
        finally:
            bar.close()
    if checkpoint is not None:
        jax.effects_barrier()  # the cells' checkpoint writes are unordered callbacks: all on disk before we return
    n_done = sum(len(ids) for ids, _, _ in finished)
    complete = complete or n_done == len(index)  # a Ctrl-C during the last chunk loses nothing (still sticky)
    seconds = time.perf_counter() - started
    if not complete:
        warnings.warn(
            f"run_grid interrupted: returning the {n_done} of {len(index)} cells that finished (complete=False)",
            RuntimeWarning,
            stacklevel=2,
        )
    if progress and not show_bar:  # logs and pipes: one line per grid instead of a bar redrawn with \r
        state = "" if complete else f", INTERRUPTED after {n_done} of {len(index)} cells"
        print(f"{description}, {seconds:.1f} s{state}", file=sys.stderr, flush=True)

    done_ids = np.concatenate([ids for ids, _, _ in finished]) if finished else np.zeros(0, int)
    order = np.argsort(done_ids)
    outputs = {k: _stack([host[k] for _, host, _ in finished])[order] for k in (finished[0][1] if finished else {})}
    info = {
        "n_devices": n_devices,
        "chunk_size": chunk,
        "n_chunks": len(finished),
        "padded_cells": padded,
        "output_devices": min((devices for _, _, devices in finished), default=0),
        "programs": programs,
        "seconds": seconds,
        "cells_total": len(index),
    }
    if compact_every is not None:
        info["compaction"] = compaction
    if checkpoint is not None:
        info["checkpoint_dir"] = checkpoint[1]
        info["checkpoint_cells"] = done_ids[order].tolist()
    if plan is not None:
        info["resumed"] = [0 if plan[i] is None else plan[i][1].step for i in done_ids[order].tolist()]
    return GridResult(all_axes, index[done_ids[order]], outputs, static, complete, info)
