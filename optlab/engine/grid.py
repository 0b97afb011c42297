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
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from optlab import _atomic
from optlab.engine import interrupt as _interrupt
from optlab.engine import cell_checkpoints as _cells
from optlab.engine._checks import _int_arg
from optlab.engine.grid_result import SEED_AXIS, GridResult, _python

# tqdm.auto picks the widget bar inside Jupyter, whose stderr is not a terminal but shows bars fine
_NOTEBOOK_BAR = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
def _is_number(value) -> bool:
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return True
    return isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 and value.dtype.kind in "biuf"


def _check_representable(name: str, values: list) -> None:
    """Refuses dynamic values that the axis array cannot hold (without x64, ``2**40`` would wrap to 0 in int32)."""
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if ints and len(ints) == len(values):
        info = np.iinfo(jax.dtypes.canonicalize_dtype(np.int64))
        bad = [v for v in ints if not info.min <= v <= info.max]
        if bad:
            raise ValueError(
                f"axis {name!r} value {bad[0]} does not fit {info.dtype} (range [{info.min}, {info.max}]); "
                f"enable 64-bit JAX (JAX_ENABLE_X64=1), pass it as a float, or list {name!r} in static=[...]"
            )
    floats = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):  # the overflow is what we are looking for
        big = np.isfinite(floats) & ~np.isfinite(floats.astype(jax.dtypes.canonicalize_dtype(np.float64)))
    if big.any():
        raise ValueError(f"axis {name!r} value {values[int(np.argmax(big))]!r} overflows "
                         f"{jax.dtypes.canonicalize_dtype(np.float64)} (becomes inf); enable 64-bit JAX or rescale it")


def _check_axes(axes, static) -> tuple[dict[str, list], tuple[str, ...]]:
    if not isinstance(axes, Mapping):
        raise TypeError(f"axes must be a mapping name -> sequence of values, got {type(axes).__name__}")
    static = (static,) if isinstance(static, str) else tuple(static)
    checked = {}
    for name, values in axes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"axis names must be non-empty strings, got {name!r}")
        if name == SEED_AXIS:
            raise ValueError(f"axis name {SEED_AXIS!r} is reserved: pass seeds=... instead")
        if isinstance(values, (np.ndarray, jax.Array)) and values.ndim == 1:
            values = np.asarray(values).tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"axis {name!r} must be a list/tuple/range of values, got {values!r}")
        if len(values) == 0:
            raise ValueError(f"axis {name!r} is empty; give at least one value")
        if name not in static:
            bad = [v for v in values if not _is_number(v)]
            if bad:
                raise TypeError(
                    f"axis {name!r} is dynamic (vmapped) so its values must be numbers, got {bad[0]!r}; "
                    f"list it in static=[...] to loop over it in Python instead"
                )
            values = [_python(np.asarray(v)) for v in values]
            _check_representable(name, values)
        checked[name] = list(values)
    if len(set(static)) != len(static):
        raise ValueError(f"static names must be unique, got {static}")
    unknown = [s for s in static if s not in checked]
    if unknown:
        raise ValueError(f"static names must be axes, one of {list(checked)}; got {unknown}")
    return checked, static


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 (an int N means seeds 0..N-1), got {seeds}")
        return list(range(int(seeds)))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)) or len(seeds) == 0:
        raise TypeError(f"seeds must be an int N or a non-empty sequence of ints, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**31:
            raise ValueError(f"seeds must be ints in [0, 2**31), got {s!r}")
        out.append(int(s))
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be unique, got {out}")
    return out


def _resolve_mesh(mesh) -> Mesh | None:
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    if mesh == "auto":
        return Mesh(np.asarray(jax.devices()), ("grid",))
    raise ValueError(f"mesh must be None, 'auto' or a jax.sharding.Mesh, got {mesh!r}")


def _flatten(outputs, prefix: str = "") -> dict:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"fn must return a dict of arrays, got {type(outputs).__name__}")
    flat = {}
    for name, value in outputs.items():
        key = f"{prefix}{name}"
        flat.update(_flatten(value, key + "/") if isinstance(value, Mapping) else {key: value})
    return flat


