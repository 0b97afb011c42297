"""Lab note 004: the late divergence of Adam fitting an image with 2-D Gaussians, and every proposed fix.

The note fits a 64×64 synthetic image with N = 50 Gaussians (Adam, lr 1e-3 constant, fused loss
``0.2·L1 + 0.8·L2 + 0.1·(1 − SSIM)``) and sees the loss fall to its best at ~1500 iterations, then rise to 22 %
above the start by 10 000, with no NaN. It lists four hypotheses and five fixes and ran none. This study:

1. Baseline grid: N (static) × rasteriser (static: ``sum`` / ``normalized``) × ``gradient_of`` (honest / L2 only,
   traced) × clamping (traced) × seeds, checkpointed every ``checkpoint_every`` steps; the divergence diagnostics
   per run (best step and loss, onset, final / best, final / start), per combination.
2. Fixes: every run of the combination that diverged most (highest median final / best) is resumed from its best
   saved checkpoint (``best_checkpoint`` of its cell) and continued ``fix_steps`` steps under each fix; all fixes
   are one ``run_grid`` (fix static, run index traced).
3. Hypotheses H1–H6 (see :mod:`optlab.studies.gaussian_divergence_claims`), each from a measurement; H1's
   effective per-parameter step is measured (:func:`step_probe`): every saved checkpoint of the chosen
   combination is stepped once more and ``|Δθ| / lr`` is recorded per parameter group.

The three grids run as stages (:func:`~optlab.studies.stages.run_stages`): a Ctrl-C stops at the first
incomplete grid and the report says which, with no claim computed from missing cells.

Choices where the note leaves a setting open (the report repeats them): positions, Cholesky factors and colours
follow GaussianImage (:mod:`optlab.problems.gaussian_image`), the Cholesky init scale grows with image / √N; "best"
is the lowest logged fused loss; SGD after the switch keeps the lr (1e-3); the early-stopping fix stops after
``patience`` steps without a new best; per-parameter rates decay the position rate ×0.01 over the fix steps (3DGS's
``position_lr_final / position_lr_init``) and keep Cholesky / colour at lr; the GaussianImage recipe is
``optax.adan(lr)`` with ×0.5 every 20 000 steps on plain L2 (its final / best is still measured on the fused loss).

Example: ``result = run(GaussianDivergenceConfig.quick(), progress=False); result.claims[0].verdict``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.engine import loop
from optlab.engine.checkpoint import best_checkpoint
from optlab.engine.grid import run_grid
from optlab.problems import gaussian_image as gi
from optlab.studies import summary as sm
from optlab.studies.base import Study, StudyResult
from optlab.studies.config import Settings, setting
from optlab.studies.gaussian_divergence_probe import STEP_GROUPS, measured_steps, step_probe  # noqa: F401
from optlab.studies.stages import cached_stage, interrupted_section, run_stages

FIXES = ("none", "cosine", "step_decay", "clip", "moment_reset", "sgd", "early_stop", "per_param_lr",
         "gaussianimage")
FIX_DOCS = {
    "none": "continue unchanged (control)", "cosine": "cosine annealing lr → lr/10 over the fix steps",
    "step_decay": "lr × 0.5 every step_every steps", "clip": "gradient clipping at global norm 1.0",
    "moment_reset": "Adam moments reset at the resume", "sgd": "switch to SGD (same lr)",
    "early_stop": "early stopping, patience steps", "per_param_lr": "position lr decays ×0.01 (3DGS practice)",
    "gaussianimage": "published recipe: Adan, ×0.5 every 20 000, plain L2",
}
LOSS_VARIANTS = ((0.2, 0.8, 0.1), (0.2, 0.8, 0.0), (0.0, 1.0, 0.0))  # H3: the note's, without SSIM, L2 only
LOSS_NAMES = ("fused", "no SSIM", "L2 only")
CLIP_NORM = 1.0  # the note's experiment 3
STEP_FACTOR = 0.5  # the note's step decay and GaussianImage's
ADAN_DECAY_EVERY = 20_000  # GaussianImage's step decay period
POSITION_LR_FINAL = 0.01  # 3DGS: position_lr_final / position_lr_init = 1.6e-6 / 1.6e-4


@dataclass(frozen=True)
class GaussianDivergenceConfig(Settings):
    """Sizes, the baseline's settings and axes, the fixes, the hypothesis grids and their verdict tolerances."""

    image: str = setting("synthetic", choices=gi.IMAGES, doc="target: synthetic gradient + checkerboard, or photo")
    size: int = setting(64, range=(8, 512), doc="image side in pixels")
    n_gaussians: tuple[int, ...] = setting((45, 50, 55), range=(1, None), doc="N axis (static)")
    lr: float = setting(1e-3, range=(0, None), bounds="(]", doc="Adam learning rate (constant)")
    steps: int = setting(10_000, range=(10, None), doc="baseline iterations")
    log_every: int = setting(10, range=(1, None), doc="steps per trace row")
    checkpoint_every: int = setting(100, range=(1, None), doc="steps per checkpoint (a multiple of log_every)")
    seeds: int = setting(8, range=(2, None), doc="seeds per combination")
    rasterisers: tuple[str, ...] = setting(gi.RASTERISERS, choices=gi.RASTERISERS, doc="rasteriser axis")
    gradient_of: tuple[str, ...] = setting(gi.GRADIENT_OF, choices=gi.GRADIENT_OF, doc="gradient_of axis")
    clamp: tuple[int, ...] = setting((0, 1), choices=(0, 1), doc="clamp params after each step (1) or not (0)")
    fixes: tuple[str, ...] = setting(FIXES, choices=FIXES, doc="fixes resumed from each run's best checkpoint")
    fix_steps: int = setting(8500, range=(10, None), doc="steps each fix runs after the resume")
    step_every: int = setting(500, range=(1, None), doc="step decay period of the step_decay fix")
    patience: int = setting(100, range=(1, None), doc="early-stopping patience in steps")
    hyp_lrs: tuple[float, ...] = setting((1e-4, 3e-4, 1e-3, 3e-3), range=(0, None), bounds="(]",
                                         doc="H4: lr axis of the lr × N grid")
    hyp_seeds: int = setting(4, range=(2, None), doc="seeds of the H3 / H4 grids")
    held_tol: float = setting(0.05, range=(0, None), doc="a run holds when final / best <= 1 + held_tol")
    rel_tol: float = setting(0.05, range=(0, None), bounds="(]",
                             doc="diverged: the loss stays above (1 + rel_tol) × best (diagnostics.divergence)")
    chunk: int = setting(1024, range=(1, None), doc="pixels per rasteriser chunk (bounds memory)")

    @classmethod
    def quick(cls) -> "GaussianDivergenceConfig":
        # one program per grid: the rasteriser where the late rise shows at small sizes; lr ×10 so that 400
        # steps cover the ground of the note's first few thousand
        return cls(size=16, n_gaussians=(10,), lr=1e-2, steps=400, log_every=5, checkpoint_every=25, seeds=2,
                   rasterisers=("normalized",), gradient_of=gi.GRADIENT_OF, clamp=(0,),
                   fixes=("none", "cosine", "moment_reset", "sgd"), fix_steps=100, step_every=50, patience=20,
                   hyp_lrs=(1e-3, 1e-2, 3e-2), hyp_seeds=2, chunk=256)

    def check(self) -> None:
        if self.checkpoint_every % self.log_every or self.steps % self.checkpoint_every:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be a multiple of log_every="
                             f"{self.log_every} and divide steps={self.steps}")
        if self.fix_steps % self.log_every:
            raise ValueError(f"log_every={self.log_every} must divide fix_steps={self.fix_steps}")


