"""Lab note 001: the Newton-root step ``p -= L/||g||² · g`` — starvation, zig-zag and per-group fixes.

Five experiments, each a Section with the note's expectations as claims beside measured numbers:

1. ``(x - 3)²``: the trajectory ``x_n = 3 + (x0 - 3)/2ⁿ``; float32 against float64.
2. ``(x - 1)² + (y - 2)²`` from (10, 10): rate 1/2 in both coordinates, a straight path.
3. ``(x - 1)² + c (y - 2)²``: starvation of x by the shared step; a grid c × scaling × start point.
4. linear regression ``w·x + b``: zig-zag and convergence for global, per-layer and per-leaf steps.
5. an x²-activation MLP: zig-zag of the shared step and of the note's four fix directions against AdamW,
   ``optax.polyak_sgd`` and ``optax.contrib.momo_adam``, over learning rates × seeds.

Experiments 3–5 are ``run_grid`` grids (problem constants and learning rates dynamic, optimizer static); the
claims are pure functions of the measured traces (:mod:`optlab.studies.newton_root_claims`), the figures are in
:mod:`optlab.studies.newton_root_figures`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import diagnostics as dg
from optlab.engine.grid import run_grid
from optlab.engine.loop import fit
from optlab.optimizers.newton_root import newton_root
from optlab.optimizers.preconditioned import newton_root_adam, newton_root_hutchinson
from optlab.problems import linear_regression, quadratic_1d, quadratic_2d, square_mlp
from optlab.studies import newton_root_claims as nc
from optlab.studies import newton_root_figures as nf
from optlab.studies.base import Section, Study, StudyResult, Table

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


@dataclass(frozen=True)
class NewtonRootConfig:
    """Sizes and grid axes of the Newton-root study (tuple fields are ``--grid`` axes)."""

    steps: int = 400  # updates in experiments 1-3 (quadratics)
    x0: float = 10.0  # experiment 1 start
    c: float = 100.0  # experiment 3 curvature of the key run (added to the c grid)
    c_values: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)  # experiment 3 grid
    start_x: tuple[float, ...] = (10.0, -8.0)  # experiment 3 grid; the first (x, y) is the key start
    start_y: tuple[float, ...] = (10.0, 2.5)
    linreg_scalings: tuple[str, ...] = LINREG_SCALINGS  # experiment 4
    linreg_steps: int = 100
    linreg_n: int = 1000
    linreg_noise: float = 0.0
    mlp_steps: int = 500  # experiment 5
    mlp_points: int = 64
    mlp_target: str = "sin"  # "sin" or "teacher" (realisable, minimum loss 0)
    optimizers: tuple[str, ...] = OPTIMIZERS
    learning_rates: tuple[float, ...] = (0.1, 0.3, 1.0, 2.0)  # multipliers of each optimizer's base rate
    reference_lr: float = 1.0  # the multiplier the claims of experiment 5 compare at
    adam_base_lr: float = 0.01  # base rate of adamw and momo_adam (Newton-root and Polyak bases are 1)
    seeds: int = 8

    @classmethod
    def quick(cls) -> NewtonRootConfig:
        """CI size: a few seconds of compute per experiment, compile time dominates."""
        return cls(steps=200, start_x=(10.0,), start_y=(10.0,), linreg_scalings=("global", "per_leaf_full"),
                   linreg_steps=60, linreg_n=200, mlp_steps=200, mlp_points=32, learning_rates=(0.3, 1.0), seeds=3,
                   optimizers=("global", "per_leaf_equal", "per_layer_equal", "newton_root_adam",
                               "newton_root_hutchinson", "adamw"))

    def validate(self) -> None:
        """Raise ValueError naming a bad field."""
        for name in ("steps", "linreg_steps", "linreg_n", "mlp_steps", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 40:
            raise ValueError(f"steps must be >= 40 (float32 needs ~25 halvings to part from float64), got {self.steps}")
        if self.mlp_points < 2:
            raise ValueError(f"mlp_points must be >= 2, got {self.mlp_points}")
        bad_scalings = [s for s in self.linreg_scalings if s not in VARIANTS]
        if bad_scalings or "global" not in self.linreg_scalings:
            raise ValueError(f"linreg_scalings must include 'global' and come from {tuple(VARIANTS)}, "
                             f"got {self.linreg_scalings}")
        bad = [o for o in self.optimizers if o not in OPTIMIZERS]
        if bad or not self.optimizers or "global" not in self.optimizers:
            raise ValueError(f"optimizers must include 'global' and come from {OPTIMIZERS}, got {self.optimizers}")
        if self.reference_lr not in self.learning_rates:
            raise ValueError(f"reference_lr={self.reference_lr} must be one of learning_rates={self.learning_rates}")
        for name in ("c", "adam_base_lr"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        if any(c <= 0 for c in self.c_values) or any(lr <= 0 for lr in self.learning_rates):
            raise ValueError(f"c_values and learning_rates must be > 0, got {self.c_values}, {self.learning_rates}")
        if not self.start_x or len(self.start_x) != len(self.start_y) or self.x0 == A1:
            raise ValueError(f"start_x and start_y need equal non-zero length and x0 != {A1}; "
                             f"got {self.start_x}, {self.start_y}, x0={self.x0}")
        if self.mlp_target not in ("sin", "teacher"):
            raise ValueError(f"mlp_target must be 'sin' or 'teacher', got {self.mlp_target!r}")


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


@jax.jit
def _summaries(loss: jax.Array, floor: jax.Array) -> dict[str, jax.Array]:
    """Per-run scalars of loss traces (runs, T) with per-run floors (runs,): one compiled call per experiment.

    zig-zag ignores steps at or below the floor; ``steps_to_floor`` is the first step from which the loss stays
    below the floor (-1: never); ``verdict`` indexes ``optlab.diagnostics.VERDICTS``.
    """
    def one(loss, floor):
        zigzag = dg.zigzag_score(jnp.where(loss > floor, loss, jnp.nan))
        return {"zigzag": zigzag.up_fraction, "up_over_drop": zigzag.up_over_drop,
                "verdict": dg.divergence(loss, floor=floor).verdict,
                "steps_to_floor": dg.starvation(loss[:, None], threshold=floor).settle_step[0]}

    return jax.vmap(one)(loss, floor)


def _summarise(grid, *, settle: bool = True):
    """Add the :func:`_summaries` columns to a grid's outputs (diagnostics run once over all cells)."""
    summary = _summaries(jnp.asarray(grid.outputs["loss"]), jnp.asarray(grid.outputs.pop("floor")))
    grid.outputs.update({k: np.asarray(v) for k, v in summary.items() if settle or k != "steps_to_floor"})
    return grid