class _ByIdentity:
    """A jit static argument that is not hashable by value: compared by identity (no reuse across calls)."""

    def __init__(self, value):
        self.value = value


def _hashable(value):
    try:
        hash(value)
    except TypeError:
        return _ByIdentity(value)
    return value


@functools.partial(jax.jit, static_argnames=("fn", "fixed", "names", "sharding", "checkpoint"))
def _run_cells(values, seeds, cells=None, *, fn, fixed, names, sharding, checkpoint=None):
    """``vmap`` of the cell function over a chunk; static args make jit reuse it for the same fn and static values.

    With ``checkpoint=(every, directory)`` each cell's ``fit`` writes its checkpoints from inside the program, under
    ``cell_dir(directory, cells[i])`` (``cells`` -1 for padding cells, which write nothing).
    """
    unwrap = lambda v: v.value if isinstance(v, _ByIdentity) else v  # noqa: E731
    fn, fixed = unwrap(fn), {name: unwrap(v) for name, v in fixed}

    def cell(dynamic, seed, cell_id):
        hparams = {n: fixed[n] if n in fixed else dynamic[n] for n in names}
        if checkpoint is None:
            return _flatten(fn(hparams, jax.random.key(seed)))
        every, directory = checkpoint
        with _cells.grid_cell(_cells.GridCell(every, pathlib.Path(directory), cell_id)) as taken:
            outputs = _flatten(fn(hparams, jax.random.key(seed)))
        if not taken[1]:
            raise ValueError("run_grid(checkpoint_every=...) checkpoints the cell's optlab.fit call, but fn never "
                             "called optlab.fit")
        return outputs

    outputs = jax.vmap(cell)(values, seeds, cells)
    return outputs if sharding is None else jax.lax.with_sharding_constraint(outputs, sharding)


def _to_host(array: jax.Array) -> np.ndarray:
    if not array.is_fully_addressable:  # multi-host: every process gathers the full grid
        from jax.experimental import multihost_utils

        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(array)


def _place(tree, sharding):
    if sharding is None:
        return tree
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]), tree)


def _stack(pieces: list[np.ndarray]) -> np.ndarray:
    if len({(p.shape[1:], p.dtype) for p in pieces}) == 1:
        return np.concatenate(pieces)
    stacked = np.empty(sum(len(p) for p in pieces), dtype=object)
    stacked[:] = [cell for p in pieces for cell in p]
    return stacked


def _describe(label, axes: Mapping[str, list]) -> str:
    """``"exp 5: 6 optimizer × 4 learning_rate × 8 seed = 192 cells"``: what a progress bar or log line is about."""
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a string or None, got {label!r}")
    size = " × ".join(f"{len(values)} {name}" for name, values in axes.items())
    total = math.prod(len(values) for values in axes.values())
    return f"{label or 'grid'}: {size} = {total} cell{'s' if total != 1 else ''}"


def _write_cell_index(directory: str, all_axes: dict, index: np.ndarray, names: list[str]) -> None:
    cells = [{"cell": i, "dir": _cells.cell_dir(directory, i).name,
              **{n: _python(np.asarray(all_axes[n][j])) for n, j in zip(names, row)}} for i, row in enumerate(index)]
    pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
    _atomic.write_json(pathlib.Path(directory) / "cells.json", cells)


