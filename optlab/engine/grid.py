"""run_grid: a hyperparameter × seed grid as one ``jit(vmap(fn))`` per static value, optionally sharded over devices.

A study is a pure function ``fn(hparams, key) -> dict of arrays``. The grid is the cartesian product of ``axes``
and a ``"seed"`` axis (innermost). Dynamic axes (numbers) become traced arrays and are vmapped in one compiled
program; static axes (shapes, optimizer names, ...) loop in Python with one compilation each.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

SEED_AXIS = "seed"
_AGGREGATES: dict[str, Callable[[np.ndarray], Any]] = {
    "mean": np.mean, "median": np.median, "min": np.min, "max": np.max, "std": np.std,
    "nanmean": np.nanmean, "nanmedian": np.nanmedian, "nanmin": np.nanmin, "nanmax": np.nanmax, "nanstd": np.nanstd,
}  # fmt: skip


def _atomic_write(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace`` (never half-written)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _python(value):
    return value.item() if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 else value


@dataclass
class GridResult:
    """Outputs of :func:`run_grid`, one row per finished cell, in grid order (last axis, ``"seed"``, fastest).

    Attributes:
      axes: name -> list of values, the grid's axes in order, ``"seed"`` last.
      index: (n_cells, n_axes) int array; ``axes[name][index[i, k]]`` is cell ``i``'s value on axis ``k``.
      outputs: name -> numpy array with leading axis n_cells (nested output dicts are flattened to ``"a/b"``).
        If a static axis changes an output's shape, that output is an object array of per-cell arrays.
      static: names of the static axes.
      complete: False when the run was interrupted; only finished cells are present then.
      info: run facts: ``n_devices``, ``chunk_size`` (cells per compiled call), ``n_chunks``, ``padded_cells``,
        ``output_devices`` (devices the outputs were spread over), ``programs`` (compiled programs), ``seconds``.

    Example::

        res.best("final_loss")                       # the row with the smallest final loss
        rows, cols, table = res.pivot("lr", "b2", "final_loss")
        res.aggregate(over="seed")                   # final_loss_mean / _std / _min / _max / _nonfinite per lr, b2
        res.outputs["loss"][res.where(lr=0.1)]       # (n_seeds, T) curves of one learning rate
    """

    axes: dict[str, list]
    index: np.ndarray
    outputs: dict[str, np.ndarray]
    static: tuple[str, ...] = ()
    complete: bool = True
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def cells(self) -> list[dict]:
        """One dict axis -> value per cell."""
        names = list(self.axes)
        return [{n: self.axes[n][j] for n, j in zip(names, row)} for row in self.index.tolist()]

    @property
    def scalar_outputs(self) -> list[str]:
        """Names of outputs holding one scalar per cell (the columns of the flat table)."""
        return [k for k, v in self.outputs.items() if v.ndim == 1 and v.dtype != object]

    def _column(self, metric: str) -> np.ndarray:
        if metric not in self.scalar_outputs:
            raise ValueError(f"metric must be a scalar output, one of {self.scalar_outputs}; got {metric!r}")
        return np.asarray(self.outputs[metric], dtype=np.float64)

    def _axis(self, name: str, arg: str) -> int:
        if name not in self.axes:
            raise ValueError(f"{arg} must be one of the axes {list(self.axes)}; got {name!r}")
        return list(self.axes).index(name)

    def to_rows(self) -> list[dict]:
        """The flat table: per cell, its axis values and every scalar output (NaN stays NaN; arrays are left out)."""
        scalars = self.scalar_outputs
        return [
            {**cell, **{k: _python(self.outputs[k][i]) for k in scalars}} for i, cell in enumerate(self.cells)
        ]

    def to_csv(self, path) -> None:
        """Write :meth:`to_rows` as CSV (atomically); NaN is written as ``nan``."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*self.axes, *self.scalar_outputs])
        writer.writeheader()
        writer.writerows(self.to_rows())
        _atomic_write(path, buffer.getvalue())

    def to_json(self, path) -> None:
        """Write :meth:`to_rows` as a JSON list (atomically); NaN/inf use Python's ``NaN``/``Infinity`` tokens."""
        _atomic_write(path, json.dumps(self.to_rows(), indent=1, default=str))

    def best(self, metric: str, mode: str = "min") -> dict:
        """The row (as in :meth:`to_rows`) with the smallest (``mode="min"``) or largest finite ``metric``."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        values = self._column(metric)
        finite = np.isfinite(values)
        if not finite.any():
            raise ValueError(f"no cell has a finite {metric!r}")
        ranked = np.where(finite, values if mode == "min" else -values, np.inf)
        i = int(np.argmin(ranked))
        return {**self.cells[i], **{k: _python(self.outputs[k][i]) for k in self.scalar_outputs}}

    def pivot(self, row_axis: str, col_axis: str, metric: str, agg="mean") -> tuple[list, list, np.ndarray]:
        """A (rows × cols) table of ``metric`` aggregated over every other axis, e.g. for a heatmap.

        ``agg`` is one of ``mean, median, min, max, std`` (NaN propagates: a diverged seed shows), their ``nan*``
        versions, or a callable on a 1-D array. Empty combinations (interrupted grid) are NaN.
        Returns ``(row_values, col_values, matrix)``.
        """
        r, c = self._axis(row_axis, "row_axis"), self._axis(col_axis, "col_axis")
        if r == c:
            raise ValueError(f"row_axis and col_axis must differ, both are {row_axis!r}")
        reduce = agg if callable(agg) else _AGGREGATES.get(agg)
        if reduce is None:
            raise ValueError(f"agg must be a callable or one of {sorted(_AGGREGATES)}; got {agg!r}")
        values = self._column(metric)
        rows, cols = self.axes[row_axis], self.axes[col_axis]
        table = np.full((len(rows), len(cols)), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN groups are NaN by design
            for i in range(len(rows)):
                for j in range(len(cols)):
                    chosen = values[(self.index[:, r] == i) & (self.index[:, c] == j)]
                    if chosen.size:
                        table[i, j] = reduce(chosen)
        return list(rows), list(cols), table

    def aggregate(self, over: str | Sequence[str] = SEED_AXIS) -> list[dict]:
        """Statistics of every scalar output over the axes ``over``, per combination of the remaining axes.

        Each row holds the remaining axis values, ``n_cells``, and per metric ``<m>_mean``, ``<m>_std`` (population),
        ``<m>_min``, ``<m>_max`` over its finite values and ``<m>_nonfinite`` (count of NaN/inf cells, never dropped
        silently; the statistics are NaN when no value is finite).
        """
        over = (over,) if isinstance(over, str) else tuple(over)
        cols = {self._axis(name, "over") for name in over}
        keep = [k for k in range(len(self.axes)) if k not in cols]
        names = list(self.axes)
        keys = self.index[:, keep]
        out = []
        for key in sorted({tuple(k) for k in keys.tolist()}):
            chosen = np.all(keys == np.asarray(key, dtype=keys.dtype), axis=1)
            row: dict[str, Any] = {names[k]: self.axes[names[k]][j] for k, j in zip(keep, key)}
            row["n_cells"] = int(chosen.sum())
            for metric in self.scalar_outputs:
                values = self._column(metric)[chosen]
                finite = values[np.isfinite(values)]
                stats = (finite.mean(), finite.std(), finite.min(), finite.max()) if finite.size else (np.nan,) * 4
                row.update({f"{metric}_{s}": float(v) for s, v in zip(("mean", "std", "min", "max"), stats)})
                row[f"{metric}_nonfinite"] = int(values.size - finite.size)
            out.append(row)
        return out

    def where(self, **axis_values) -> np.ndarray:
        """Boolean mask over cells: each axis equals the given value (a list or set means any of its values)."""
        mask = np.ones(len(self), dtype=bool)
        for name, wanted in axis_values.items():
            k = self._axis(name, "axis name")
            wanted = list(wanted) if isinstance(wanted, (list, set, frozenset)) else [wanted]
            positions = []
            for value in wanted:
                hits = [j for j, v in enumerate(self.axes[name]) if v is value or _equal(v, value)]
                if not hits:
                    raise ValueError(f"{name}={value!r} is not on the axis; its values are {self.axes[name]}")
                positions += hits
            mask &= np.isin(self.index[:, k], positions)
        return mask


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _is_number(value) -> bool:
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return True
    return isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 and value.dtype.kind in "biuf"


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


@functools.partial(jax.jit, static_argnames=("fn", "fixed", "names", "sharding"))
def _run_cells(values, seeds, *, fn, fixed, names, sharding):
    """``vmap`` of the cell function over a chunk; static args make jit reuse it for the same fn and static values."""
    unwrap = lambda v: v.value if isinstance(v, _ByIdentity) else v  # noqa: E731
    fn, fixed = unwrap(fn), {name: unwrap(v) for name, v in fixed}

    def cell(dynamic, seed):
        hparams = {n: fixed[n] if n in fixed else dynamic[n] for n in names}
        return _flatten(fn(hparams, jax.random.key(seed)))

    outputs = jax.vmap(cell)(values, seeds)
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


def run_grid(
    fn: Callable[[dict, jax.Array], Mapping[str, Any]],
    axes: Mapping[str, Sequence],
    *,
    seeds: int | Sequence[int] = 1,
    static: Sequence[str] = (),
    mesh=None,
    chunk_size: int | None = None,
    progress: bool = True,
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
    keeps the outputs sharded. A ``KeyboardInterrupt`` returns the finished cells (with the chunk already running,
    which cannot be cancelled) with ``complete=False`` and a warning.

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
      progress: show a tqdm bar over chunks (only when stderr is a terminal).

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

    finished: list[tuple[np.ndarray, dict, int]] = []  # (cell ids, host outputs, devices) per collected chunk
    padded, programs, complete, started, in_flight = 0, 0, True, time.perf_counter(), None
    bar = tqdm(total=n_chunks, desc="grid", unit="chunk", disable=not progress or not sys.stderr.isatty())

    def collect(ids, result):
        if finished and finished[-1][0] is ids:  # already collected before an interrupt
            return
        devices = min((len(a.sharding.device_set) for a in result.values()), default=0)
        finished.append((ids, {k: _to_host(a)[: len(ids)] for k, a in result.items()}, devices))
        bar.update(1)

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
            )
            programs += 1
            for first in range(0, group_size, chunk):
                ids = cell_ids[first : first + chunk]
                padded_ids = np.concatenate([ids, np.repeat(ids[-1:], chunk - len(ids))])
                inputs = {n: columns[n][index[padded_ids, names.index(n)]] for n in columns}
                seed_column = inputs.pop(SEED_AXIS)
                values, seed_column = _place((inputs, seed_column), sharding)
                # dispatch this chunk before copying the previous one to the host, so transfers overlap compute
                result = program(values, seed_column)
                padded += chunk - len(ids)
                if in_flight is not None:
                    collect(*in_flight)
                in_flight = (ids, result)
        if in_flight is not None:
            collect(*in_flight)
    except KeyboardInterrupt:
        complete = False
        if in_flight is not None:  # it is already running and cannot be cancelled: keep its cells
            collect(*in_flight)
        n_done = sum(len(ids) for ids, _, _ in finished)
        warnings.warn(
            f"run_grid interrupted: returning the {n_done} of {len(index)} cells that finished (complete=False)",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        bar.close()

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
        "seconds": time.perf_counter() - started,
    }
    return GridResult(all_axes, index[done_ids[order]], outputs, static, complete, info)
