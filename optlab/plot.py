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


def shapley_bars(rows: Sequence[Mapping], *, title: str = "", xlabel: str = "Shapley value") -> Figure:
    """Horizontal bars of Shapley values (``optlab.ablation.Ablation.shapley`` rows) with their CI as error bars.

    Bars keep the rows' order top to bottom; a row whose ``lo`` / ``hi`` is NaN gets no error bar (no interval was
    computed), never a zero-width one. A zero line marks "no effect". Each bar is labelled with its value and, where
    finite, its share of full − baseline.

    Example: ``shapley_bars(res.shapley("loss"), title="final loss")``.
    """
    rows = list(rows)
    if not rows or any(not isinstance(r, Mapping) or not {"switch", "shapley"} <= set(r) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts with 'switch' and 'shapley' (Ablation.shapley rows)")
    names = [str(r["switch"]) for r in rows]
    values = np.asarray([r["shapley"] for r in rows], dtype=float)
    lo = np.asarray([r.get("lo", np.nan) for r in rows], dtype=float)
    hi = np.asarray([r.get("hi", np.nan) for r in rows], dtype=float)
    fig, ax = new_figure(width=7.0, height=max(2.5, 0.8 + 0.45 * len(rows)))
    y = np.arange(len(rows))
    colours = np.where(values < 0, "C0", "C3")
    ax.barh(y, np.nan_to_num(values), color=colours)
    has_ci = np.isfinite(lo) & np.isfinite(hi)
    if has_ci.any():  # asymmetric bootstrap interval around each value
        err = np.stack([values - lo, hi - values])[:, has_ci]
        ax.errorbar(values[has_ci], y[has_ci], xerr=np.maximum(err, 0), fmt="none", ecolor="black", capsize=3)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    for yi, r, value in zip(y, rows, values):
        share = r.get("share", np.nan)
        text = f"{value:.3g}" + (f" ({share:.0%})" if share is not None and np.isfinite(share) else "")
        # the label sits past the far end of the bar or its interval, so it never covers the error bar
        tip = value if np.isfinite(value) else 0.0
        if np.isfinite(r.get("lo", np.nan)) and np.isfinite(r.get("hi", np.nan)):
            tip = max(tip, r["hi"]) if value >= 0 else min(tip, r["lo"])
        # a negligible negative bar (|tip| < 2% of the largest) labels rightwards: leftwards it runs into the names
        right = value >= 0 or abs(tip) < 0.02 * np.nanmax(np.abs(np.r_[values, 1e-300]))
        ax.annotate(text, (tip, yi), xytext=(4 if right else -4, 0),
                    textcoords="offset points", ha="left" if right else "right", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # first switch on top, as in the table
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.25)
    return fig


def interaction_heatmap(matrix, names: Sequence[str], *, title: str = "", fmt: str = "{:.2g}",
                        cmap: str = "RdBu_r") -> Figure:
    """The (k, k) pairwise interaction matrix (``Ablation.interactions``) on a colour scale centred at zero.

    The scale is symmetric (±max |off-diagonal|) so white means "the two switches add"; the diagonal holds the
    Shapley values, written in each cell but left out of the colour scale (it would drown the interactions) and
    drawn hatched. Grey cells are NaN.

    Example: ``interaction_heatmap(res.interactions("loss"), res.names, title="loss interactions")``.
    """
    matrix = np.asarray(matrix, dtype=float)
    names = [str(n) for n in names]
    if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
        raise ValueError(f"matrix must be (k, k) with k = len(names) = {len(names)}, got shape {matrix.shape}")
    from matplotlib.patches import Rectangle  # only this figure draws patches

    k = len(names)
    fig, ax = new_figure(width=max(4.0, 1.5 + 0.8 * k), height=max(3.0, 1.0 + 0.7 * k))
    off = ~np.eye(k, dtype=bool) & np.isfinite(matrix)
    bound = float(np.abs(matrix[off]).max()) if off.any() else 0.0
    norm = mcolors.Normalize(-bound, bound) if bound > 0 else mcolors.Normalize(-1.0, 1.0)
    shown = np.where(np.eye(k, dtype=bool), np.nan, matrix)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=colormap, norm=norm, aspect="auto")
    for i in range(k):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                                  edgecolor="lightgrey", linewidth=0))
        for j in range(k):
            value = matrix[i, j]
            if not np.isfinite(value):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="lightgrey"))
                text, colour = str(value), "black"
            else:
                # float rounding of an exactly additive pair (1e-8 against effects of 1) reads as "0", not as a value
                text = "0" if abs(value) <= 1e-6 * max(bound, abs(matrix[np.isfinite(matrix)]).max()) \
                    else fmt.format(value)
                colour = "black" if i == j else _text_colour(colormap(norm(value)))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    if bound > 0:
        fig.colorbar(image, ax=ax, label="interaction (diagonal: Shapley value, not coloured)")
        ax.set_title(title)
    else:
        ax.set_title(f"{title} (no interaction: every pair adds)" if title else "no interaction: every pair adds")
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), names)
    return fig


def cumulative_paths(paths: Mapping[str, Sequence[Mapping]], *, title: str = "", ylabel: str = "value",
                     logy: bool = False) -> Figure:
    """Cumulative add-one-at-a-time paths (``Ablation.paths`` / ``Ablation.cumulative`` rows), one line per order.

    Step 0 is the baseline (the first row's ``before``); each point is labelled with the switch added there, so
    paths in different orders can be compared switch by switch. All paths end at the same full recipe.

    Example: ``cumulative_paths(res.paths("loss"), title="loss", logy=True)``.
    """
    if not isinstance(paths, Mapping) or not paths:
        raise ValueError("paths must be a non-empty mapping label -> list of Ablation.cumulative rows")
    fig, ax = new_figure(width=8.0, height=4.5)
    for colour, (label, rows) in zip(line_colors(len(paths)), paths.items()):
        rows = list(rows)
        if not rows or any(not isinstance(r, Mapping) or not {"switch", "value", "before"} <= set(r) for r in rows):
            raise ValueError(f"paths[{label!r}] must be a non-empty list of Ablation.cumulative rows")
        y = [rows[0]["before"], *[r["value"] for r in rows]]
        ax.plot(range(len(y)), y, marker="o", color=colour, label=str(label))
        for step, r in enumerate(rows, start=1):
            ax.annotate(str(r["switch"]), (step, r["value"]), xytext=(3, 3), textcoords="offset points",
                        fontsize=7, color=colour)
    if logy and all(r["value"] > 0 and r["before"] > 0 for rows in paths.values() for r in rows):
        ax.set_yscale("log")
    ax.set_xticks(range(max(len(list(rows)) for rows in paths.values()) + 1))
    ax.set_xlabel("switches added (0 = baseline)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    legend(ax, fontsize=8)
    return fig


__all__ = ["annotate_legends", "cumulative_paths", "heatmap", "interaction_heatmap", "legend", "line_colors",
           "loss_band", "loss_bands", "mark_step", "new_figure", "plt", "shapley_bars"]
