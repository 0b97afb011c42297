import numpy as np
import pytest

from optlab.engine.grid_result import GridResult
from optlab.studies import grid_parts


def _grid(lrs, seeds=2, offset=0.0):
    index = np.array([[i, s] for i in range(len(lrs)) for s in range(seeds)])
    loss = offset + np.arange(len(index), dtype=float)
    return GridResult({"lr": list(lrs), "seed": list(range(seeds))}, index, {"loss": loss})


def test_part_cuts_a_recipe_axis_back_into_a_product():
    # 1 + 2*3 recipes × 2 seeds: the second part is a 2 × 3 product over (a, b)
    grid = _grid(range(7))
    piece = grid_parts.part(grid, 1, {"a": ["x", "y"], "b": [1, 2, 3]})
    assert len(piece) == 12 and piece.axes["a"] == ["x", "y"]
    # recipe 1 + (a=1)*3 + (b=2) = recipe 6, seed 1 -> row 13 of the original grid
    row = piece.select(a="y", b=3, seed=1)
    assert row.outputs["loss"].tolist() == [13.0]


def test_concat_joins_and_orders_an_axis():
    first, second = _grid([0.1, 0.2]), _grid([0.05], offset=100.0)
    joined = grid_parts.concat([first, second], "lr", order=[0.05, 0.1, 0.2])
    assert joined.axes["lr"] == [0.05, 0.1, 0.2]
    assert joined.select(lr=0.05).outputs["loss"].tolist() == [100.0, 101.0]
    assert joined.select(lr=0.2, seed=1).outputs["loss"].tolist() == [3.0]
    # grid order: first axis slowest, seed fastest
    assert joined.index.tolist() == [[i, s] for i in range(3) for s in range(2)]


def test_concat_marks_the_join_incomplete_when_a_part_is():
    part = _grid([0.3])
    part = GridResult(part.axes, part.index, part.outputs, complete=False)
    assert not grid_parts.concat([_grid([0.1]), part], "lr").complete


def test_relabel_and_with_axis():
    grid = grid_parts.relabel(_grid([0, 1]), "lr", "solver", ["exact", "cg"])
    assert grid.select(solver="cg", seed=0).outputs["loss"].tolist() == [2.0]
    with pytest.raises((KeyError, ValueError)):
        grid.select(lr=0)
    wide = grid_parts.with_axis(grid, "model", "complex")
    assert list(wide.axes) == ["model", "solver", "seed"] and wide.index[:, 0].tolist() == [0] * 4
    assert wide.select(model="complex", solver="exact", seed=1).outputs["loss"].tolist() == [1.0]
