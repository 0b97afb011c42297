"""The compiled program of a ``run_grid`` group: ``jit(vmap(cell))`` with its static arguments and compile options.

One program per combination of static values (``fn``, the static axis values, the axis names, the sharding, the
checkpoint or lane mode are jit static arguments, so jit reuses it for later chunks and later grids with the same
``fn`` object). The compile options make a cell's numbers independent of the program's width (below), which lane
compaction (:mod:`optlab.engine.compaction`) and ``chunk_size="auto"`` (:mod:`optlab.engine.chunking`) rely on.

Example:
  >>> out = _cells({"lr": np.array([0.1, 0.2], np.float32)}, np.array([0, 1], np.int32),
  ...              fn=lambda hp, key: {"twice": 2 * hp["lr"]}, fixed=(), names=("lr",), sharding=None)
  >>> out["twice"].tolist()
  [0.20000000298023224, 0.4000000059604645]
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping

import jax
import numpy as np

from optlab.engine import cell_checkpoints as _cell_ckpt
from optlab.engine import compaction as _compaction


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


def _cells(values, seeds, cells=None, lane_inputs=None, resume_inputs=None, *, fn, fixed, names, sharding,
           checkpoint=None, lane=None):
    """``vmap`` of the cell function over a chunk; static args make jit reuse it for the same fn and static values.

    With ``checkpoint=(every, directory)`` each cell's ``fit`` writes its checkpoints from inside the program, under
    ``cell_dir(directory, cells[i])`` (``cells`` -1 for padding cells, which write nothing). With
    ``checkpoint=(every, directory, group)`` (a :class:`~optlab.engine.cell_checkpoints.ResumeGroup`) each cell's
    ``fit`` continues from its stored checkpoint ``resume_inputs`` (stacked leaves, one row per cell) at
    ``group.step``, scanning only the steps after it. With ``lane`` (a
    :class:`~optlab.engine.compaction.Lane` mode) the cell's ``fit`` runs one segment of a compacted grid, or
    finishes it, from ``lane_inputs`` (per-cell state and rows); a segment returns that state and those rows.
    """
    unwrap = lambda v: v.value if isinstance(v, _ByIdentity) else v  # noqa: E731
    fn, fixed = unwrap(fn), {name: unwrap(v) for name, v in fixed}

    def cell(dynamic, seed, cell_id, lane_in, resume_in):
        hparams = {n: fixed[n] if n in fixed else dynamic[n] for n in names}
        if lane is not None:
            with _compaction.lane(lane, lane_in) as slot:
                outputs = _flatten(fn(hparams, jax.random.key(seed)))
            if not slot.taken:
                raise ValueError("run_grid(compact_every=...) segments the cell's optlab.fit call, but fn never "
                                 "called optlab.fit")
            return outputs if lane[0] != "run" else slot.value.outputs
        if checkpoint is None:
            return _flatten(fn(hparams, jax.random.key(seed)))
        every, directory, *group = checkpoint
        resume = _cell_ckpt.CellResume(group[0], resume_in) if group else None
        with _cell_ckpt.grid_cell(_cell_ckpt.GridCell(every, pathlib.Path(directory), cell_id, resume)) as taken:
            outputs = _flatten(fn(hparams, jax.random.key(seed)))
        if not taken.taken:
            raise ValueError("run_grid(checkpoint_every=...) checkpoints the cell's optlab.fit call, but fn never "
                             "called optlab.fit")
        return outputs

    outputs = jax.vmap(cell)(values, seeds, cells, lane_inputs, resume_inputs)
    return outputs if sharding is None else jax.lax.with_sharding_constraint(outputs, sharding)


# XLA:CPU hands some reductions (the mean of a loss over the data, a gradient's sum over examples) to YNNPACK
# library fusions, and whether a reduce-window and the reduce after it form one fusion or two depends on the vmap
# width: the same cell then sums in another order in a program of another width (a chunk of 256 cells differs in
# the last bit from one of 1024: in the optimized HLO the width-1024 program runs both in one YNN fusion, the
# width-256 one the final reduce as a separate loop fusion). Without those fusions every width >= 2 rounds alike, so
# a compacted grid (narrower re-packed programs) and another chunk size give bit-identical cells; tiny grids also
# run faster without them (benchmarks/bench_grid.py). The option is a no-op on other backends.
_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_STATIC = ("fn", "fixed", "names", "sharding", "checkpoint", "lane")
_run_cells = jax.jit(_cells, static_argnames=_STATIC, compiler_options=_COMPILER_OPTIONS)


@functools.cache
def _cells_program():
    """``_run_cells``, or plain jit where this jaxlib's XLA does not know the option (checked once, on a scalar)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_COMPILER_OPTIONS)(np.float32(0.0)).block_until_ready()
    except jax.errors.JaxRuntimeError as error:
        if "compile option" not in str(error):
            raise
        return jax.jit(_cells, static_argnames=_STATIC)
    return _run_cells


def _uncacheable(key) -> bool:
    return any(isinstance(v, _ByIdentity) for v in jax.tree.leaves(key, is_leaf=lambda v: isinstance(v, _ByIdentity)))


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


def compacted_group(program, inputs_of, cell_ids, *, every, chunk, n_devices, sharding, interrupted):
    """One static group under ``compact_every``: the probe, then :func:`~optlab.engine.compaction.run_lanes`."""

    def lane_program(mode, positions, lane_inputs):
        values, seed_column = inputs_of(cell_ids[positions])
        values, seed_column, lane_inputs = _place((values, seed_column, lane_inputs), sharding)
        if mode is None:  # the uncompacted program (the same call, so jit reuses its compile)
            return program(values, seed_column, None)
        return program(values, seed_column, None, lane_inputs, lane=mode)

    static = {k: program.keywords[k] for k in ("fn", "fixed", "names")}

    def trace(layout):
        # Shapes only: fit records its steps, log_every and batch period in ``layout``; then which trace columns
        # fn's outputs use, so segments carry just those (as the uncompacted program computes just those).
        cells = functools.partial(_cells, **static, sharding=None)
        first = inputs_of(cell_ids[:1])
        jax.eval_shape(functools.partial(cells, lane=("probe", layout)), *first)
        finish = functools.partial(cells, lane=("finish", True))
        layout["columns"] = _compaction.used_columns(lambda s, r: finish(*first, None, (s, r)),
                                                     *layout["lane_shapes"])

    fn = static["fn"]
    key = None if isinstance(fn, _ByIdentity) or _uncacheable(static["fixed"]) else (static["fixed"], static["names"])
    layout = _compaction.probe_layout(fn.value if isinstance(fn, _ByIdentity) else fn, key, trace)
    return _compaction.run_lanes(lane_program, layout, len(cell_ids), compact_every=every, chunk=chunk,
                                 n_devices=n_devices, to_host=_to_host, interrupted=interrupted)