# ------------------------------------------------------------------------------------------------ cells


def _optimizer(name: str, lr: Any, shape, clamp: Any, fix_steps: int = 1) -> optax.GradientTransformation:
    if name == "sgd":
        core = optax.sgd(lr)
    elif name == "gaussianimage":
        core = optax.adan(optax.exponential_decay(lr, ADAN_DECAY_EVERY, STEP_FACTOR, staircase=True))
    elif name == "per_param_lr":
        position = optax.adam(optax.exponential_decay(lr, fix_steps, POSITION_LR_FINAL))
        labels = {"xy": "position", "chol": "rest", "color": "rest", "opacity": "rest"}
        core = optax.multi_transform({"position": position, "rest": optax.adam(lr)}, labels)
    else:
        core = optax.adam(lr)
    return optax.chain(core, gi.clamp_after_step(shape, clamp))


def _flag(value: Any, on: str) -> Any:
    return float(value == on) if isinstance(value, str) else value


def _outcome(config, res, target, rasteriser: str, start_loss=None) -> dict[str, Any]:
    metrics = gi.make_metrics(target, rasteriser=rasteriser, chunk=config.chunk)
    final, best = metrics(res.params), metrics(res.best_params)
    trace = res.trace
    out = {"loss": trace["loss"], "final_loss": final["loss"], "final_psnr": final["psnr"],
           "best_psnr": best["psnr"], "run_best_loss": res.best_loss, "run_best_step": res.best_step,
           "params": res.params, "best_params": res.best_params}
    for name in ("l1", "l2", "ssim", "psnr", "min_eig", "min_abs_det", "n_subpixel", "coverage"):
        out[f"trace_{name}"] = trace[f"metrics/{name}"]
    if start_loss is not None:
        out["final_over_resume"] = final["loss"] / start_loss
    return out


