"""Lab note 001: the Newton-root step ``p -= L/||g||² · g`` — starvation, zig-zag and per-group fixes.

Six experiments, each a Section with the note's expectations as claims beside measured numbers:

1. ``(x - 3)²``: the trajectory ``x_n = 3 + (x0 - 3)/2ⁿ``; float32 against float64.
2. ``(x - 1)² + (y - 2)²`` from (10, 10): rate 1/2 in both coordinates, a straight path.
3. ``(x - 1)² + c (y - 2)²``: starvation of x by the shared step; a grid c × scaling × start point.
4. linear regression ``w·x + b``: zig-zag and convergence for global, per-layer and per-leaf steps.
5. an x²-activation MLP: zig-zag of the shared step and of the note's four fix directions against AdamW,
   ``optax.polyak_sgd`` and ``optax.contrib.momo_adam``, over learning rates × seeds.
6. a ReLU MLP on scikit-learn's digits: the shared, per-layer and Adam-hybrid steps against AdamW
   (:mod:`optlab.studies.newton_root_network`).

Experiments 2–6 are four ``run_grid`` grids (problem constants and learning rates dynamic, optimizer static),
summarised once by :func:`optlab.studies.summary.summarize_grid`; the claims are pure functions of the measured
traces (:mod:`optlab.studies.newton_root_claims`), the figures are in :mod:`optlab.studies.newton_root_figures`.
An interrupted grid (Ctrl-C) ends the study: its finished rows are kept, no later grid runs and no claim is
computed from a partial grid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.diagnostics import VERDICTS
from optlab.engine.grid import run_grid
from optlab.engine.interrupt import GridInterrupted
from optlab.engine.loop import fit
from optlab.optimizers.newton_root import newton_root
from optlab.optimizers.hutchinson import newton_root_hutchinson
from optlab.optimizers.preconditioned import newton_root_adam
from optlab.problems import linear_regression, quadratic_1d, quadratic_2d, square_mlp
from optlab.studies import newton_root_claims as nc
from optlab.studies import newton_root_figures as nf
from optlab.studies import newton_root_network as nn
from optlab.studies import summary as sm
from optlab.studies.base import Section, Study, StudyResult
from optlab.studies.config import Settings, setting

# Newton-root variants by name: (scaling, share of the loss gap among groups).
VARIANTS = {"global": ("global", "full"), "per_leaf_full": ("per_leaf", "full"),
            "per_leaf_equal": ("per_leaf", "equal"), "per_layer_full": ("per_layer", "full"),
            "per_layer_equal": ("per_layer", "equal")}
OPTIMIZERS = (*VARIANTS, "newton_root_adam", "newton_root_hutchinson", "adamw", "polyak_sgd", "momo_adam")
# Which optimizers realise which fix direction of the note (1 per parameter, 2 per layer, 3 diagonal, 4 hybrid).
FIXES = {"1. per-parameter (per_leaf)": ("per_leaf_full", "per_leaf_equal"),
         "2. per-layer": ("per_layer_full", "per_layer_equal"),
         "3. diagonal Hessian (Hutchinson)": ("newton_root_hutchinson",),
         "4. hybrid (Adam magnitude)": ("newton_root_adam",)}
QUAD_SCALINGS = ("global", "per_leaf_full", "per_leaf_equal")
LINREG_SCALINGS = ("global", "per_layer_full", "per_leaf_full", "per_leaf_equal")
A1, A, B = 3.0, 1.0, 2.0  # minimisers: experiment 1 (x - 3)², experiments 2–3 (x - 1)² + c (y - 2)²
QUAD_FLOOR = 1e-10  # quadratic losses below this share of the initial loss count as converged (float32 noise)
MLP_LAYERS = 3  # square_mlp is 1→8→8→1


@dataclass(frozen=True)
class NewtonRootConfig(Settings):
    """Sizes and grid axes of the Newton-root study (tuple fields are ``--grid`` axes)."""

    steps: int = setting(400, range=(40, None),
                         doc="updates in experiments 1-3 (quadratics); >= 40: float32 needs ~25 halvings to part "
                             "from float64")
    x0: float = setting(10.0, doc=f"experiment 1 start (not the minimiser {A1:g})")
    c: float = setting(100.0, range=(0, None), bounds="(]",
                       doc="experiment 3 curvature of the key run (added to the c grid)")
    c_values: tuple[float, ...] = setting((1.0, 10.0, 100.0, 1000.0), range=(0, None), bounds="(]",
                                          doc="experiment 3 grid of curvatures")
    start_x: tuple[float, ...] = setting((10.0, -8.0), doc="experiment 3 grid; the first (x, y) is the key start")
    start_y: tuple[float, ...] = setting((10.0, 2.5), doc="experiment 3 grid; as many values as start_x")
    linreg_scalings: tuple[str, ...] = setting(LINREG_SCALINGS, choices=tuple(VARIANTS),
                                               doc="experiment 4 Newton-root variants; must include global")
    linreg_steps: int = setting(100, range=(1, None), doc="experiment 4 steps")
    linreg_n: int = setting(1000, range=(1, None), doc="experiment 4 data points")
    linreg_noise: float = setting(0.0, range=(0, None), doc="experiment 4 label noise (standard deviation)")
    mlp_steps: int = setting(500, range=(1, None), doc="experiment 5 steps")
    mlp_points: int = setting(64, range=(2, None), doc="experiment 5 training points")
    mlp_target: str = setting("sin", choices=("sin", "teacher"),
                              doc="experiment 5 target: sin, or teacher (realisable, minimum loss 0)")
    optimizers: tuple[str, ...] = setting(OPTIMIZERS, choices=OPTIMIZERS,
                                          doc="experiment 5 optimizers; must include global")
    learning_rates: tuple[float, ...] = setting((0.1, 0.3, 1.0, 2.0), range=(0, None), bounds="(]",
                                                doc="multipliers of each optimizer's base rate")
    reference_lr: float = setting(1.0, range=(0, None), bounds="(]",
                                  doc="the multiplier the claims of experiments 5-6 compare at; in both lr grids")
    adam_base_lr: float = setting(0.01, range=(0, None), bounds="(]",
                                  doc="base rate of adamw and momo_adam (Newton-root and Polyak bases are 1)")
    seeds: int = setting(8, range=(1, None), doc="seeds per grid cell")
    net_steps: int = setting(300, range=(2, None),
                             doc="experiment 6 full-batch steps on the digits MLP (>= 2: step 1 is measured)")
    net_sizes: tuple[int, ...] = setting((64, 256, 256, 10), range=(1, None), min_len=3,
                                         doc="experiment 6 layer widths, 64 (pixels) first, 10 (classes) last")
    net_train: int = setting(0, range=(0, None), doc="experiment 6 training images (the first of the split; 0: all)")
    net_optimizers: tuple[str, ...] = setting(("global", "per_layer_full", "per_layer_equal", "newton_root_adam",
                                               "adamw"), choices=OPTIMIZERS,
                                              doc="experiment 6 optimizers; must include global")
    net_learning_rates: tuple[float, ...] = setting((0.1, 0.3, 1.0), range=(0, None), bounds="(]",
                                                    doc="experiment 6 multipliers of the base rates")

    @classmethod
    def quick(cls) -> NewtonRootConfig:
        """CI size: a few seconds of compute per experiment, compile time dominates."""
        return cls(steps=200, start_x=(10.0,), start_y=(10.0,), linreg_scalings=("global", "per_leaf_full"),
                   linreg_steps=60, linreg_n=200, mlp_steps=200, mlp_points=32, learning_rates=(0.3, 1.0), seeds=3,
                   optimizers=("global", "per_leaf_equal", "per_layer_equal", "newton_root_adam",
                               "newton_root_hutchinson", "adamw"), net_steps=40, net_sizes=(64, 32, 32, 10),
                   net_train=256, net_optimizers=("global", "per_layer_equal"),
                   net_learning_rates=(1.0,))

    def check(self) -> None:
        """Rules across fields (each field's own range and choices are checked by ``Settings.validate``)."""
        if "global" not in self.linreg_scalings:
            raise ValueError(f"linreg_scalings must include 'global' (the baseline), got {self.linreg_scalings}")
        if "global" not in self.optimizers:
            raise ValueError(f"optimizers must include 'global' (the baseline), got {self.optimizers}")
        if self.reference_lr not in self.learning_rates:
            raise ValueError(f"reference_lr={self.reference_lr} must be one of learning_rates={self.learning_rates}")
        if len(self.start_x) != len(self.start_y):
            raise ValueError(f"start_x and start_y need equal length; got {self.start_x}, {self.start_y}")
        if self.x0 == A1:
            raise ValueError(f"x0 must differ from the minimiser {A1} (experiment 1 halves the distance), got {self.x0}")
        nn.check_config(self)


def make_optimizer(name: str, learning_rate, *, adam_base_lr: float = 0.01, key=None):
    """The optimizer of experiment 5 called ``name`` at ``learning_rate`` (a multiplier of its base rate).

    Base rates: 1 for the Newton-root family and ``polyak_sgd`` (the pure root step), ``adam_base_lr`` for
    ``adamw`` and ``momo_adam``. ``optax.polyak_sgd(scaling=s)`` computes its Polyak step from the already scaled
    gradient ``s·g``, so its effective rate is ``1/s``: it gets ``scaling=1/learning_rate`` (the same uncapped
    update as ``newton_root(learning_rate)``) and keeps its default step cap ``max_learning_rate=1``.

    Args:
        name: one of ``OPTIMIZERS``.
        learning_rate: multiplier of the base rate; may be traced (a vmapped grid axis).
        adam_base_lr: base rate of ``adamw`` and ``momo_adam``.
        key: PRNG key for the Hutchinson probes (``newton_root_hutchinson`` only).

    Returns:
        An optax transformation; its ``update`` accepts ``value=`` and ``value_fn=`` as ``optlab.fit`` passes them.

    Example:
        >>> optimizer = make_optimizer("per_layer_equal", 0.5)
        >>> result = fit(problem.loss, params, optimizer, steps=100, data=problem.data)  # doctest: +SKIP
    """
    if name in VARIANTS:
        scaling, share = VARIANTS[name]
        return newton_root(learning_rate, scaling, share=share)
    if name == "newton_root_adam":
        return newton_root_adam(learning_rate)
    if name == "newton_root_hutchinson":
        seed = 0 if key is None else jax.random.randint(key, (), 0, 2**30)
        return newton_root_hutchinson(learning_rate, seed=seed)
    if name == "adamw":
        return optax.adamw(adam_base_lr * learning_rate)
    if name == "polyak_sgd":
        return optax.polyak_sgd(scaling=1.0 / learning_rate)
    if name == "momo_adam":
        return optax.contrib.momo_adam(adam_base_lr * learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def _rows(grid, experiment: str) -> list[dict]:
    """The grid's flat rows (axis values and scalar outputs) with the experiment id and the verdict by name."""
    rows = [{"experiment": experiment, **row} for row in grid.to_rows()]
    for row in rows:
        row["verdict"] = VERDICTS[int(row["verdict"])]
    return rows


def _experiment_1(config: NewtonRootConfig) -> Section:
    def run(dtype):
        problem = quadratic_1d(A1, x0=config.x0)
        result = fit(problem.loss, problem.init(None), newton_root(1.0), steps=config.steps, dtype=dtype,
                     metrics_fn=problem.metrics)
        return {k: np.asarray(result.trace[k], np.float64) for k in ("metrics/x", "loss", "step_scale")}

    run32 = run("float32")
    with jax.enable_x64(True):
        run64 = run("float64")
    x32, x64, loss32 = run32["metrics/x"], run64["metrics/x"], run32["loss"]
    claims = [nc.claim_halving(x64, x32, A1, config.x0, run64["step_scale"]),
              nc.claim_monotone("1", loss32, QUAD_FLOOR * loss32[0]), nc.claim_precision(x32, x64, A1)]
    return Section("Experiment 1: f(x) = (x - 3)², scalar", nc.TEXT["1"], claims=claims,
                   figures={"exp1_error_vs_step.png": nf.halving_figure(x32, x64, A1, config.x0)})


# ------------------------------------------------------------------------- grids: (cell, axes, seeds, static)


def _quadratic_grid(config: NewtonRootConfig):
    def cell(hp, key):
        del key  # the start point is part of the problem: the note's exact (x0, y0)
        problem = quadratic_2d(A, B, hp["c"], start=(hp["x0"], hp["y0"]))
        scaling, share = VARIANTS[hp["scaling"]]
        result = fit(problem.loss, problem.init(None), newton_root(1.0, scaling, share=share), steps=config.steps,
                     metrics_fn=problem.metrics)
        trace, loss = result.trace, result.trace["loss"]
        return {"final_loss": problem.value(result.params), "floor": QUAD_FLOOR * loss[0], "loss": loss,
                **{k: trace[f"metrics/{k}"] for k in ("x", "y", "grad_x", "grad_y")},
                "step_scale": jnp.broadcast_to(trace["step_scale"], (config.steps, 2))}

    axes = {"c": sorted({*config.c_values, 1.0, config.c}), "scaling": list(QUAD_SCALINGS),
            "x0": list(config.start_x), "y0": list(config.start_y)}
    return cell, axes, 1, ["scaling"]


def _linreg_grid(config: NewtonRootConfig):
    def cell(hp, key):
        data_key, init_key = jax.random.split(key)
        problem = linear_regression(data_key, n=config.linreg_n, noise=config.linreg_noise)
        scaling, share = VARIANTS[hp["scaling"]]
        result = fit(problem.loss, problem.init(init_key), newton_root(1.0, scaling, share=share),
                     steps=config.linreg_steps, data=problem.data, metrics_fn=problem.metrics)
        loss, final = result.trace["loss"], problem.metrics(result.params)
        return {"final_loss": problem.value(result.params), "floor": problem.f_min + QUAD_FLOOR * loss[0],
                "weight_error_pct": final["weight_error_pct"], "bias_error_pct": final["bias_error_pct"],
                "loss": loss}

    return cell, {"scaling": list(config.linreg_scalings)}, config.seeds, ["scaling"]


def _mlp_grid(config: NewtonRootConfig):
    problem = square_mlp(n_points=config.mlp_points, target=config.mlp_target)

    def cell(hp, key):
        init_key, opt_key = jax.random.split(key)
        optimizer = make_optimizer(hp["optimizer"], hp["learning_rate"], adam_base_lr=config.adam_base_lr,
                                   key=opt_key)
        result = fit(problem.loss, problem.init(init_key), optimizer, steps=config.mlp_steps, data=problem.data)
        loss = result.trace["loss"]
        return {"final_loss": problem.value(result.params), "floor": jnp.zeros_like(loss[0]), "loss": loss,
                "initial_loss": loss[0], "step_scale": _per_layer_steps(result.trace, config.mlp_steps)}

    axes = {"optimizer": list(config.optimizers), "learning_rate": list(config.learning_rates)}
    return cell, axes, config.seeds, ["optimizer"]


def _per_layer_steps(trace: dict, steps: int) -> jax.Array:
    """Step scale per layer (T, layers): a shared step broadcast, per-leaf steps read at each weight leaf."""
    scale = trace.get("step_scale")
    groups = None if scale is None else scale.shape[1]
    if groups == 1:
        return jnp.broadcast_to(scale, (steps, MLP_LAYERS))
    if groups == MLP_LAYERS:
        return scale
    if groups == 2 * MLP_LAYERS:  # leaves are (weight, bias) per layer
        return scale[:, ::2]
    return jnp.full((steps, MLP_LAYERS), jnp.nan)  # no per-group step (adamw, polyak_sgd, ...)


# ------------------------------------------------------------------------- sections from finished grids


def _sections_2_3(config: NewtonRootConfig, grid) -> list[Section]:
    start = {"x0": config.start_x[0], "y0": config.start_y[0]}
    start_xy = (config.start_x[0], config.start_y[0])

    def traces(c, scaling="global"):
        out = grid.select(c=c, scaling=scaling, **start).outputs
        return {k: np.asarray(out[k][0], np.float64) for k in ("loss", "x", "y", "grad_x", "grad_y", "step_scale")}

    sym, key = traces(1.0), traces(config.c)
    active = sym["loss"] > QUAD_FLOOR * sym["loss"][0]
    claims2 = [nc.claim_rates_half(sym["x"] - A, sym["y"] - B, active),
               nc.claim_straight_line(sym["x"], sym["y"], start_xy, (A, B), active),
               nc.claim_monotone("2", sym["loss"], QUAD_FLOOR * sym["loss"][0])]
    shown = {f"c={c:g}": c for c in (1.0, config.c)}
    section2 = Section("Experiment 2: f(x, y) = (x - 1)² + (y - 2)², symmetric", nc.TEXT["2"], claims=claims2,
                       figures={"exp2_3_trajectories.png": nf.trajectories_figure(
                           {label: traces(c) for label, c in shown.items()}, (A, B), shown)})

    key_floor = QUAD_FLOOR * key["loss"][0]
    x_term, y_term = (key["x"] - A) ** 2, config.c * (key["y"] - B) ** 2
    active = key["loss"] > key_floor
    steps_to_floor = {(c, s): int(grid.select(c=c, scaling=s, **start).outputs["steps_to_floor"][0])
                      for c in grid.axes["c"] for s in grid.axes["scaling"]}
    claims3 = [nc.claim_starved_rates(key["x"] - A, key["y"] - B, x_term, y_term, config.c),
               nc.claim_sequential(key["x"] - A, key["y"] - B, config.c),
               nc.claim_monotone("3", key["loss"], key_floor),
               nc.claim_start_ratio(key["grad_x"][0], key["grad_y"][0], start_xy, (A, B), config.c),
               nc.claim_ratio_grows(key["grad_x"], key["grad_y"], active),
               nc.claim_kink(key["loss"], x_term, y_term, active),
               nc.claim_fix_quadratic(steps_to_floor, config.c, config.steps)]
    table = nc.grid_table(grid, ["c", "scaling"], "Experiment 3 grid, over start points: steps until the loss stays "
                          f"below {QUAD_FLOOR:g} × initial, zig-zag and verdicts", steps_to_floor=True)
    figures3 = {"exp3_grad_ratio.png": nf.grad_ratio_figure({f"c={c:g}": traces(c) for c in grid.axes["c"]},
                                                            QUAD_FLOOR),
                "exp3_step_scale.png": nf.step_scale_figure(
                    {s: traces(config.c, s)["step_scale"] for s in grid.axes["scaling"]}, ["x", "y"],
                    f"Experiment 3, c={config.c:g}: step per group"),
                "exp3_loss_by_scaling.png": nf.loss_bands_figure(
                    {s: traces(config.c, s)["loss"] for s in grid.axes["scaling"]},
                    f"Experiment 3: loss at c = {config.c:g} by scaling", cap=None)}
    section3 = Section(f"Experiment 3: f(x, y) = (x - 1)² + c (y - 2)², asymmetric (key run c = {config.c:g})",
                       nc.TEXT["3"], tables=[table], figures=figures3, claims=claims3)
    return [section2, section3]


def _sections_4(config: NewtonRootConfig, grid) -> list[Section]:
    stats = {s: grid.select(scaling=s).outputs for s in config.linreg_scalings}
    claims = [nc.claim_linreg_converges(stats["global"]), nc.claim_linreg_mild(stats["global"]),
              nc.claim_linreg_fix(stats)]
    table = nc.grid_table(grid, ["scaling"], f"Experiment 4: over {config.seeds} seeds (data and init drawn per "
                          "seed)", ("weight_error_pct", "bias_error_pct"), steps_to_floor=True)
    figure = nf.loss_bands_figure({s: out["loss"] for s, out in stats.items()},
                                  "Experiment 4: linear regression, loss over seeds")
    text = (f"Linear regression y = 2x + 1 + {config.linreg_noise:g}·ε, x ~ N(0, 1), {config.linreg_n} points, "
            f"{config.linreg_steps} steps. " + nc.TEXT["4"])
    return [Section("Experiment 4: linear network y = w·x + b", text, tables=[table], claims=claims,
                    figures={"exp4_loss.png": figure})]


def _sections_5(config: NewtonRootConfig, grid) -> list[Section]:
    ref = config.reference_lr
    at_ref = {o: grid.select(optimizer=o, learning_rate=ref).outputs for o in config.optimizers}
    claims = [nc.claim_mlp_zigzag(at_ref), *(nc.claim_fix(name, members, at_ref) for name, members in FIXES.items()),
              nc.claim_adamw_smooth(at_ref)]
    table = nc.grid_table(grid, ["optimizer", "learning_rate"], f"Experiment 5: over {config.seeds} seeds, "
                          f"{config.mlp_steps} steps (learning_rate multiplies the base rate: 1 for Newton-root and "
                          f"Polyak, {config.adam_base_lr:g} for adamw and momo_adam)")
    labels = {"xlabel": "learning rate × base", "ylabel": "optimizer", "fmt": "{:.2g}"}
    figures = {"exp5_loss_by_optimizer.png": nf.loss_bands_figure(
                   {o: out["loss"] for o, out in at_ref.items()}, f"Experiment 5: x² MLP, lr × {ref:g}"),
               "exp5_final_loss_heatmap.png": grid.heatmap("optimizer", "learning_rate", "final_loss",
                                                           agg="nanmedian", title="median final loss", log=True,
                                                           **labels),
               "exp5_zigzag_heatmap.png": grid.heatmap(  # clipped: a blown-up run would wash out the colour scale
                   "optimizer", "learning_rate", "up_over_drop", agg=lambda v: np.minimum(np.nanmedian(v), 1.0),
                   title="median rise/drop, clipped at 1", **labels),
               "exp5_step_scale.png": nf.step_scale_figure(
                   {o: out["step_scale"][0] for o, out in at_ref.items() if o in VARIANTS},
                   [f"layer {k}" for k in range(MLP_LAYERS)], "Experiment 5, seed 0: step per layer")}
    text = (f"Square-activation MLP 1→8→8→1 fitting the {config.mlp_target} target on {config.mlp_points} points "
            f"in [-2, 2]. " + nc.TEXT["5"] + "\n\n" + nc.damping_text(grid, ref))
    return [Section("Experiment 5: x²-activation MLP (1→8→8→1)", text, tables=[table], claims=claims,
                    figures=figures)]


# experiment id (of its rows), progress label, its grid, the sections built from the finished grid
EXPERIMENTS = (("3", "exp 2-3", _quadratic_grid, _sections_2_3), ("4", "exp 4", _linreg_grid, _sections_4),
               ("5", "exp 5", _mlp_grid, _sections_5), ("6", "exp 6", nn.network_grid, nn.network_sections))


def _cells(axes: dict, seeds: int) -> int:
    return math.prod(len(v) for v in axes.values()) * seeds


def run(config: NewtonRootConfig, *, progress: bool = True, run_dir: Path | None = None) -> StudyResult:
    """Run the six experiments of lab note 001 and return their claims, tables, figures and grid rows.

    If a grid is interrupted (Ctrl-C), no later grid runs: the result has ``complete=False``, the finished cells'
    rows, ``cells_done`` / ``cells_total`` over the four grids, and no claim of the interrupted or later
    experiments (none is computed from a partial grid).

    Example: ``result = run(NewtonRootConfig.quick(), progress=False); result.claims[0].verdict``.
    """
    del run_dir  # the study writes no checkpoints
    config.validate()
    grids = [(name, label, *grid(config), sections) for name, label, grid, sections in EXPERIMENTS]
    total = sum(_cells(axes, seeds) for _, _, _, axes, seeds, _, _ in grids)
    done, complete, rows = 0, True, []
    sections = [_experiment_1(config)]
    for name, label, cell, axes, seeds, static, build in grids:
        try:
            grid = run_grid(cell, axes, seeds=seeds, static=static, progress=progress, label=label)
        except GridInterrupted as stopped:  # an earlier Ctrl-C in this run: the grid did not start
            grid = stopped.result
        if len(grid):
            grid = sm.summarize_grid(grid, floor="floor")
            if name in ("5", "6"):  # floor 0, which no loss stays below: steps to floor would be -1 everywhere
                del grid.outputs["steps_to_floor"]
            rows += _rows(grid, name)
        done += len(grid)
        if not grid.complete:
            complete = False
            sections.append(Section(f"Experiment {name}: interrupted", f"{len(grid)} of {_cells(axes, seeds)} cells "
                                    "finished; the claims of this and later experiments are not computed."))
            break
        sections += build(config, grid)
    return StudyResult("newton-root", "Newton-root step (lab note 001): starvation, zig-zag and per-group fixes",
                       dataclasses.asdict(config), sections, rows=rows, complete=complete, cells_done=done,
                       cells_total=total)


STUDY = Study("newton-root", "lab note 001: the Newton-root (Polyak) step on quadratics, a linear model, an "
              "x² MLP and a digits MLP; starvation, zig-zag and per-group fixes", NewtonRootConfig, run)
