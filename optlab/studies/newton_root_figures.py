"""Figures of the Newton-root study: what to draw from its traces (drawing helpers are in :mod:`optlab.plot`)."""

from __future__ import annotations

import numpy as np

from optlab import plot


def _positive(values) -> np.ndarray:
    """``values`` with zeros and non-finite entries as NaN, so log axes skip them."""
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _log_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    plot.legend(ax, fontsize=8)


def halving_figure(x32, x64, a: float, x0: float):
    """Experiment 1: |x_n - a| for float32, float64 and the closed form (x0 - a)/2ⁿ, log scale."""
    fig, ax = plot.new_figure()
    # Past ~60 halvings both precisions have long stopped moving; show the part where they differ.
    shown = min(len(x64), 60)
    steps = np.arange(shown)
    ax.plot(steps, abs(x0 - a) / 2.0**steps, "k-", linewidth=3, alpha=0.3, label="(x₀ - 3)/2ⁿ")
    ax.plot(steps, _positive(np.abs(np.asarray(x64[:shown], np.float64) - a)), "-",
            label="float64 (step 0 once ||g||² < float64 eps)")
    ax.plot(steps, _positive(np.abs(np.asarray(x32[:shown], np.float64) - a)), "--",
            label="float32 (ends when x = 3 exactly)")
    _log_axes(ax, "step n", "|x_n - 3|", "Experiment 1: f(x) = (x - 3)², Newton-root step")
    return fig


def trajectories_figure(traces: dict, optimum, curvature: dict):
    """Experiments 2–3: (x, y) paths over the loss contours, one panel per run."""
    fig, axes = plot.new_figure(len(traces), width=5.0, height=4.5)
    a, b = optimum
    for ax, (label, trace) in zip(np.atleast_1d(axes), traces.items()):
        x, y, c = np.asarray(trace["x"]), np.asarray(trace["y"]), curvature[label]
        grid_x, grid_y = np.meshgrid(np.linspace(min(x.min(), a) - 1, max(x.max(), a) + 1, 200),
                                     np.linspace(min(y.min(), b) - 1, max(y.max(), b) + 1, 200))
        loss = (grid_x - a) ** 2 + c * (grid_y - b) ** 2
        ax.contour(grid_x, grid_y, loss, levels=np.logspace(-2, np.log10(loss.max()), 15), colors="grey",
                   linewidths=0.5)
        ax.plot(x, y, ".-", markersize=3, linewidth=0.8, label="path")
        ax.plot(x[0], y[0], "go", label="start")
        ax.plot(a, b, "r*", markersize=12, label="optimum")
        ax.set(xlabel="x", ylabel="y", title=f"{label}: (x - 1)² + {c:g}(y - 2)²")
        plot.legend(ax, fontsize=8)
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
    _log_axes(ax, "step", "|g_x| / |g_y|", "Experiment 3: gradient ratio under the shared step (above 1: x dominates)")
    return fig


def step_scale_figure(scales: dict, group_names, title: str):
    """Step scale per group over time: one panel per optimizer, one line per group (log scale)."""
    ncols = min(3, len(scales))
    fig, axes = plot.new_figure(ncols, -(-len(scales) // ncols), width=4.5, height=3.5)
    axes = np.atleast_1d(axes).ravel()
    for ax in axes[len(scales):]:
        ax.set_visible(False)
    for ax, (label, scale) in zip(axes, scales.items()):
        scale = np.asarray(scale, np.float64)
        for k, name in enumerate(group_names):
            ax.plot(_positive(scale[:, k]), label=name, linewidth=1)
        _log_axes(ax, "step", "step scale (L / ||g_k||²)", label)
    fig.suptitle(title)
    return fig


def loss_bands_figure(curves: dict, title: str, cap: float | None = 10.0):
    """Loss per step: median and inter-quartile band over seeds per label (one run draws as its line).

    With ``cap`` the y axis stops at ``cap`` × the largest initial loss, so runs that blow up leave the top (their
    legend entry says where) instead of squashing the rest.
    """
    fig, ax = plot.new_figure(width=8.0, height=5.0)
    curves = {label: _positive(np.atleast_2d(traces)) for label, traces in curves.items()}
    plot.loss_bands(ax, curves, show_legend=False, linewidth=1)
    start = max((np.nanmedian(t[:, 0]) for t in curves.values()), default=np.nan)
    if cap is not None and np.isfinite(start):
        ax.set_ylim(top=cap * start)
    bands = any(t.shape[0] > 1 for t in curves.values())
    ax.set(xlabel="step", ylabel="loss (median, 25–75 % band over seeds)" if bands else "loss", title=title)
    plot.legend(ax, fontsize=8, ncol=2)
    return fig


def layer_moves_figure(moves: dict, title: str):
    """Experiment 6: relative distance each layer moved from its initialisation per step, one panel per optimizer."""
    fig, axes = plot.new_figure(len(moves), width=4.5, height=3.5)
    for ax, (label, trace) in zip(np.atleast_1d(axes), moves.items()):
        trace = np.asarray(trace, np.float64)
        for k in range(trace.shape[1]):
            ax.plot(_positive(trace[:, k]), label=f"layer {k}", linewidth=1)
        _log_axes(ax, "step", "||θ_k - θ_k(0)|| / ||θ_k(0)||", label)
    fig.suptitle(title)
    return fig