def _rows(grid, experiment: str) -> list[dict]:
    """The grid's flat rows (axis values and scalar outputs) with the experiment id and the verdict by name."""
    rows = []
    for row in grid.to_rows():
        row["verdict"] = dg.verdict_name(int(row["verdict"]))
        rows.append({"experiment": experiment, **row})
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
    floor = QUAD_FLOOR * loss32[0]
    claims = [nc.claim_halving(x64, x32, A1, config.x0, run64["step_scale"]), nc.claim_monotone("1", loss32, floor),
              nc.claim_precision(x32, x64, A1)]
    figure = nf.halving_figure(x32, x64, A1, config.x0)
    return Section("Experiment 1: f(x) = (x - 3)², scalar", nc.TEXT["1"], claims=claims,
                   figures={"exp1_error_vs_step.png": figure})


def _quadratic_grid(config: NewtonRootConfig, progress: bool):
    c_values = sorted({*config.c_values, 1.0, config.c})

    def cell(hp, key):
        problem = quadratic_2d(A, B, hp["c"], start=(hp["x0"], hp["y0"]))
        scaling, share = VARIANTS[hp["scaling"]]
        result = fit(problem.loss, problem.init(key), newton_root(1.0, scaling, share=share), steps=config.steps,
                     metrics_fn=problem.metrics)
        trace, loss = result.trace, result.trace["loss"]
        return {"final_loss": problem.value(result.params), "floor": QUAD_FLOOR * loss[0], "loss": loss,
                "x": trace["metrics/x"], "y": trace["metrics/y"],
                "grad_x": trace["metrics/grad_x"], "grad_y": trace["metrics/grad_y"],
                "step_scale": jnp.broadcast_to(trace["step_scale"], (config.steps, 2))}

    axes = {"c": c_values, "scaling": list(QUAD_SCALINGS), "x0": list(config.start_x), "y0": list(config.start_y)}
    return _summarise(run_grid(cell, axes, seeds=1, static=["scaling"], progress=progress))


