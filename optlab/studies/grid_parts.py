"""Host-side reshaping of :class:`~optlab.engine.grid_result.GridResult`\\ s: cut one grid into parts, join grids
along an axis, rename an axis, add a one-value axis.

A study that runs several experiments as ONE compiled grid (a traced index over every recipe it needs, so one
program instead of several) cuts the result back into per-experiment grids with :func:`part`; experiments that need
their own programs (other shapes) are joined back with :func:`concat`. Nothing here computes: rows are selected,
renumbered and reordered, and the outputs are the grids' own arrays.

Example:
  >>> import numpy as np
  >>> g = GridResult({"lr": [0.1, 0.2], "seed": [0]}, np.array([[0, 0], [1, 0]]), {"loss": np.array([1.0, 2.0])})
  >>> both = concat([g, relabel(g, "lr", "lr", [0.3, 0.4])], "lr")
  >>> both.axes["lr"], both.outputs["loss"].tolist()
  ([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 1.0, 2.0])
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from optlab.engine.grid_result import SEED_AXIS, GridResult


def part(grid, first: int, axes: dict[str, list]):
    """Cells ``first ..`` of a grid whose first axis indexes recipes (× seed), as a GridResult over ``axes`` × seed.

    The cells ``first .. first + prod(len(v) for v in axes.values()) - 1`` of that first axis are read as the
    row-major product of ``axes``; the seed axis is kept.
    """
    shape = tuple(len(v) for v in axes.values())
    recipe = grid.index[:, 0] - first
    mask = (recipe >= 0) & (recipe < math.prod(shape))
    index = np.column_stack([*np.unravel_index(recipe[mask], shape), grid.index[mask, 1]]).astype(grid.index.dtype)
    return GridResult({**axes, SEED_AXIS: grid.axes[SEED_AXIS]}, index,
                      {k: v[mask] for k, v in grid.outputs.items()}, info=grid.info)


def concat(grids: list, axis: str, order: list | None = None):
    """Grids with the same axes joined along their first axis ``axis``, its values put in ``order`` (grid order)."""
    values = [v for g in grids for v in g.axes[axis]]
    offsets = np.cumsum([0] + [len(g.axes[axis]) for g in grids[:-1]])
    index = np.concatenate([g.index + np.eye(1, g.index.shape[1], 0, dtype=g.index.dtype) * o
                            for g, o in zip(grids, offsets)])
    outputs = {k: np.concatenate([g.outputs[k] for g in grids]) for k in grids[0].outputs}
    if order is not None:  # renumber the axis, then restore grid order (first axis slowest, seed fastest)
        index[:, 0] = np.asarray([order.index(v) for v in values])[index[:, 0]]
        values = list(order)
        rows = np.lexsort(index.T[::-1])
        index, outputs = index[rows], {k: v[rows] for k, v in outputs.items()}
    axes = {axis: values, **{k: v for k, v in grids[0].axes.items() if k != axis}}
    return GridResult(axes, index, outputs, complete=all(g.complete for g in grids),
                      info={"programs": sum(g.info.get("programs", 0) for g in grids)})


def relabel(grid, old: str, new: str, values: list):
    """The grid with axis ``old`` (indices) renamed ``new`` and its values replaced by ``values`` (for select)."""
    axes = {(new if k == old else k): (values if k == old else v) for k, v in grid.axes.items()}
    return dataclasses.replace(grid, axes=axes)


def with_axis(grid, name: str, value):
    """The grid with a leading one-value axis ``name`` (to join it with others along that axis)."""
    return GridResult({name: [value], **grid.axes}, np.column_stack([np.zeros(len(grid), grid.index.dtype),
                                                                     grid.index]),
                      grid.outputs, complete=grid.complete, info=grid.info)

__all__ = ["concat", "part", "relabel", "with_axis"]