def run_grid(
    fn: Callable[[dict, jax.Array], Mapping[str, Any]],
    axes: Mapping[str, Sequence],
    *,
    seeds: int | Sequence[int] = 1,
    static: Sequence[str] = (),
    mesh=None,
    chunk_size: int | None = None,
    progress: bool = True,
    label: str | None = None,
    checkpoint_every: int | None = None,
    checkpoint_dir=None,
) -> GridResult:
    """Evaluate ``fn`` on the cartesian product of ``axes`` × seeds, vmapped, chunked and sharded.

    .. math::

        \\mathrm{cell}(v_1, \\dots, v_k, s) = \\mathtt{fn}(\\{a_i: v_i\\}, \\mathtt{jax.random.key}(s))

    Reproducibility rule: a cell's key is ``jax.random.key(seed)`` and its dynamic values are 0-d arrays of the
    axis dtype (float32 for Python floats unless x64 is on), so ``fn({"lr": jnp.asarray(0.1)}, jax.random.key(3))``
    re-runs that cell alone with the same numbers, to float rounding: another compiled program (plain ``jit``,
    another chunk size) may order sums differently, and chaotic runs (e.g. a zig-zagging Newton-root step on a
    non-convex loss) amplify that last-bit difference over the steps.

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
      chunk_size: cells per compiled call (bounds memory); None runs all cells of a static combination at once.
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
      checkpoint_dir: the grid's checkpoint folder (see ``checkpoint_every``).

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
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    mesh = _resolve_mesh(mesh)
    if (checkpoint_every is None) != (checkpoint_dir is None):
        raise ValueError("checkpoint_every and checkpoint_dir go together: pass both or neither")
    checkpoint = None
    if checkpoint_every is not None:
        checkpoint = (_int_arg("checkpoint_every", checkpoint_every, 1), str(pathlib.Path(checkpoint_dir)))
    all_axes = {**checked, SEED_AXIS: seed_values}
    names = list(all_axes)
    index = np.indices([len(v) for v in all_axes.values()]).reshape(len(names), -1).T
    static_cols = [names.index(s) for s in static]
    dynamic = [n for n in checked if n not in static]
    columns = {n: np.asarray(checked[n]) for n in dynamic}
    columns[SEED_AXIS] = np.asarray(seed_values, dtype=np.int32)

    n_devices = mesh.size if mesh is not None else 1
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names))) if mesh is not None else None
    groups: dict[tuple, np.ndarray] = {}
    for key in dict.fromkeys(map(tuple, index[:, static_cols].tolist())):
        groups[key] = np.flatnonzero(np.all(index[:, static_cols] == np.asarray(key, dtype=int), axis=1))
    group_size = len(next(iter(groups.values())))
    chunk = min(chunk_size or group_size, group_size)
    chunk = math.ceil(chunk / n_devices) * n_devices
    n_chunks = math.ceil(group_size / chunk) * len(groups)

    description = _describe(label, all_axes)
    if _interrupt.interrupt_requested():  # an earlier grid of this run was interrupted: do no work at all
        empty = GridResult(all_axes, index[:0], {}, static, False, {"cells_total": len(index), "n_chunks": 0})
        raise _interrupt.GridInterrupted(
            f"{description}: not started because an earlier grid of this run was interrupted (Ctrl-C); "
            f"optlab.engine.interrupt.reset_interrupt() runs grids again", empty)
    if checkpoint is not None:  # which cell folder is which: written before any work, so it survives a crash
        _write_cell_index(checkpoint[1], all_axes, index, names)

    finished: list[tuple[np.ndarray, dict, int]] = []  # (cell ids, host outputs, devices) per collected chunk
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
                    _run_cells,
                    fn=_hashable(fn),
                    fixed=tuple((s, _hashable(v)) for s, v in fixed.items()),
                    names=tuple(checked),
                    sharding=sharding,
                    checkpoint=checkpoint,
                )
                programs += 1
                for first in range(0, group_size, chunk):
                    if scope.interrupted:  # Ctrl-C arrived: start nothing new, keep what is on the device
                        break
                    ids = cell_ids[first : first + chunk]
                    padded_ids = np.concatenate([ids, np.repeat(ids[-1:], chunk - len(ids))])
                    inputs = {n: columns[n][index[padded_ids, names.index(n)]] for n in columns}
                    seed_column = inputs.pop(SEED_AXIS)
                    cells = None if checkpoint is None else np.where(  # padding cells repeat a real one: no writes
                        np.arange(chunk) < len(ids), padded_ids, -1).astype(np.int32)
                    values, seed_column, cells = _place((inputs, seed_column, cells), sharding)
                    # dispatch this chunk before copying the previous one to the host, so transfers overlap compute
                    result = program(values, seed_column, cells)
                    padded += chunk - len(ids)
                    if in_flight is not None:
                        collect(*in_flight)
                    in_flight = (ids, result)
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
    if checkpoint is not None:
        info["checkpoint_dir"] = checkpoint[1]
        info["checkpoint_cells"] = done_ids[order].tolist()
    return GridResult(all_axes, index[done_ids[order]], outputs, static, complete, info)
