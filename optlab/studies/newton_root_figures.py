"""Figures of the Newton-root study: matplotlib Figures built from measured traces (nothing is saved here)."""

from __future__ import annotations

import numpy as np

from optlab import plot


def _positive(values) -> np.ndarray:
    """``values`` with zeros and non-finite entries as NaN, so log axes skip them."""
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def halving_figure(x32, x64, a: float, x0: float):
    """Experiment 1: |x_n - a| for float32, float64 and the closed form (x0 - a)/2ⁿ, log scale."""
    fig, ax = plot.new_figure()
    # Past ~60 halvings both precisions have long stopped moving; show the part where they differ.
    shown = min(len(x64), 60)
    x32, x64 = np.asarray(x32, np.float64)[:shown], np.asarray(x64, np.float64)[:shown]
    steps = np.arange(shown)
    ax.plot(steps, abs(x0 - a) / 2.0**steps, "k-", linewidth=3, alpha=0.3, label="(x₀ - 3)/2ⁿ")
    ax.plot(steps, _positive(np.abs(x64 - a)), "-", label="float64 (step 0 once ||g||² < float64 eps)")
    ax.plot(steps, _positive(np.abs(x32 - a)), "--", label="float32 (ends when x = 3 exactly)")
    ax.set_yscale("log")
    ax.set_xlabel("step n")
    ax.set_ylabel("|x_n - 3|")
    ax.set_title("Experiment 1: f(x) = (x - 3)², Newton-root step")
    ax.legend()
    return fig


def trajectories_figure(traces: dict, optimum, curvature: dict):
    """Experiments 2–3: (x, y) paths over the loss contours, one panel per run."""
    fig, axes = plot.new_figure(len(traces), width=5.0, height=4.5)
    axes = np.atleast_1d(axes)
    a, b = optimum
    for ax, (label, trace) in zip(axes, traces.items()):
        x, y, c = np.asarray(trace["x"]), np.asarray(trace["y"]), curvature[label]
        xs = np.linspace(min(x.min(), a) - 1, max(x.max(), a) + 1, 200)
        ys = np.linspace(min(y.min(), b) - 1, max(y.max(), b) + 1, 200)
        grid_x, grid_y = np.meshgrid(xs, ys)
        loss = (grid_x - a) ** 2 + c * (grid_y - b) ** 2
        levels = np.logspace(-2, np.log10(loss.max()), 15)
        ax.contour(grid_x, grid_y, loss, levels=levels, colors="grey", linewidths=0.5)
        ax.plot(x, y, ".-", markersize=3, linewidth=0.8, label="path")
        ax.plot(x[0], y[0], "go", label="start")
        ax.plot(a, b, "r*", markersize=12, label="optimum")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title(f"{label}: (x - 1)² + {c:g}(y - 2)²")
        ax.legend(fontsize=8)
    return fig


def grad_ratio_figure(traces: dict, floor: float):
    """Experiment 3: |g_x|/|g_y| per step for each curvature (shared step), while the loss is above the floor."""
    fig, ax = plot.new_figure(width=7.0)
    for label, trace in traces.items():
        loss = np.asarray(trace["loss"])
        grad_x, grad_y = np.asarray(trace["grad_x"], np.float64), np.asarray(trace["grad_y"], np.float64)
        ratio = np.divide(grad_x, grad_y, out=np.full(grad_x.shape, np.nan), where=grad_y > 0)
        ax.plot(np.where(loss > floor * loss[0], _positive(ratio), np.nan), label=label, linewidth=1)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("|g_x| / |g_y|")
    ax.set_title("Experiment 3: gradient ratio under the shared step (above 1: x dominates)")
    ax.legend()
    return fig


def step_scale_figure(scales: dict, group_names, title: str):
    """Step scale per group over time: one panel per optimizer, one line per group (log scale)."""
    ncols = min(3, len(scales))
    nrows = -(-len(scales) // ncols)
    fig, axes = plot.new_figure(ncols, nrows, width=4.5, height=3.5)
    axes = np.atleast_1d(axes).ravel()
    for ax in axes[len(scales):]:
        ax.set_visible(False)
    for ax, (label, scale) in zip(axes, scales.items()):
        scale = np.asarray(scale, np.float64)
        for k, name in enumerate(group_names):
            ax.plot(_positive(scale[:, k]), label=name, linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("step scale (L / ||g_k||²)")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def quad_loss_figure(grid, start: dict, c: float):
    """Experiment 3: loss per step of each scaling at curvature ``c`` from the key start point."""
    fig, ax = plot.new_figure(width=7.0)
    for scaling in grid.axes["scaling"]:
        loss = grid.outputs["loss"][grid.where(c=c, scaling=scaling, **start)][0]
        ax.plot(_positive(loss), label=scaling, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Experiment 3: loss at c = {c:g} by scaling")
    ax.legend()
    return fig


def loss_bands_figure(curves: dict, title: str):
    """Loss per step: median and inter-quartile band over seeds for each optimizer (log scale).

    The y axis stops at 10× the largest initial loss, so runs that blow up leave the top instead of squashing
    the rest.
    """
    fig, ax = plot.new_figure(width=8.0, height=5.0)
    for label, traces in curves.items():
        plot.loss_band(ax, _positive(traces), label=label, linewidth=1)
    start = max((np.nanmedian(_positive(t)[:, 0]) for t in curves.values()), default=np.nan)
    if np.isfinite(start):
        ax.set_ylim(top=10 * start)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (median, 25–75 % band over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return fig


def grid_heatmap(grid, metric: str, title: str, *, log: bool = False, clip: float | None = None):
    """Optimizer × learning-rate heatmap of the median of ``metric`` over seeds, optionally clipped above."""
    rows, cols, matrix = grid.pivot("optimizer", "learning_rate", metric, agg="nanmedian")
    if clip is not None:
        matrix = np.minimum(matrix, clip)
    fig = plot.heatmap(matrix, rows, [f"{c:g}" for c in cols], title=title, xlabel="learning rate × base",
                       ylabel="optimizer", fmt="{:.2g}", log=log)
    fig.set_size_inches(max(7.0, 3.0 + 1.3 * len(cols)), max(3.0, 1.0 + 0.5 * len(rows)))  # room for the labels
    return fig