def baseline_cell(config: GaussianDivergenceConfig, target: jax.Array):
    """The baseline cell ``(hp, key) -> outputs``: one Adam run of ``config.steps`` on ``target``."""
    shape = target.shape[:2]

    def cell(hp, key):
        rasteriser = hp["rasteriser"]
        weights = jnp.asarray(LOSS_VARIANTS)[hp["loss_variant"]] if "loss_variant" in hp else LOSS_VARIANTS[0]
        loss = gi.make_loss(target, rasteriser=rasteriser, gradient_of=_flag(hp["gradient_of"], "l2_only"),
                            weights=weights, chunk=config.chunk)
        metrics = gi.make_metrics(target, rasteriser=rasteriser, weights=weights, chunk=config.chunk)
        params = gi.init_params(key, hp["n"], shape)
        lr = hp.get("lr", config.lr)
        res = loop.fit(loss, params, _optimizer("adam", lr, shape, hp["clamp"]), steps=config.steps,
                       log_every=config.log_every, metrics_fn=metrics)
        out = _outcome(config, res, target, rasteriser)
        out["start_loss"] = res.trace["loss"][0]
        out["final_over_start"] = res.trace["loss"][-1] / res.trace["loss"][0]
        return out

    return cell


def fix_cell(config: GaussianDivergenceConfig, target: jax.Array, starts: dict, combo: dict):
    """The fix cell: resume run ``hp["run"]`` of ``starts[n]`` (stacked TrainStates) under fix ``hp["fix"]``."""
    shape = target.shape[:2]
    rasteriser, clamp = combo["rasteriser"], combo["clamp"]

    def cell(hp, key):
        del key  # the resumed state carries everything random
        fix, n = hp["fix"], hp["n"]
        best = jax.tree.map(lambda v: v[hp["run"]], starts[n])
        weights = (0.0, 1.0, 0.0) if fix == "gaussianimage" else LOSS_VARIANTS[0]
        gradient_of = 0.0 if fix == "gaussianimage" else _flag(combo["gradient_of"], "l2_only")
        loss = gi.make_loss(target, rasteriser=rasteriser, gradient_of=gradient_of, weights=weights,
                            chunk=config.chunk)
        metrics = gi.make_metrics(target, rasteriser=rasteriser, chunk=config.chunk)  # always the fused terms
        opt = _optimizer(fix, config.lr, shape, clamp, config.fix_steps)
        resumed = best._replace(wait=jnp.zeros_like(best.wait), stopped_at=jnp.full_like(best.stopped_at, -1))
        fresh = fix in ("moment_reset", "sgd", "per_param_lr", "gaussianimage")
        start = resumed._replace(opt_state=None) if fresh else resumed
        if fix == "gaussianimage":  # its own loss: the best so far is re-measured on it from the resume
            start = start._replace(best_loss=jnp.full_like(best.best_loss, jnp.inf))
        s0 = best.step.astype(jnp.float32)
        schedule = None
        if fix == "cosine":
            schedule = lambda t: 0.1 + 0.45 * (1 + jnp.cos(jnp.pi * jnp.clip((t - s0) / config.fix_steps, 0, 1)))
        elif fix == "step_decay":
            schedule = lambda t: STEP_FACTOR ** jnp.floor((t - s0) / config.step_every)
        template = gi.init_params(jax.random.key(0), n, shape)
        res = loop.fit(loss, template, opt, steps=config.fix_steps, log_every=config.log_every, metrics_fn=metrics,
                       start=start, clip=CLIP_NORM if fix == "clip" else None, schedule=schedule,
                       early_stop=loop.EarlyStop(config.patience) if fix == "early_stop" else None)
        resume_loss = gi.loss_terms(gi.render(best.params, shape, rasteriser=rasteriser, chunk=config.chunk),
                                    target)["loss"]
        out = _outcome(config, res, target, rasteriser, start_loss=resume_loss)
        out["resume_step"] = best.step
        out["max_grad_norm"] = jnp.max(res.trace["grad_norm"])  # does the clip fix's threshold ever bind?
        out["held"] = (out["final_over_resume"] <= 1 + config.held_tol).astype(jnp.float32)
        return out

    return cell


