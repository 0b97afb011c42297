"""Checkpoints of ``run_grid`` cells, written from inside the compiled grid.

``run_grid(checkpoint_every=..., checkpoint_dir=...)`` traces each cell function inside :func:`grid_cell`; the
one ``fit`` call of the cell takes the :class:`GridCell` and, at the end of every chunk, hands its state to an
``io_callback`` that writes ``cell_dir(checkpoint_dir, cell) / checkpoint_{step:06d}.eqx`` on the host. Padding
cells (index -1, added to fill a device mesh) write nothing.

``run_grid(resume=True)`` continues each cell from its latest checkpoint: :func:`resume_plan` reads, on the host and
before any work, where each cell stands (its :class:`ResumeGroup`: step, log_every, key impl, batching), cells at
the same point form one program, :func:`load_cells` stacks their stored leaves as the program's batched input, and
the cell's ``fit`` continues from them (:func:`resume_cell`, through :attr:`GridCell.resume`).

Example:
  >>> cell_dir("ckpt", 3).as_posix()
  'ckpt/cell_000003'
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import io_callback

from optlab.engine import checkpoint as ckpt
from optlab.engine.cell_slot import CellSlot
from optlab.engine.checkpoint import TrainState
from optlab.engine.state import _BATCHING, _batching_pair

class GridCell(NamedTuple):
    """Where one ``run_grid`` cell keeps its checkpoints; set by ``run_grid(checkpoint_every=...)`` while it traces."""

    every: int  # steps between checkpoints
    directory: pathlib.Path  # the grid's checkpoint_dir; the cell writes under cell_dir(directory, cell)
    cell: jax.Array  # () int32 (traced): the cell's index in the grid, -1 for padding cells (not written)
    resume: CellResume | None = None  # run_grid(resume=True): where the cell's fit continues from; None: step 0


class ResumeGroup(NamedTuple):
    """Where a resumed cell's latest checkpoint stands: the static part of a resumed ``run_grid`` program.

    Cells that share it run in one program (it is a jit static argument): its ``fit`` scans only the steps after
    ``step``.
    """

    step: int  # the global step the checkpoint was written at (the cell continues from here)
    log_every: int  # steps per trace row the checkpoint was written with
    key_impl: str  # the PRNG implementation of the stored key
    batching: tuple[int, int] | None  # the stored [batch_size (-1: full batch), shuffle] tag, None if absent


class CellResume(NamedTuple):
    """A resumed cell's checkpoint inside the program: its group (static) and its stored leaves (traced)."""

    group: ResumeGroup
    leaves: Any  # (state leaves, trace dict, optimizer-state leaves) of checkpoint_file.read_leaves, one cell's


def cell_dir(directory: str | os.PathLike, cell: int) -> pathlib.Path:
    """``directory / cell_{cell:06d}``: the checkpoint folder of grid cell ``cell`` (its row in the GridResult)."""
    return pathlib.Path(directory) / f"cell_{int(cell):06d}"


_GRID_CELL = CellSlot("grid_cell", "run_grid(checkpoint_every=...)",
                      "checkpoint one of them with fit(checkpoint_every=..., checkpoint_dir=...) outside the grid instead")


def grid_cell(cell: GridCell):
    """Scope in which the (single) ``fit`` call of a grid cell checkpoints through ``cell``; used by run_grid.

    Yields a :class:`~optlab.engine.cell_slot.Holder` whose ``taken`` is True once a ``fit`` call has taken the
    cell, so run_grid can tell a cell function that never calls ``fit`` (nothing would be checkpointed).
    """
    return _GRID_CELL.holding(cell)


def _take_grid_cell() -> GridCell | None:
    return _GRID_CELL.take()


def _write_cell(directory: pathlib.Path, key_impl: str, log_every: int, payload: Any) -> None:
    # Host side of the in-program checkpoint: called once per cell (io_callback runs vmapped cells one by one).
    state, trace, n_rows, tag, final, cell = jax.tree.map(np.asarray, payload)
    if int(cell) < 0:  # a padding cell repeats a real one
        return
    state = state._replace(key=jax.random.wrap_key_data(state.key, impl=key_impl))
    trace = {**{name: rows[:int(n_rows)] for name, rows in trace.items()}, **tag}  # the rows written so far
    ckpt.save_checkpoint(ckpt.checkpoint_path(cell_dir(directory, cell), int(state.step)), state, trace,
                         loss=final, log_every=log_every)


def _save_in_program(cell: GridCell, state: TrainState, trace: dict, n_rows: Any, tag: dict, final: jax.Array,
                     log_every: int) -> None:
    """Checkpoints ``state`` and the first ``n_rows`` rows of ``trace`` from inside the compiled grid.

    An (unordered) ``io_callback``. Unordered is enough: each cell and step writes its own file, and the callback
    depends on the chunk's state, so it runs after that state exists; run_grid waits for all callbacks
    (``jax.effects_barrier``) before returning.
    """
    key_impl = str(jax.random.key_impl(state.key))
    payload = (state._replace(key=jax.random.key_data(state.key)), trace, n_rows, tag, final, cell.cell)
    io_callback(functools.partial(_write_cell, cell.directory, key_impl, log_every), None, payload, ordered=False)