def _cell_trace(grid, name: str, **where) -> np.ndarray:
    """Output ``name`` of the first cell matching ``where``, as float64."""
    mask = grid.where(**where)
    return np.asarray(grid.outputs[name][mask][0], np.float64)


def _experiments_2_3(config: NewtonRootConfig, progress: bool) -> tuple[Section, Section, list[dict]]:
    grid = _quadratic_grid(config, progress)
    start = {"x0": config.start_x[0], "y0": config.start_y[0]}

    def traces(c, scaling="global"):
        return {k: _cell_trace(grid, k, c=c, scaling=scaling, **start)
                for k in ("loss", "x", "y", "grad_x", "grad_y", "step_scale")}

    sym, key = traces(1.0), traces(config.c)
    start_xy = (config.start_x[0], config.start_y[0])
    floor = QUAD_FLOOR * sym["loss"][0]
    claims2 = [nc.claim_rates_half(sym["x"] - A, sym["y"] - B, sym["loss"] > floor),
               nc.claim_straight_line(sym["x"], sym["y"], start_xy, (A, B), sym["loss"] > floor),
               nc.claim_monotone("2", sym["loss"], floor)]
    figures2 = {"exp2_3_trajectories.png": nf.trajectories_figure(
        {f"c={c:g}": traces(c) for c in (1.0, config.c)}, (A, B), {f"c={c:g}": c for c in (1.0, config.c)})}
    section2 = Section("Experiment 2: f(x, y) = (x - 1)² + (y - 2)², symmetric", nc.TEXT["2"], claims=claims2,
                       figures=figures2)

    key_floor = QUAD_FLOOR * key["loss"][0]
    x_term, y_term = (key["x"] - A) ** 2, config.c * (key["y"] - B) ** 2
    active = key["loss"] > key_floor
    claims3 = [nc.claim_starved_rates(key["x"] - A, key["y"] - B, x_term, y_term, config.c),
               nc.claim_sequential(key["x"] - A, key["y"] - B, config.c),
               nc.claim_monotone("3", key["loss"], key_floor),
               nc.claim_start_ratio(key["grad_x"][0], key["grad_y"][0], start_xy, (A, B), config.c),
               nc.claim_ratio_grows(key["grad_x"], key["grad_y"], active),
               nc.claim_kink(key["loss"], x_term, y_term, active)]
    steps_to_floor = {(c, s): int(grid.outputs["steps_to_floor"][grid.where(c=c, scaling=s, **start)][0])
                      for c in grid.axes["c"] for s in grid.axes["scaling"]}
    claims3.append(nc.claim_fix_quadratic(steps_to_floor, config.c, config.steps))
    table = Table("Experiment 3 grid, over start points: steps until the loss stays below 1e-10 × initial "
                  "(-1: never), zig-zag and verdicts", nc.table_headers(["c", "scaling"], steps_to_floor=True),
                  nc.grid_table_rows(grid, ["c", "scaling"]))
    figures3 = {"exp3_grad_ratio.png": nf.grad_ratio_figure(
                    {f"c={c:g}": traces(c) for c in grid.axes["c"]}, QUAD_FLOOR),
                "exp3_step_scale.png": nf.step_scale_figure(
                    {s: traces(config.c, s)["step_scale"] for s in grid.axes["scaling"]}, ["x", "y"],
                    f"Experiment 3, c={config.c:g}: step per group"),
                "exp3_loss_by_scaling.png": nf.quad_loss_figure(grid, start, config.c)}
    section3 = Section(f"Experiment 3: f(x, y) = (x - 1)² + c (y - 2)², asymmetric (key run c = {config.c:g})",
                       nc.TEXT["3"], tables=[table], figures=figures3, claims=claims3)
    return section2, section3, _rows(grid, "3")