# ------------------------------------------------------------------------------------------------ experiments


def baseline_grid(config, target, progress: bool, checkpoint_dir: Path):
    """The baseline grid with per-cell checkpoints under ``checkpoint_dir`` and the divergence summary added."""
    axes = {"n": list(config.n_gaussians), "rasteriser": list(config.rasterisers),
            "gradient_of": [float(g == "l2_only") for g in config.gradient_of], "clamp": list(config.clamp)}
    grid = run_grid(baseline_cell(config, target), axes, seeds=config.seeds, static=["n", "rasteriser"],
                    progress=progress, label="baseline", checkpoint_every=config.checkpoint_every,
                    checkpoint_dir=checkpoint_dir, resume=True)  # the same --out again continues an interrupted run
    return sm.summarize_grid(grid, "loss", rel_tol=config.rel_tol)


def pick_combo(grid) -> dict:
    """The (rasteriser, gradient_of, clamp) combination with the highest median final / best (ties: first)."""
    best, chosen = -math.inf, None
    for key, mask in grid.groups(["rasteriser", "gradient_of", "clamp"]):
        ratio = float(np.nanmedian(grid.outputs["final_best_ratio"][mask]))
        if ratio > best:
            best, chosen = ratio, key
    return chosen


def load_starts(config, grid, combo, shape, checkpoint_dir: Path) -> tuple[dict, dict]:
    """Per N: the stacked best saved states of the runs of ``combo`` (one per seed), and their grid rows."""
    starts, cells = {}, {}
    for n in config.n_gaussians:
        rows = np.flatnonzero(grid.where(n=n, **combo))
        indices = [int(grid.info["checkpoint_cells"][i]) for i in rows]
        template = gi.init_params(jax.random.key(0), n, shape)
        opt = _optimizer("adam", config.lr, shape, combo["clamp"])
        states = [loop.load_state(best_checkpoint(loop.cell_dir(checkpoint_dir, i)), template, opt)
                  for i in indices]
        starts[n] = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        cells[n] = rows.tolist()
    return starts, cells


def resume_check(config, base, fixes, base_rows: dict) -> dict[str, int]:
    """Bit-exact resume, measured: every fixed run's first logged loss (at the resumed params, before any update)
    must equal its baseline run's logged loss at the resumed step, and the unchanged "none" fix must repeat the
    baseline's trace over every row both runs logged. Returns counts (``first_equal`` of ``first_total``,
    ``none_equal`` of ``none_total`` runs over ``overlap_rows`` rows)."""
    out = {"first_equal": 0, "first_total": 0, "none_equal": 0, "none_total": 0, "overlap_rows": 0}
    for i, cell in enumerate(fixes.cells):
        if cell["fix"] == "gaussianimage":  # another loss: its first value is not the baseline's
            continue
        b = base_rows[cell["n"]][int(cell["run"])]
        row = int(fixes.outputs["resume_step"][i]) // config.log_every
        resumed, logged = fixes.outputs["loss"][i], base.outputs["loss"][b]
        if row < len(logged):
            out["first_total"] += 1
            out["first_equal"] += int(resumed[0] == logged[row])
        overlap = min(len(resumed), len(logged) - row)
        if cell["fix"] == "none" and overlap > 0:
            out["none_total"] += 1
            out["overlap_rows"] += overlap
            out["none_equal"] += int(np.array_equal(resumed[:overlap], logged[row:row + overlap]))
    return out


def fixes_grid(config, target, starts, combo, progress: bool):
    axes = {"fix": list(config.fixes), "n": list(config.n_gaussians), "run": list(range(config.seeds))}
    return run_grid(fix_cell(config, target, starts, combo), axes, seeds=1, static=["fix", "n"],
                    progress=progress, label="fixes")


def hypothesis_grid(config, target, combo, progress: bool):
    """H3 (loss variant) × H4 (lr) × N from scratch, on ``combo``'s rasteriser and clamp: final / best per run.

    Always the honest gradient: H3 asks what optimising SSIM does, so the optimised loss must be the logged one.
    """
    cell = baseline_cell(config, target)
    axes = {"n": list(config.n_gaussians), "rasteriser": [combo["rasteriser"]],
            "gradient_of": [0.0], "clamp": [combo["clamp"]],
            "lr": list(config.hyp_lrs), "loss_variant": list(range(len(LOSS_VARIANTS)))}
    grid = run_grid(cell, axes, seeds=config.hyp_seeds, static=["n", "rasteriser"], progress=progress,
                    label="H3 × H4")
    return sm.summarize_grid(grid, "loss", rel_tol=config.rel_tol)


