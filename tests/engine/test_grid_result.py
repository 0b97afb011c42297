"""GridResult table methods on hand-built grids with known values: select, groups, table, count, pivot, heatmap."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab import GridResult
from optlab.diagnostics import VERDICTS


def make_grid(values=None, verdicts=None):
    """optimizer × lr × seed (2 × 3 × 4): value = 10·optimizer + lr + seed/100, verdict codes per cell."""
    axes = {"optimizer": ["sgd", "adam"], "lr": [0.1, 0.3, 1.0], "seed": [0, 1, 2, 3]}
    index = np.array(list(itertools.product(range(2), range(3), range(4))))
    if values is None:
        values = 10.0 * index[:, 0] + np.asarray(axes["lr"])[index[:, 1]] + index[:, 2] / 100.0
    if verdicts is None:
        verdicts = (index[:, 1] + index[:, 2]) % 4
    outputs = {"value": np.asarray(values, float), "verdict": np.asarray(verdicts, np.int32),
               "curve": np.ones((len(index), 5)), "name": np.array(["a", "b"] * 12, dtype=object)}
    return GridResult(axes, index, outputs)


def test_select_keeps_every_axis_and_the_right_cells():
    grid = make_grid()
    adam = grid.select(optimizer="adam", lr=[0.3, 1.0])
    assert adam.axes == {"optimizer": ["adam"], "lr": [0.3, 1.0], "seed": [0, 1, 2, 3]}
    assert len(adam) == 8 and adam.outputs["curve"].shape == (8, 5)
    np.testing.assert_allclose(adam.outputs["value"], grid.outputs["value"][grid.where(optimizer="adam",
                                                                                       lr=[0.3, 1.0])])
    assert adam.cells[0] == {"optimizer": "adam", "lr": 0.3, "seed": 0}
    assert [r["value"] for r in adam.to_rows()] == list(adam.outputs["value"])
    assert adam.select(seed=2).cells == [{"optimizer": "adam", "lr": 0.3, "seed": 2},
                                         {"optimizer": "adam", "lr": 1.0, "seed": 2}]
    with pytest.raises(ValueError, match="not on the axis"):
        grid.select(optimizer="rmsprop")


def test_groups_follow_grid_order_whatever_order_by_lists():
    grid = make_grid()
    keys = [key for key, _ in grid.groups(["lr", "optimizer"])]
    assert keys[:2] == [{"lr": 0.1, "optimizer": "sgd"}, {"lr": 0.3, "optimizer": "sgd"}]
    assert list(keys[0]) == ["lr", "optimizer"]
    (everything, mask), = grid.groups(())
    assert everything == {} and mask.all()


def test_table_stats_match_numpy_per_group():
    values = np.arange(24.0)
    values[5] = np.nan  # sgd, lr 0.3, seed 1
    grid = make_grid(values=values)
    for stat, reference in (("mean", np.mean), ("median", np.median), ("max", np.max), ("std", np.std)):
        rows = grid.table(by=["optimizer", "lr"], metrics=["value"], stat=stat)
        assert len(rows) == 6 and rows[1]["optimizer"] == "sgd" and rows[1]["lr"] == 0.3
        for row, (_, mask) in zip(rows, grid.groups(["optimizer", "lr"])):
            chosen = values[mask]
            np.testing.assert_allclose(row["value"], reference(chosen[np.isfinite(chosen)]))
            assert row["n_cells"] == 4
        assert rows[1]["value_nonfinite"] == 1 and rows[0]["value_nonfinite"] == 0
    by_callable = grid.table(by="optimizer", metrics="value", stat=lambda v: np.isnan(v).sum())
    assert [r["value"] for r in by_callable] == [1, 0]
    whole, = grid.table(metrics=["value"], stat="min")
    assert whole["n_cells"] == 24 and whole["value"] == 0.0
    with pytest.raises(ValueError, match="stat must be"):
        grid.table(by="lr", stat="mode")
    with pytest.raises(ValueError, match="metric must be a scalar output"):
        grid.table(by="lr", metrics=["curve"])


def test_count_verdicts_as_categories():
    grid = make_grid()
    codes = grid.outputs["verdict"]
    total = grid.count("verdict", labels=VERDICTS)
    assert list(total) == list(VERDICTS)
    assert total == {name: int((codes == k).sum()) for k, name in enumerate(VERDICTS)}
    per_lr = grid.count("verdict", by="lr", labels=VERDICTS)
    assert [r["lr"] for r in per_lr] == [0.1, 0.3, 1.0]
    assert sum(sum(r["counts"].values()) for r in per_lr) == 24
    mask = grid.where(lr=0.3)
    assert per_lr[1]["counts"]["plateaued"] == int((codes[mask] == 1).sum()) and per_lr[1]["n_cells"] == 8
    assert grid.count("name") == {"a": 12, "b": 12}
    with pytest.raises(ValueError, match="codes outside"):
        grid.count("verdict", labels=["converged", "diverged"])
    with pytest.raises(TypeError, match="integer codes"):
        grid.count("value", labels=VERDICTS)
    with pytest.raises(ValueError, match="one-value-per-cell"):
        grid.count("curve")


@settings(deadline=None, max_examples=20)
@given(st.lists(st.integers(0, 3), min_size=24, max_size=24))
def test_counts_add_up_over_groups(codes):
    grid = make_grid(verdicts=codes)
    per = grid.count("verdict", by=["optimizer", "lr"], labels=VERDICTS)
    summed = {name: sum(r["counts"][name] for r in per) for name in VERDICTS}
    assert summed == grid.count("verdict", labels=VERDICTS)


def test_pivot_where_equals_pivot_of_select():
    grid = make_grid()
    rows, cols, matrix = grid.pivot("optimizer", "lr", "value", agg="max", where={"seed": [0, 1]})
    assert rows == ["sgd", "adam"] and cols == [0.1, 0.3, 1.0]
    np.testing.assert_allclose(matrix, [[0.11, 0.31, 1.01], [10.11, 10.31, 11.01]])
    _, _, whole = grid.pivot("optimizer", "lr", "value", agg="max")
    np.testing.assert_allclose(whole, matrix + 0.02)


def test_heatmap_draws_the_pivot():
    grid = make_grid()
    figure = grid.heatmap("optimizer", "lr", "value", agg="max", where={"optimizer": "adam"}, fmt="{:.2f}")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "lr" and ax.get_ylabel() == "optimizer" and ax.get_title() == "value"
    assert sorted(t.get_text() for t in ax.texts) == ["10.13", "10.33", "11.03"]


def test_to_pandas_matches_rows():
    pandas = pytest.importorskip("pandas")
    frame = make_grid().to_pandas()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["optimizer", "lr", "seed", "value", "verdict"]
    assert len(frame) == 24 and frame["value"].iloc[5] == make_grid().outputs["value"][5]