def _experiment_4(config: NewtonRootConfig, progress: bool) -> tuple[Section, list[dict]]:
    def cell(hp, key):
        data_key, init_key = jax.random.split(key)
        problem = linear_regression(data_key, n=config.linreg_n, noise=config.linreg_noise)
        scaling, share = VARIANTS[hp["scaling"]]
        result = fit(problem.loss, problem.init(init_key), newton_root(1.0, scaling, share=share),
                     steps=config.linreg_steps, data=problem.data, metrics_fn=problem.metrics)
        loss = result.trace["loss"]
        final = problem.metrics(result.params)
        return {"final_loss": problem.value(result.params), "floor": problem.f_min + QUAD_FLOOR * loss[0],
                "weight_error_pct": final["weight_error_pct"], "bias_error_pct": final["bias_error_pct"],
                "loss": loss}

    grid = _summarise(run_grid(cell, {"scaling": list(config.linreg_scalings)}, seeds=config.seeds, static=["scaling"],
                               progress=progress))
    stats = {s: {k: grid.outputs[k][grid.where(scaling=s)] for k in ("zigzag", "up_over_drop", "verdict",
                                                                    "steps_to_floor", "final_loss")}
             for s in config.linreg_scalings}
    claims = [nc.claim_linreg_converges(stats["global"]), nc.claim_linreg_mild(stats["global"]),
              nc.claim_linreg_fix(stats)]
    extra = ("weight_error_pct", "bias_error_pct")
    table = Table(f"Experiment 4: over {config.seeds} seeds (data and init drawn per seed)",
                  nc.table_headers(["scaling"], extra, steps_to_floor=True),
                  nc.grid_table_rows(grid, ["scaling"], extra))
    figure = nf.loss_bands_figure({s: grid.outputs["loss"][grid.where(scaling=s)] for s in config.linreg_scalings},
                                  "Experiment 4: linear regression, loss over seeds")
    text = (f"Linear regression y = 2x + 1 + {config.linreg_noise:g}·ε, x ~ N(0, 1), {config.linreg_n} points, "
            f"{config.linreg_steps} steps. " + nc.TEXT["4"])
    section = Section("Experiment 4: linear network y = w·x + b", text, tables=[table], claims=claims,
                      figures={"exp4_loss.png": figure})
    return section, _rows(grid, "4")