def _scalar_row(row: dict) -> dict:
    # the final / best parameters are per-Gaussian arrays: not columns of results.csv
    return {k: v for k, v in row.items() if not k.startswith(("params", "best_params"))}


def _probe_rows(probe: dict) -> list[dict]:
    # H1's measured step in results.csv: one row per (run of the chosen combination, probed checkpoint)
    per_step = [k for k in probe if k != "best_step"]
    return [{"grid": "h1_probe", "run": r, **{k: float(probe[k][r, c]) for k in per_step}}
            for r in range(probe["step"].shape[0]) for c in range(probe["step"].shape[1])]


def run(config: GaussianDivergenceConfig, *, progress: bool = True, run_dir: Path | None = None) -> StudyResult:
    """Run the baseline, the fixes and the hypothesis grids; judge H1–H6 and the note's numbers.

    Checkpoints go to ``run_dir / "checkpoints"`` (a temporary folder without ``run_dir``). An interrupted grid
    stops the study (:func:`~optlab.studies.stages.run_stages`): the finished rows come back with
    ``complete=False`` and no claim.
    """
    from optlab.studies import gaussian_divergence_claims as gc  # claims and figures: the side of the report

    config.validate()
    t0 = time.perf_counter()
    target = gi.make_target(config.image, config.size)
    shape = target.shape[:2]
    title = "Gaussian-image divergence (lab note 004)"
    scratch = None
    if run_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="optlab-gaussian-")
        checkpoint_dir = Path(scratch.name) / "checkpoints"
    else:
        checkpoint_dir = Path(run_dir) / "checkpoints"
    n_base = len(config.n_gaussians) * len(config.rasterisers) * len(config.gradient_of) * len(config.clamp)
    cells_total = n_base * config.seeds + len(config.fixes) * len(config.n_gaussians) * config.seeds + \
        len(config.n_gaussians) * len(config.hyp_lrs) * len(LOSS_VARIANTS) * config.hyp_seeds
    picked: dict[str, Any] = {}  # what the later stages take from a complete baseline

    def baseline() -> Any:
        grid = baseline_grid(config, target, progress, checkpoint_dir)
        if grid.complete:  # the fixes resume from the most divergent combination's best checkpoints
            picked["combo"] = combo = pick_combo(grid)
            picked["starts"], picked["base_rows"] = load_starts(config, grid, combo, shape, checkpoint_dir)
        return grid

    def kept(name: str, make) -> Any:  # a rerun into the same run_dir loads a finished stage (cached_stage)
        if run_dir is None:
            return make()
        return cached_stage(Path(run_dir) / "stages" / f"{name}.pkl", make, key=repr(sorted(picked["combo"].items())))

    stages = (("baseline", baseline),  # resumes from its cell checkpoints (run_grid(resume=True))
              ("fixes", lambda: kept("fixes", lambda: fixes_grid(config, target, picked["starts"], picked["combo"],
                                                                 progress))),
              ("hypotheses", lambda: kept("hypotheses", lambda: hypothesis_grid(config, target, picked["combo"],
                                                                                progress))))
    try:
        run = run_stages(stages, row=_scalar_row)
        if run.stopped is not None:
            return StudyResult("gaussian-divergence", title, dataclasses.asdict(config), [interrupted_section(run)],
                               rows=run.rows, seconds=time.perf_counter() - t0, complete=False,
                               cells_done=run.done, cells_total=cells_total)
        grids, combo = run.results, picked["combo"]
        check = resume_check(config, grids["baseline"], grids["fixes"], picked["base_rows"])
        probe = step_probe(config, grids["baseline"], combo, target, checkpoint_dir)
        run.rows.extend(_probe_rows(probe))
        sections = gc.sections(config, target, grids, combo, check, probe)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return StudyResult("gaussian-divergence", title, dataclasses.asdict(config), sections, rows=run.rows,
                       seconds=time.perf_counter() - t0, cells_done=run.done, cells_total=cells_total)


STUDY = Study("gaussian-divergence", "2-D Gaussian image fit: Adam's late divergence, H1–H6, fixes resumed from best",
              GaussianDivergenceConfig, run)
