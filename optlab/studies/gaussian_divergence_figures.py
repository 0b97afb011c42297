"""Figures of the Gaussian-image divergence study (lab note 004): loss terms with the best point and the onset,
the fitted image at best and at the end beside the target, covariance degeneracy over time, the fixes as bars and
H1's bias corrections beside the measured effective step.

Each function takes the grids (and the step probe) the claims use and returns a matplotlib Figure; nothing here
computes a verdict. Example: ``fixes_figure(config, grids["fixes"]).savefig("fixes.png")``.
"""

from __future__ import annotations

import numpy as np

from optlab import plot
from optlab.problems import gaussian_image as gi

STEP_GROUPS = ("xy", "chol", "color")  # the probe's parameter groups (gaussian_divergence.step_probe)


def grad_name(value) -> str:
    return gi.GRADIENT_OF[int(round(float(value)))]


def combo_text(combo: dict) -> str:
    return (f"rasteriser {combo['rasteriser']}, gradient_of {grad_name(combo['gradient_of'])}, "
            f"clamp {int(combo['clamp'])}")


def bias_factor(t, b1=0.9, b2=0.999):
    t = np.maximum(np.asarray(t, float), 1.0)
    return np.sqrt(1 - b2 ** t) / (1 - b1 ** t)


def at_checkpoint(probe: dict, key: str, steps: np.ndarray) -> np.ndarray:
    """Per run, ``probe[key]`` at the probed checkpoint nearest to each run's ``steps``."""
    nearest = np.argmin(np.abs(probe["step"] - steps[:, None]), axis=1)
    return probe[key][np.arange(len(nearest)), nearest]


def fixes_figure(config, grid):
    """The fixes table as bars: mean ± std over runs of final / resume and of final PSNR, every run a dot."""
    fixes = list(grid.axes["fix"])
    fig, (ax, ax2) = plot.new_figure(2, width=max(4.5, 0.5 * len(fixes) + 1.5), height=4.2)
    colors = plot.line_colors(len(fixes))
    x = np.arange(len(fixes))
    for axis, key, label in ((ax, "final_over_resume", "final / resume (fused loss)"),
                             (ax2, "final_psnr", "final PSNR (dB)")):
        values = [np.asarray(grid.outputs[key][grid.where(fix=f)], float) for f in fixes]
        axis.bar(x, [v.mean() for v in values], yerr=[v.std() for v in values], color=colors, alpha=0.7,
                 capsize=3)
        for k, v in enumerate(values):
            axis.plot(np.full(v.size, k) + np.linspace(-0.15, 0.15, v.size), v, "k.", markersize=3)
        axis.set_xticks(x, fixes, rotation=35, ha="right")
        axis.set_ylabel(label)
    ax.axhline(1 + config.held_tol, color="red", linestyle="--", linewidth=1,
               label=f"holds at or below {1 + config.held_tol:g}")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ratios = np.asarray(grid.outputs["final_over_resume"], float)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size:  # zoom on the band around 1 where the runs lie: bars from 0 would hide every difference
        ax.set_ylim(min(0.9, ratios.min() - 0.02), max(1.1 + config.held_tol, ratios.max() + 0.02))
    plot.legend(ax, fontsize=8)
    n_runs = int(np.sum(grid.where(fix=fixes[0])))
    ax.set_title(f"final / resume: mean ± std, dots = runs (n = {n_runs}); y axis zoomed", fontsize=9)
    ax2.set_title("final PSNR: mean ± std", fontsize=9)
    fig.suptitle(f"Fixes, each resumed from each run's best checkpoint, {config.fix_steps} more steps", fontsize=10)
    return fig


def bias_figure(config, probe: dict):
    t = np.arange(1, config.steps + 1)
    fig, (ax, ax2) = plot.new_figure(2, width=5.5)
    ax.plot(t, 1 - 0.9 ** t, label="bc1 = 1 − 0.9^t")
    ax.plot(t, 1 - 0.999 ** t, label="bc2 = 1 − 0.999^t")
    ax.plot(t, bias_factor(t), label="√bc2 / bc1 (lr multiplier)")
    best = float(np.median(probe["best_step"]))
    plot.mark_step(ax, best, "median best")
    ax.set_xscale("log")
    ax.set_xlabel("iteration")
    ax.set_title("Adam's bias corrections (formula)")
    plot.legend(ax)
    steps = np.median(probe["step"], axis=0) + 1
    for color, group in zip(plot.line_colors(len(STEP_GROUPS)), STEP_GROUPS):
        ax2.plot(steps, np.median(probe[f"median/{group}"], axis=0), color=color, label=f"{group}: median")
        ax2.plot(steps, np.median(probe[f"max/{group}"], axis=0), color=color, linestyle="--", label=f"{group}: max")
    plot.mark_step(ax2, best, "median best")
    ax2.set_yscale("log")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("|Δθ| / lr per entry (median over runs)")
    ax2.set_title(f"Measured step at each checkpoint ({len(probe['step'])} runs)")
    plot.legend(ax2)
    fig.suptitle("H1: bias correction vs the measured effective step")
    return fig