def _experiment_5(config: NewtonRootConfig, progress: bool) -> tuple[Section, list[dict]]:
    problem = square_mlp(n_points=config.mlp_points, target=config.mlp_target)
    n_layers = len(problem.init(jax.random.key(0)).layers)

    def cell(hp, key):
        init_key, opt_key = jax.random.split(key)
        optimizer = make_optimizer(hp["optimizer"], hp["learning_rate"], adam_base_lr=config.adam_base_lr,
                                   key=opt_key)
        result = fit(problem.loss, problem.init(init_key), optimizer, steps=config.mlp_steps, data=problem.data)
        loss = result.trace["loss"]
        return {"final_loss": problem.value(result.params), "floor": jnp.zeros_like(loss[0]), "loss": loss,
                "step_scale": _per_layer_steps(result.trace, n_layers, config.mlp_steps)}

    axes = {"optimizer": list(config.optimizers), "learning_rate": list(config.learning_rates)}
    grid = _summarise(run_grid(cell, axes, seeds=config.seeds, static=["optimizer"], progress=progress), settle=False)
    grid.outputs["initial_loss"] = grid.outputs["loss"][:, 0]
    at_ref = {o: {k: grid.outputs[k][grid.where(optimizer=o, learning_rate=config.reference_lr)]
                  for k in ("zigzag", "up_over_drop", "final_loss", "initial_loss", "verdict")}
              for o in config.optimizers}
    claims = [nc.claim_mlp_zigzag(at_ref), *(nc.claim_fix(name, members, at_ref) for name, members in FIXES.items()),
              nc.claim_adamw_smooth(at_ref)]
    table = Table(f"Experiment 5: over {config.seeds} seeds, {config.mlp_steps} steps (lr × multiplies the base "
                  f"rate: 1 for Newton-root and Polyak, {config.adam_base_lr:g} for adamw and momo_adam)",
                  nc.table_headers(["optimizer", "lr ×"]), nc.grid_table_rows(grid, ["optimizer", "learning_rate"]))
    figures = {"exp5_loss_by_optimizer.png": nf.loss_bands_figure(
                   {o: grid.outputs["loss"][grid.where(optimizer=o, learning_rate=config.reference_lr)]
                    for o in config.optimizers}, f"Experiment 5: x² MLP, lr × {config.reference_lr:g}"),
               "exp5_final_loss_heatmap.png": nf.grid_heatmap(grid, "final_loss", "median final loss", log=True),
               "exp5_zigzag_heatmap.png": nf.grid_heatmap(grid, "up_over_drop",
                                                          "zig-zag: median rise/drop (clipped at 1)", clip=1.0),
               "exp5_step_scale.png": nf.step_scale_figure(
                   {o: grid.outputs["step_scale"][grid.where(optimizer=o, learning_rate=config.reference_lr)][0]
                    for o in config.optimizers if o in VARIANTS},
                   [f"layer {k}" for k in range(n_layers)], "Experiment 5, seed 0: step per layer")}
    section = Section("Experiment 5: x²-activation MLP (1→8→8→1)",
                      f"Square-activation MLP 1→8→8→1 fitting the {config.mlp_target} target on "
                      f"{config.mlp_points} points in [-2, 2]. " + nc.TEXT["5"] + "\n\n" + nc.damping_text(grid, config.reference_lr),
                      tables=[table],
                      claims=claims, figures=figures)
    return section, _rows(grid, "5")


def _per_layer_steps(trace: dict, n_layers: int, steps: int) -> jax.Array:
    """Step scale per layer (T, n_layers): a shared step broadcast, per-leaf steps read at each weight leaf."""
    if "step_scale" not in trace:
        return jnp.full((steps, n_layers), jnp.nan)
    scale = trace["step_scale"]
    groups = scale.shape[1]
    if groups == 1:
        return jnp.broadcast_to(scale, (steps, n_layers))
    if groups == n_layers:
        return scale
    if groups == 2 * n_layers:  # leaves are (weight, bias) per layer
        return scale[:, ::2]
    return jnp.full((steps, n_layers), jnp.nan)


def run(config: NewtonRootConfig, *, progress: bool = True) -> StudyResult:
    """Run the five experiments of lab note 001 and return their claims, tables, figures and grid rows."""
    config.validate()
    section1 = _experiment_1(config)
    section2, section3, rows3 = _experiments_2_3(config, progress)
    section4, rows4 = _experiment_4(config, progress)
    section5, rows5 = _experiment_5(config, progress)
    return StudyResult("newton-root", "Newton-root step (lab note 001): starvation, zig-zag and per-group fixes",
                       dataclasses.asdict(config), [section1, section2, section3, section4, section5],
                       rows=rows3 + rows4 + rows5)


STUDY = Study("newton-root", "lab note 001: the Newton-root (Polyak) step on quadratics, a linear model and an "
              "x² MLP; starvation, zig-zag and per-group fixes", NewtonRootConfig, run)
