"""Figures that cannot mislead: zeros on log heatmaps, constant fields, colours, legends, and the backend."""

import importlib

import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab import plot


def _cell_colour(fig, i, j):
    image = fig.axes[0].images[0]
    data = image.get_array()
    if np.ma.getmaskarray(data)[i, j]:
        return "bad"
    return tuple(image.cmap(image.norm(data[i, j])))


def _texts(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def test_log_heatmap_draws_zero_at_the_floor_and_labels_it():
    fig = plot.heatmap(np.array([[0.0, 1e-3], [1e-1, np.nan]]), ["a", "b"], ["x", "y"], log=True, title="loss")
    floor = tuple(fig.axes[0].images[0].cmap(0.0))
    assert _cell_colour(fig, 0, 0) == floor and _cell_colour(fig, 0, 1) == floor  # zero sits with the minimum
    assert _cell_colour(fig, 1, 0) != floor and _cell_colour(fig, 1, 1) == "bad"  # only NaN is grey
    assert _texts(fig) == ["0", "0.001", "0.1", "nan"]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "loss (log scale)"  # a colour bar


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("value", [0.5, 0.0])
def test_constant_field_has_no_colour_bar(value, log):
    fig = plot.heatmap(np.full((2, 3), value), ["a", "b"], ["x", "y", "z"], title="t", log=log)
    assert len(fig.axes) == 1, "a colour bar for one value invents a range"
    assert fig.axes[0].get_title() == f"t (every cell {value:g})"
    assert len({_cell_colour(fig, i, j) for i in range(2) for j in range(3)}) == 1


finite_or_missing = st.one_of(st.just(0.0), st.just(np.nan), st.floats(1e-12, 1e6))


@settings(max_examples=15, deadline=None)
@given(st.lists(finite_or_missing, min_size=6, max_size=6), st.booleans())
def test_heatmap_cell_is_grey_exactly_when_missing(values, log):
    matrix = np.asarray(values).reshape(2, 3)
    fig = plot.heatmap(matrix, ["a", "b"], ["x", "y", "z"], log=log)
    for i in range(2):
        for j in range(3):
            assert (_cell_colour(fig, i, j) == "bad") == bool(np.isnan(matrix[i, j]))
    assert _texts(fig) == ["nan" if np.isnan(v) else "0" if v == 0 else f"{v:.3g}" for v in matrix.ravel()]


@given(st.integers(1, 40))
def test_line_colours_never_repeat(n):
    colours = plot.line_colors(n)
    assert len(colours) == n and len({mcolour(c) for c in colours}) == n


def mcolour(c):
    return matplotlib.colors.to_hex(c, keep_alpha=True)


def test_more_curves_than_the_cycle_use_a_sequential_map():
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plot.new_figure()
    curves = {f"run {k}": np.ones((2, 5)) * (k + 1) for k in range(len(cycle) + 2)}
    lines = plot.loss_bands(ax, curves)
    assert len({mcolour(line.get_color()) for line in lines}) == len(curves)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(curves)


def test_legend_has_one_entry_per_label_and_says_when_a_curve_leaves_or_ends():
    fig, ax = plot.new_figure()
    ax.plot(np.arange(5), [1.0, 2.0, 50.0, 1e3, 1e4], label="blows up")
    ax.plot(np.arange(5), [1.0, 0.5, 0.2, np.nan, np.nan], label="stops")
    ax.plot(np.arange(5), [1.0, 0.9, 0.8, 0.7, 0.6], label="fine")
    for onset in (1, 2, 3):
        plot.mark_step(ax, onset, "onset")
    ax.set_xlabel("step")
    ax.set_ylim(0.1, 100)
    legend = plot.legend(ax)
    assert [t.get_text() for t in legend.get_texts()] == [
        "blows up (leaves the plot at step 3)", "stops (ends at step 2)", "fine", "onset"]
    assert ax.get_legend() is legend


def test_report_writer_annotates_a_study_legend(tmp_path):
    from optlab import report
    from optlab.studies import base

    fig, ax = plot.new_figure()
    ax.plot([0, 1, 2], [1.0, np.nan, np.nan], label="nan after step 0")
    ax.legend()
    report.write_report(base.StudyResult("x", "x", {}, [base.Section("s", figures={"f.png": fig})]), tmp_path)
    assert ax.get_legend().get_texts()[0].get_text() == "nan after step 0 (ends at step 0)"


def test_importing_plot_keeps_the_backend(tmp_path):
    from optlab import report
    from optlab.studies import base

    before = matplotlib.rcParams["backend"]
    matplotlib.use("svg")  # what a notebook (inline) or a GUI session would have chosen
    try:
        importlib.reload(plot)  # the import-time code again: it used to force Agg here
        fig, ax = plot.new_figure()
        ax.plot([1, 2])
        report.write_report(base.StudyResult("x", "x", {}, [base.Section("s", figures={"f.png": fig})]), tmp_path)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")  # the writer still renders PNG, with Agg
