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


def _cells(values, seeds, cells=None, lane_inputs=None, *, fn, fixed, names, sharding, checkpoint=None, lane=None):
    """``vmap`` of the cell function over a chunk; static args make jit reuse it for the same fn and static values.

    With ``checkpoint=(every, directory)`` each cell's ``fit`` writes its checkpoints from inside the program, under
    ``cell_dir(directory, cells[i])`` (``cells`` -1 for padding cells, which write nothing). With ``lane`` (a
    :class:`~optlab.engine.compaction.Lane` mode) the cell's ``fit`` runs one segment of a compacted grid, or
    finishes it, from ``lane_inputs`` (per-cell state and rows); a segment returns that state and those rows.
    """
    unwrap = lambda v: v.value if isinstance(v, _ByIdentity) else v  # noqa: E731
    fn, fixed = unwrap(fn), {name: unwrap(v) for name, v in fixed}

    def cell(dynamic, seed, cell_id, lane_in):
        hparams = {n: fixed[n] if n in fixed else dynamic[n] for n in names}
        if lane is not None:
            with _compaction.lane(lane, lane_in) as slot:
                outputs = _flatten(fn(hparams, jax.random.key(seed)))
            if not slot.taken:
                raise ValueError("run_grid(compact_every=...) segments the cell's optlab.fit call, but fn never "
                                 "called optlab.fit")
            return outputs if lane[0] != "run" else slot.outputs
        if checkpoint is None:
            return _flatten(fn(hparams, jax.random.key(seed)))
        every, directory = checkpoint
        with _cell_ckpt.grid_cell(_cell_ckpt.GridCell(every, pathlib.Path(directory), cell_id)) as taken:
            outputs = _flatten(fn(hparams, jax.random.key(seed)))
        if not taken[1]:
            raise ValueError("run_grid(checkpoint_every=...) checkpoints the cell's optlab.fit call, but fn never "
                             "called optlab.fit")
        return outputs

    outputs = jax.vmap(cell)(values, seeds, cells, lane_inputs)
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
