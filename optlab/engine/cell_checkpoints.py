"""Checkpoints of ``run_grid`` cells, written from inside the compiled grid.

``run_grid(checkpoint_every=..., checkpoint_dir=...)`` traces each cell function inside :func:`grid_cell`; the
one ``fit`` call of the cell takes the :class:`GridCell` and, at the end of every chunk, hands its state to an
``io_callback`` that writes ``cell_dir(checkpoint_dir, cell) / checkpoint_{step:06d}.eqx`` on the host. Padding
cells (index -1, added to fill a device mesh) write nothing.

Example:
  >>> cell_dir("ckpt", 3).as_posix()
  'ckpt/cell_000003'
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import pathlib
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import io_callback

from optlab.engine import checkpoint as ckpt
from optlab.engine.checkpoint import TrainState

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


__all__ = [
    "GridCell",
    "cell_dir",
    "grid_cell",
]
