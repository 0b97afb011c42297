"""run_grid: a hyperparameter × seed grid as one ``jit(vmap(fn))`` per static value, optionally sharded over devices.

A study is a pure function ``fn(hparams, key) -> dict of arrays``. The grid is the cartesian product of ``axes``
and a ``"seed"`` axis (innermost). Dynamic axes (numbers) become traced arrays and are vmapped in one compiled
program; static axes (shapes, optimizer names, ...) loop in Python with one compilation each.
"""

from __future__ import annotations

import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from optlab.engine.grid_result import SEED_AXIS, GridResult, _python
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
