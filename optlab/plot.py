"""Generic matplotlib figures for studies: loss bands over seeds, heatmaps over grids, legends that tell the truth.

Figures are returned, never shown or saved here; ``optlab.report`` writes them (with Agg, for itself only).
Importing this module never switches matplotlib's backend, so ``plt.show()`` keeps working in notebooks; figures
are plain :class:`matplotlib.figure.Figure` objects (not registered with pyplot), so a notebook displays one by
leaving it as a cell's last value.

Rules the helpers keep, so a figure cannot mislead:

- an exact zero on a log-scale heatmap is a value, drawn at the colour-map floor and labelled "0"; grey means
  missing (NaN) only;
- a constant field gets no colour bar (a bar spanning -0.1…0.1 around one value invents a range);
- more curves than colours in the cycle get colours from a sequential colour map instead of repeating;
- one legend per axes, one entry per label; a curve that leaves the plot or ends early says so in its entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt  # importing pyplot does not select a backend; only drawing through it does
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 6.0, height: float = 4.0, **kw):
    """A figure and its axes, sized per panel; closes nothing global (the figure is not registered with pyplot).

    Example: ``fig, ax = new_figure(width=7.0)``; ``fig, axes = new_figure(3, 2)`` gives a 2 × 3 array of axes.
    """
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kw)
    return fig, axes


def line_colors(n: int, *, cmap: str = "viridis") -> list:
    """``n`` distinct colours: the property cycle's when it has enough, else ``n`` samples of a sequential map.

    Example: ``for colour, (label, traces) in zip(line_colors(len(curves)), curves.items()): ...``
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", [])
    if n <= len(cycle):
        return list(cycle[:n])
    # stop short of the map's bright end: the last colours stay visible on a white background
    return [matplotlib.colormaps[cmap](x) for x in np.linspace(0.0, 0.9, n)]


def loss_band(ax, traces, label: str | None = None, *, x=None, quantiles=(0.25, 0.75), logy: bool = True, **kw):
    """Plot the median over seeds of ``traces`` (seeds, steps) with a shaded inter-quantile band.

    Non-finite values are ignored per step (a diverged seed does not blank the others). Returns the median line.

    Example: ``loss_band(ax, traces, label="adam", color="C1")``.
    """
    traces = np.atleast_2d(np.asarray(traces, dtype=float))
    if traces.ndim != 2:
        raise ValueError(f"traces must be (seeds, steps), got shape {traces.shape}")
    x = np.arange(traces.shape[1]) if x is None else np.asarray(x)
    finite = np.where(np.isfinite(traces), traces, np.nan)
    with np.errstate(all="ignore"):
        all_nan = np.all(np.isnan(finite), axis=0)
        safe = np.where(all_nan[None, :], 0.0, finite)
        median = np.where(all_nan, np.nan, np.nanmedian(safe, axis=0))
        lo = np.where(all_nan, np.nan, np.nanquantile(safe, quantiles[0], axis=0))
        hi = np.where(all_nan, np.nan, np.nanquantile(safe, quantiles[1], axis=0))
    (line,) = ax.plot(x, median, label=label, **kw)
    if traces.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if logy and np.nanmin(np.where(median > 0, median, np.nan), initial=np.inf) < np.inf:
        ax.set_yscale("log")
    return line


def loss_bands(ax, curves: Mapping[str, object], *, logy: bool = True, show_legend: bool = True, **kw) -> list:
    """One :func:`loss_band` per ``label -> traces``, in distinct colours (see :func:`line_colors`), one legend.

    Example: ``loss_bands(ax, {"adam": adam_traces, "sgd": sgd_traces}, linewidth=1)``.
    """
    if not isinstance(curves, Mapping):
        raise TypeError(f"curves must be a mapping label -> (seeds, steps) traces, got {type(curves).__name__}")
    lines = [loss_band(ax, traces, label=str(label), logy=logy, color=colour, **kw)
             for colour, (label, traces) in zip(line_colors(len(curves)), curves.items())]
    if show_legend and lines:
        legend(ax)
    return lines


def _where(ax, x: float) -> str:
    name = ax.get_xlabel()
    return f"step {x:g}" if not name or "step" in name.lower() else f"{name} = {x:g}"


def _line_note(ax, line: Line2D) -> str:
    """" (leaves the plot at step k)" / " (ends at step k)" / "" for a data line on ``ax``, at its current limits."""
    if line.get_transform() is not ax.transData:  # axvline / axhline live partly in axes coordinates
        return ""
    x = np.asarray(line.get_xdata(), dtype=float)
    y = np.asarray(line.get_ydata(), dtype=float)
    if x.shape != y.shape or y.size < 2:
        return ""
    drawn = np.isfinite(y) & np.isfinite(x)
    if ax.get_yscale() == "log":
        drawn &= y > 0  # a log axis cannot draw zero or negative values: the curve ends there
    if not drawn.any():
        return " (nothing to draw)"
    low, high = sorted(ax.get_ylim())
    outside = drawn & ((y > high) | (y < low))
    if outside.any():
        return f" (leaves the plot at {_where(ax, x[np.argmax(outside)])})"
    last = len(y) - 1 - np.argmax(drawn[::-1])
    if last < len(y) - 1:
        return f" (ends at {_where(ax, x[last])})"
    return ""