def _loss_figure(config, base, pick: int, combo: dict):
    it = np.arange(base.outputs["loss"].shape[1]) * config.log_every
    fig, ax = plot.new_figure(width=8.5, height=4.4)
    terms = {"fused loss": base.outputs["loss"][pick], "L1": base.outputs["trace_l1"][pick],
             "L2": base.outputs["trace_l2"][pick], "1 − SSIM": 1 - base.outputs["trace_ssim"][pick]}
    for name, values in terms.items():
        ax.plot(it, values, label=name)
    best, onset = float(base.outputs["best_iter"][pick]), float(base.outputs["onset_iter"][pick])
    best_row = int(base.outputs["best_step"][pick])
    if best_row >= 0:
        ax.plot([best], [terms["fused loss"][best_row]], "o", color="green", label=f"best (it {best:g})")
    plot.mark_step(ax, best, "_best", color="green")  # the dot carries the legend entry
    if onset >= 0:
        plot.mark_step(ax, onset, f"divergence onset (it {onset:g})")
    else:
        ax.plot([], [], " ", label="no divergence onset (diagnostics.divergence)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss term (log)")
    ratio = float(base.outputs["final_best_ratio"][pick])
    # two lines: the combination does not fit beside the title at this width
    ax.set_title(f"Loss terms of the run with the highest final / best ({ratio:.3g}), N = {int(base.cells[pick]['n'])}"
                 f"\n{combo_text(combo)}", fontsize=10)
    plot.legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: the curves fill the axes
    return fig


def _image_figure(config, target, base, pick: int, combo: dict):
    shape = target.shape[:2]
    params = {k.split("/", 1)[1]: base.outputs[k][pick] for k in base.outputs if k.startswith("params/")}
    best = {k.split("/", 1)[1]: base.outputs[k][pick] for k in base.outputs if k.startswith("best_params/")}
    best_loss, final = float(base.outputs["best_loss"][pick]), float(base.outputs["final_loss"][pick])
    images, axes = plot.new_figure(3, width=3.0, height=3.4)
    for axis, (title, image) in zip(axes, [
            ("target", target),
            (f"best, it {int(base.outputs['best_iter'][pick])}\nloss {best_loss:.4f}, "
             f"PSNR {float(base.outputs['best_psnr'][pick]):.1f} dB",
             gi.render(best, shape, rasteriser=combo["rasteriser"])),
            (f"end, it {config.steps}\nloss {final:.4f}, PSNR {float(base.outputs['final_psnr'][pick]):.1f} dB",
             gi.render(params, shape, rasteriser=combo["rasteriser"]))]):
        # unclamped colours may leave [0, 1]: shown clipped, as an 8-bit image would store them
        axis.imshow(np.clip(np.asarray(image), 0.0, 1.0), interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    images.suptitle(f"Fitted image beside the target (N = {int(base.cells[pick]['n'])}, {combo_text(combo)})",
                    fontsize=9)
    return images


def _degeneracy_figure(config, base, idx, combo: dict):
    it = np.arange(base.outputs["loss"].shape[1]) * config.log_every
    seeds = {}
    for i in idx:  # seed index within its (N, combination): the order run_grid lays the seeds out in
        seeds.setdefault(int(base.cells[i]["n"]), []).append(int(i))
    label = {i: f"N={n}, seed {k}" for n, cells in seeds.items() for k, i in enumerate(cells)}
    colors = dict(zip(idx, plot.line_colors(len(idx))))
    deg, daxes = plot.new_figure(3, width=4.2, height=3.8)
    for axis, (name, key, log) in zip(daxes, [("smallest eigenvalue of Σ (px², symlog)", "trace_min_eig", True),
                                              ("Gaussians narrower than a pixel (√λ_min < 0.5)", "trace_n_subpixel",
                                               False),
                                              ("share of pixels covered (Σw ≥ 1/255)", "trace_coverage", False)]):
        for i in idx:
            axis.plot(it, base.outputs[key][i], color=colors[i], alpha=0.8, linewidth=1, label=label[i])
            best = float(base.outputs["best_iter"][i])
            if best >= 0:
                row = int(base.outputs["best_step"][i])
                axis.plot([best], [base.outputs[key][i][row]], "o", color=colors[i], markersize=4)
        if log:  # symlog: a clamped or collapsed Gaussian reaches λ_min = 0, which a log axis cannot draw
            axis.set_yscale("symlog", linthresh=1e-3)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("iteration")
    if len(idx) <= 12:
        plot.legend(daxes[0], fontsize=7)
    deg.suptitle(f"H6: covariance degeneracy over time ({combo_text(combo)}; dot = each run's best)", fontsize=10)
    return deg


def run_figures(config, target, base, combo) -> dict:
    """loss_terms.png, images.png, degeneracy.png from the baseline grid (with ``best_iter`` / ``onset_iter``)."""
    idx = np.flatnonzero(base.where(**combo))
    pick = int(idx[np.argmax(base.outputs["final_best_ratio"][idx])])
    return {"loss_terms.png": _loss_figure(config, base, pick, combo),
            "images.png": _image_figure(config, target, base, pick, combo),
            "degeneracy.png": _degeneracy_figure(config, base, idx, combo)}


__all__ = ["STEP_GROUPS", "at_checkpoint", "bias_factor", "bias_figure", "combo_text", "fixes_figure", "grad_name",
           "run_figures"]
