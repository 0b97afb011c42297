"""Generic matplotlib figures for studies: loss bands over seeds and heatmaps over grids.

Figures are returned, never shown or saved here; ``optlab.report`` writes them. The Agg backend is selected so
plots work on machines without a display (CI, servers).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 6.0, height: float = 4.0, **kw):
    """A figure and its axes, sized per panel; closes nothing global (the figure is not registered with pyplot)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kw)
    return fig, axes


def loss_band(ax, traces, label: str | None = None, *, x=None, quantiles=(0.25, 0.75), logy: bool = True, **kw):
    """Plot the median over seeds of ``traces`` (seeds, steps) with a shaded inter-quantile band.

    Non-finite values are ignored per step (a diverged seed does not blank the others). Returns the median line.
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


def heatmap(matrix, row_labels: Sequence, col_labels: Sequence, *, title: str = "", xlabel: str = "",
            ylabel: str = "", fmt: str = "{:.3g}", log: bool = False, cmap: str = "viridis") -> Figure:
    """A labelled heatmap of a 2-D array (rows × cols) with each cell's value written in it; NaN cells are grey."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix shape {matrix.shape} does not match labels "
                         f"({len(row_labels)} rows, {len(col_labels)} cols)")
    fig, ax = new_figure(width=max(4.0, 1.0 + 0.9 * len(col_labels)), height=max(3.0, 1.0 + 0.55 * len(row_labels)))
    shown = matrix.copy()
    if log:
        with np.errstate(all="ignore"):
            shown = np.where(matrix > 0, np.log10(matrix), np.nan)
    masked = np.ma.masked_invalid(shown)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(masked, cmap=colormap, aspect="auto")
    fig.colorbar(image, ax=ax, label=("log10 " if log else "") + title)
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=45 if len(col_labels) > 6 else 0)
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    finite = shown[np.isfinite(shown)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            text = "nan" if not np.isfinite(value) else fmt.format(value)
            colour = "black" if (not np.isfinite(shown[i, j]) or shown[i, j] > middle) else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    return fig


def mark_step(ax, step: float, label: str, *, color: str = "red"):
    """A vertical dashed line at ``step`` with a legend label (divergence onset, best step, kink)."""
    if step is not None and np.isfinite(step) and step >= 0:
        ax.axvline(step, color=color, linestyle="--", linewidth=1, label=label)


__all__ = ["heatmap", "loss_band", "mark_step", "new_figure", "plt"]