def _annotate(ax, legend) -> None:
    notes = {}
    for line in ax.get_lines():
        label = line.get_label()
        if label and not label.startswith("_") and label not in notes:
            notes[label] = _line_note(ax, line)
    for text in legend.get_texts():
        label = text.get_text()
        note = notes.get(label, "")
        if note and not label.endswith(note):
            text.set_text(label + note)


def legend(ax, **kw):
    """The axes' one legend: one entry per label (the first artist with it), notes for curves that leave or end.

    Call it after the axis limits are final (a note compares each curve with the limits). Returns the Legend, or
    None when nothing is labelled. Example: ``ax.set_ylim(top=10); legend(ax, fontsize=8)``.
    """
    handles, labels = ax.get_legend_handles_labels()
    first = {}
    for handle, label in zip(handles, labels):
        first.setdefault(label, handle)  # later duplicates (one onset marker per seed) add nothing
    if not first:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        return None
    made = ax.legend(list(first.values()), list(first), **kw)  # replaces any earlier legend of these axes
    _annotate(ax, made)
    return made


def annotate_legends(fig) -> None:
    """Add leave / end notes to every legend of ``fig`` in place (the report writer calls this before saving).

    Example: ``annotate_legends(fig); fig.savefig("loss.png")``.
    """
    for ax in getattr(fig, "axes", ()):
        if ax.get_legend() is not None:
            _annotate(ax, ax.get_legend())


def _text_colour(rgba) -> str:
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def heatmap(matrix, row_labels: Sequence, col_labels: Sequence, *, title: str = "", xlabel: str = "",
            ylabel: str = "", fmt: str = "{:.3g}", log: bool = False, cmap: str = "viridis") -> Figure:
    """A labelled heatmap of a 2-D array (rows × cols) with each cell's value written in it.

    Grey cells are missing values (NaN, ±inf). With ``log=True`` the colour scale is logarithmic and a zero (or
    negative) value is drawn at the colour-map floor and labelled with its value ("0"), never as missing. A field
    whose finite values are all equal gets no colour bar, and its title says so.

    Example: ``heatmap(np.array([[0.0, 1e-3], [1e-1, np.nan]]), ["a", "b"], ["x", "y"], log=True)``.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix shape {matrix.shape} does not match labels "
                         f"({len(row_labels)} rows, {len(col_labels)} cols)")
    fig, ax = new_figure(width=max(4.0, 1.0 + 0.9 * len(col_labels)), height=max(3.0, 1.0 + 0.55 * len(row_labels)))
    finite = np.isfinite(matrix)
    floor_cells = finite & (matrix <= 0) if log else np.zeros_like(finite)
    scaled = finite & ~floor_cells
    lo, hi = (matrix[scaled].min(), matrix[scaled].max()) if scaled.any() else (np.nan, np.nan)
    constant = not np.isfinite(lo) or lo == hi
    if constant and not (floor_cells.any() and scaled.any()):
        # one value (or none): draw every finite cell at the map's middle, no scale to read
        norm = mcolors.Normalize(0.0, 2.0)
        shown = np.where(finite, 1.0, np.nan)
        constant = True
    elif log:
        if constant:  # zeros and one positive value: still two colours, floor and that value
            lo, hi = lo / 10.0, hi
        norm = mcolors.LogNorm(lo, hi)
        shown = np.where(floor_cells, lo, matrix)
        constant = False
    else:
        norm = mcolors.Normalize(lo, hi)
        shown = matrix
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=colormap, norm=norm, aspect="auto")
    if constant:
        values = matrix[finite]
        ax.set_title(f"{title} (every cell {fmt.format(values[0])})" if values.size else f"{title} (no values)")
    else:
        fig.colorbar(image, ax=ax, label=title + (" (log scale)" if log else ""),
                     extend="min" if floor_cells.any() else "neither")
        ax.set_title(title)
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=45 if len(col_labels) > 6 else 0)
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            if not np.isfinite(value):
                text, colour = str(value), "black"  # "nan" / "inf" on grey
            else:
                text = "0" if value == 0 else fmt.format(value)
                colour = _text_colour(colormap(norm(shown[i, j])))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    return fig


def mark_step(ax, step: float, label: str, *, color: str = "red"):
    """A vertical dashed line at ``step`` with a legend label (divergence onset, best step, kink).

    Example: ``mark_step(ax, onset, "divergence onset")``; a negative or non-finite step draws nothing.
    """
    if step is not None and np.isfinite(step) and step >= 0:
        ax.axvline(step, color=color, linestyle="--", linewidth=1, label=label)


__all__ = ["annotate_legends", "heatmap", "legend", "line_colors", "loss_band", "loss_bands", "mark_step",
           "new_figure", "plt"]