def run_cell_chunks(run_chunk, cell: GridCell, state: TrainState, data: Any, *, first: int, ends: list[int],
                    log_every: int, stored: dict | None, tag: dict) -> tuple[TrainState, dict | None]:
    """Runs a grid cell's ``fit`` from step ``first`` through the chunk ``ends``, checkpointing at each end.

    The chunks between checkpoints (``fit``'s chunk ends: multiples of ``cell.every`` counted from step 0, and the
    last step) run as a ``lax.scan`` over chunks of equal length, so the compiled grid holds one copy of the step
    loop per distinct chunk length (at most three: a partial first chunk, the full ones, a partial last one)
    whatever the number of checkpoints. The trace is one buffer of ``ends[-1] // log_every`` rows (the stored rows
    of a resumed run first); each checkpoint writes the rows filled so far.

    Returns:
      ``(state, trace)`` after the last end; trace None when no step was left (``ends`` empty).
    """
    if not ends:
        return state, None
    _, spec, _ = jax.eval_shape(lambda s, d: run_chunk(s, d, 1), state, data)
    n_total, offset = ends[-1] // log_every, first // log_every
    trace = {name: jax.numpy.zeros((n_total, *row.shape[1:]), row.dtype) for name, row in spec.items()}
    if stored is not None and offset:
        prefix = ckpt.align_trace(stored, spec, offset)
        trace = {name: trace[name].at[:offset].set(prefix[name]) for name in trace}
    runs: list[list[int]] = []  # [rows per chunk, number of chunks] for consecutive chunks of one length
    for start, end in zip([first, *ends], ends):
        rows = (end - start) // log_every
        if runs and runs[-1][0] == rows:
            runs[-1][1] += 1
        else:
            runs.append([rows, 1])

    def chunk(carry, rows_per_chunk):
        state, trace, offset = carry
        state, rows, final = run_chunk(state, data, rows_per_chunk)
        trace = {name: jax.lax.dynamic_update_slice_in_dim(trace[name], rows[name].astype(trace[name].dtype),
                                                           offset, axis=0) for name in trace}
        offset = offset + rows_per_chunk
        _save_in_program(cell, state, trace, offset, tag, final, log_every)
        return state, trace, offset

    carry = (state, trace, jax.numpy.asarray(offset, jax.numpy.int32))
    for rows_per_chunk, count in runs:
        if count == 1:
            carry = chunk(carry, rows_per_chunk)
        else:
            carry, _ = jax.lax.scan(lambda c, _, r=rows_per_chunk: (chunk(c, r), None), carry, length=count)
    return carry[0], carry[1]


def resume_plan(directory: str | os.PathLike, n_cells: int) -> list[tuple[pathlib.Path, ResumeGroup] | None]:
    """Where each of a grid's ``n_cells`` cells resumes: its latest intact checkpoint and group, or None (step 0).

    Host side, before any work. Damaged newer checkpoints are skipped with a warning (as
    :func:`~optlab.engine.checkpoint.latest_checkpoint` does), so a cell continues from its last good file.

    Args:
      directory: the grid's checkpoint_dir.
      n_cells: the number of cells in the grid.

    Returns:
      Per cell: ``(checkpoint path, ResumeGroup)``, or None when the cell has no intact checkpoint.

    Example:
      >>> # [0 if p is None else p[1].step for p in resume_plan("ckpt", 6)]  ->  e.g. [0, 4, 0, 8, 4, 4]
    """
    plan: list[tuple[pathlib.Path, ResumeGroup] | None] = []
    for cell in range(n_cells):
        folder = cell_dir(directory, cell)
        if not any(folder.glob("checkpoint_*.eqx")):
            plan.append(None)
            continue
        try:
            path = ckpt.latest_checkpoint(folder)
        except ckpt.CheckpointError:  # only damaged files: the cell starts again from step 0
            plan.append(None)
            continue
        leaves = ckpt.read_leaves(path)
        tag = leaves.trace.get(_BATCHING)
        meta = leaves.meta
        plan.append((path, ResumeGroup(int(meta["step"]), int(meta["log_every"]), str(meta["key_impl"]),
                                       None if tag is None else tuple(int(v) for v in tag))))
    return plan


def load_cells(paths: list[pathlib.Path]) -> tuple[list[np.ndarray], dict[str, np.ndarray], list[np.ndarray]]:
    """The stored leaves of ``paths`` (one checkpoint per cell of a chunk), stacked along a leading cell axis.

    Raises:
      ValueError: the checkpoints have different layouts (they cannot be one program's input).

    Example:
      >>> # state, trace, opt_state = load_cells([path for path, _ in plan_of_a_chunk]); trace["loss"].shape
    """
    loaded = [ckpt.read_leaves(path) for path in paths]
    layout = loaded[0].meta["layout"]
    for path, leaves in zip(paths[1:], loaded[1:]):
        if leaves.meta["layout"] != layout:
            raise ValueError(f"run_grid(resume=True): checkpoint {path} has another layout than {paths[0]} although "
                             "both cells resume at the same step; were they written by the same grid?")
    stack = lambda parts: [np.stack(leaves) for leaves in zip(*parts)]  # noqa: E731
    trace = {name: np.stack([leaves.trace[name] for leaves in loaded]) for name in loaded[0].trace}
    return stack([leaves.state for leaves in loaded]), trace, stack([leaves.opt_state for leaves in loaded])


def _check_leaves(part: str, given: list, like: list) -> None:
    found = [(tuple(jax.numpy.shape(g)), jax.numpy.result_type(g)) for g in given]
    expected = [(tuple(jax.numpy.shape(e)), jax.numpy.result_type(e)) for e in like]
    if found != expected:
        diff = next(((f, e) for f, e in zip(found, expected) if f != e), (f"{len(found)} leaves",
                                                                           f"{len(expected)} leaves"))
        raise ValueError(f"run_grid(resume=True): the cell's checkpoint does not fit this fit's {part}: the file "
                         f"has {diff[0]} where fit has {diff[1]} (another cell function or optimizer?)")


def resume_cell(resume: CellResume, fresh: TrainState, *, steps: int, log_every: int, batch_size: int | None,
                shuffle: bool) -> tuple[TrainState, int, dict[str, jax.Array]]:
    """The state, step and stored trace a resumed grid cell's ``fit`` continues from (inside the traced program).

    Checks, while tracing (before the program runs), that the checkpoint fits this ``fit``: step <= ``steps``, the
    same ``log_every`` and mini-batching, and the shapes and dtypes of ``fresh`` (fit's own start state).

    Args:
      resume: the cell's :class:`CellResume` (its group and its traced stored leaves).
      fresh: the fit's own fresh start state (its structure is what the leaves are unflattened into).
      steps, log_every, batch_size, shuffle: the fit's arguments.

    Returns:
      ``(state, step, stored trace rows)`` as :func:`optlab.engine.checkpoint.resume` returns them.

    Example:
      >>> # inside fit: state, first, stored = resume_cell(cell.resume, state, steps=steps, log_every=log_every,
      >>> #                                                 batch_size=batch_size, shuffle=shuffle)
    """
    group = resume.group
    if group.step > steps:
        raise ValueError(f"run_grid(resume=True): a cell's checkpoint is at step {group.step}, beyond steps={steps}")
    if group.log_every != log_every:
        raise ValueError(f"run_grid(resume=True): a cell's checkpoint was written with log_every={group.log_every}, "
                         f"this fit has log_every={log_every}")
    tag = _batching_pair(batch_size, shuffle)
    if group.batching is not None and group.batching != tag:
        raise ValueError(f"run_grid(resume=True): a cell's checkpoint was written with [batch_size, shuffle] = "
                         f"{list(group.batching)} (-1: full batch), this fit has {list(tag)}: the batch order would "
                         "change")
    state_leaves, trace, opt_leaves = resume.leaves
    core_like = fresh._replace(opt_state=None, key=jax.random.key_data(fresh.key))
    _check_leaves("state (params, key, counters)", state_leaves, jax.tree.leaves(core_like))
    _check_leaves("optimizer state", opt_leaves, jax.tree.leaves(fresh.opt_state))
    core = jax.tree.structure(core_like).unflatten(state_leaves)
    state = core._replace(opt_state=jax.tree.structure(fresh.opt_state).unflatten(opt_leaves),
                          key=jax.random.wrap_key_data(core.key, impl=group.key_impl))
    return state, group.step, {name: rows for name, rows in trace.items() if name != _BATCHING}


__all__ = [
    "CellResume",
    "GridCell",
    "ResumeGroup",
    "cell_dir",
    "grid_cell",
    "load_cells",
    "resume_cell",
    "resume_plan",
    "run_cell_chunks",
]


def resume_parts(cell_ids: np.ndarray, plan) -> list[tuple[Any, np.ndarray]]:
    """A static group's cells split by where they resume: ``[(ResumeGroup or None, cell ids)]``.

    Without ``plan`` (no resume) the group is one part. The furthest resume points run first (they finish soonest,
    so a second interruption loses least); cells that start at step 0 run last, in the fresh program.
    """
    if plan is None:
        return [(None, cell_ids)]
    points: dict[Any, list[int]] = {}
    for i in cell_ids.tolist():
        points.setdefault(None if plan[i] is None else plan[i][1], []).append(i)
    order = sorted((p for p in points if p is not None), key=lambda p: -p.step) + ([None] if None in points else [])
    return [(p, np.asarray(points[p], dtype=cell_ids.dtype)) for p in order]
