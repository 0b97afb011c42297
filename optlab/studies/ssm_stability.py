"""Lab note 003: six optimizer changes to a diverging complex-valued Cayley SSM, measured and attributed exactly.

The model is :mod:`optlab.problems.cayley_ssm` (a stack of complex linear recurrences with Cayley propagators) on
the copying-memory task or a char-level LM. A config file (``configs/ssm/*.yaml``) is one recipe (flat keys:
learning_rate, weight_decay, warmup_steps, gradient_clip, unitary_lambda, scheduler_type, steps, solver, ...) and
``baseline`` names the note's recipe it is compared against (``test.yaml`` against ``test_old``). Experiments:

1. baseline vs this recipe, and the changes that differ between them as an :mod:`optlab.ablation` factorial (2^k ×
   seeds, one vmapped program): Shapley values and leave-one-out of the final loss: which change is "critical".
2. unitary deviation, residual and CG iterations with and without ``unitary_lambda`` under each solver.
3. the solve alone over iterations × tolerance, on the propagators of the trained models: model or solver drift?
4. an LR grid for the complex model and its real-valued twin (same real parameter count to rounding).
5. WSD vs cosine vs constant at equal steps, and the note's emergency fallback.

Choices where the note is silent (the report repeats them): ``steps`` is the schedule's horizon (the note's 100 /
100K) and ``train_steps`` the steps actually run (a 100K-step horizon is not trained here); every scheduler has
the same linear warm-up; WSD decays over the last 10%; clipping is global-norm on the gradient; AdamW's decay is
decoupled (optax); the old max_aggression scheduler is not in the note and is taken as wsd.

Example: ``result = run(SSMStabilityConfig.quick(), progress=False); result.claims[0].verdict``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optlab import ablation
from optlab.engine import loop
from optlab.engine.grid import run_grid
from optlab.problems import cayley_ssm as cs
from optlab.studies import grid_parts
from optlab.studies.base import Study, StudyResult
from optlab.studies.config import Settings, setting
from optlab.studies.stages import interrupted_section, run_stages

RECIPE_KEYS = ("learning_rate", "weight_decay", "warmup_steps", "gradient_clip", "unitary_lambda", "scheduler_type")
# The note's recipes as it states them (hypotheses to test, never results). unitary_lambda "(missing)" is 0.
NOTE_RECIPES: dict[str, dict[str, Any]] = {
    "test_old": dict(learning_rate=1e-4, weight_decay=0.1, warmup_steps=50, gradient_clip=1.0, unitary_lambda=0.0,
                     scheduler_type="wsd", steps=100),
    "test": dict(learning_rate=3e-5, weight_decay=0.01, warmup_steps=200, gradient_clip=0.3, unitary_lambda=0.01,
                 scheduler_type="cosine", steps=100),
    "max_aggression_old": dict(learning_rate=1e-6, weight_decay=0.1, warmup_steps=8000, gradient_clip=0.2,
                               unitary_lambda=0.005, scheduler_type="wsd", steps=100000),
    "max_aggression": dict(learning_rate=5e-5, weight_decay=0.05, warmup_steps=2000, gradient_clip=0.5,
                           unitary_lambda=0.01, scheduler_type="wsd", steps=100000),
    # the fallback block gives no weight_decay: test.yaml's 0.01 is kept
    "emergency_fallback": dict(learning_rate=1e-5, weight_decay=0.01, warmup_steps=500, gradient_clip=0.1,
                               unitary_lambda=0.05, scheduler_type="constant", steps=100),
}
BASELINES = tuple(NOTE_RECIPES) + ("none",)
CLAIMED_DEVIATION = 1e-4  # "Unitarity deviation should stay <1e-4"
CLAIMED_CG_ITERS = 10  # "CG solver converges in <10 iters"
O_1E2 = (1e-3, 1e-1)  # "grows to O(1e-2)": within a factor 10 of 1e-2
CLAIMED_LR_RATIO = (0.3, 0.5)


@dataclass(frozen=True)
class SSMStabilityConfig(Settings):
    """One recipe (the config file's values), what it is compared against, the model, and the experiment grids."""

    learning_rate: float = setting(3e-5, range=(0, None), bounds="(]", doc="AdamW peak learning rate")
    weight_decay: float = setting(0.01, range=(0, None), doc="decoupled weight decay (optax adamw)")
    warmup_steps: int = setting(200, range=(0, None), doc="linear warm-up steps (every scheduler)")
    gradient_clip: float = setting(0.3, range=(0, None), bounds="(]", doc="global-norm gradient clip")
    unitary_lambda: float = setting(0.01, range=(0, None), doc="weight of sum_l ||U^H U - I||_F^2")
    scheduler_type: str = setting("cosine", choices=cs.SCHEDULERS, doc="learning-rate schedule shape")
    steps: int = setting(100, range=(1, None), doc="schedule horizon (the note's run length)")
    solver: str = setting("exact", choices=cs.SOLVERS, doc="Cayley solve of the recipe's runs")
    solver_iters: int = setting(20, range=(1, None), doc="most iterations of an iterative solve")
    solver_tol: float = setting(1e-6, range=(0, None), bounds="(]", doc="relative residual tolerance of the solve")
    hermitian: bool = setting(True, doc="H = (P + P^H)/2 (True) or a free complex P (non-Hermitian drift)")
    baseline: str = setting("test_old", choices=BASELINES, doc="the note's recipe this one is compared against")
    train_steps: int = setting(100, range=(1, None), doc="steps actually trained (<= steps is not required)")
    seeds: int = setting(8, range=(2, None), doc="seeds per cell")
    task: str = setting("copy", choices=cs.TASKS, doc="copying-memory task or char LM on pydoc_data.topics")
    layers: int = setting(8, range=(1, None), doc="recurrent layers L")
    width: int = setting(16, range=(1, None), doc="residual width d")
    state: int = setting(16, range=(1, None), doc="complex state width n")
    delay: int = setting(10, range=(1, None), doc="copying task delay T")
    copy_len: int = setting(5, range=(1, None), doc="copying task symbols")
    seq_len: int = setting(32, range=(2, None), doc="char-LM characters per example")
    n_examples: int = setting(256, range=(2, None), doc="examples in the data set")
    batch_size: int = setting(32, range=(1, None), doc="mini-batch size")
    log_every: int = setting(10, range=(1, None), doc="steps per trace row (must divide train_steps)")
    init_scale: float = setting(1.0, range=(0, None), bounds="(]", doc="spread of H's eigenvalues at init")
    solvers: tuple[str, ...] = setting(cs.SOLVERS, choices=cs.SOLVERS, doc="solvers of experiment 2")
    sweep_iters: tuple[int, ...] = setting((1, 2, 5, 10, 20, 50), range=(1, None), doc="experiment 3 iterations")
    sweep_tols: tuple[float, ...] = setting((1e-2, 1e-4, 1e-6), range=(0, None), bounds="(]",
                                            doc="experiment 3 tolerances")
    lr_grid: tuple[float, ...] = setting((1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3), range=(0, None), bounds="(]",
                                         doc="experiment 4 learning rates")
    n_boot: int = setting(1000, range=(10, None), doc="seed-bootstrap resamples of the Shapley CIs")

    @classmethod
    def quick(cls) -> "SSMStabilityConfig":
        # one tiny model, 20 steps, 8 seeds: every experiment runs in three small compiled programs. log_every=1
        # puts one copy of the training step in each program instead of two (a logged and an unlogged one):
        # compile-bound at this size, that is worth more than the per-step metrics it adds
        return cls(layers=2, width=8, state=4, delay=4, copy_len=2, n_examples=32, batch_size=16, train_steps=20,
                   log_every=1, solvers=("exact", "cg"), sweep_iters=(2, 8), sweep_tols=(1e-6,),
                   lr_grid=(1e-3, 1e-2), n_boot=50)

    def check(self) -> None:
        if self.train_steps % self.log_every:
            raise ValueError(f"log_every={self.log_every} must divide train_steps={self.train_steps}")
        if self.batch_size > self.n_examples:
            raise ValueError(f"batch_size must be <= n_examples={self.n_examples}, got {self.batch_size}")


def recipe_of(config: SSMStabilityConfig) -> dict[str, Any]:
    """The config's own recipe (the RECIPE_KEYS)."""
    return {k: getattr(config, k) for k in RECIPE_KEYS}


def spec_of(config: SSMStabilityConfig, **changes) -> cs.SSMSpec:
    spec = cs.SSMSpec(layers=config.layers, width=config.width, state=config.state, hermitian=config.hermitian,
                      solver=config.solver, iters=config.solver_iters, task=config.task, delay=config.delay,
                      copy_len=config.copy_len, seq_len=config.seq_len, n_examples=config.n_examples,
                      init_scale=config.init_scale)
    return spec._replace(**changes)


def _numeric(hp: dict) -> dict:
    out = dict(hp)
    if isinstance(out.get("scheduler_type"), str):
        out["scheduler_type"] = float(cs.SCHEDULERS.index(out["scheduler_type"]))
    return out


def train(config: SSMStabilityConfig, hp: dict, key: jax.Array, spec: cs.SSMSpec | None = None) -> dict:
    """One run of recipe ``hp`` (numbers may be traced; ``scheduler_type`` an index into SCHEDULERS).

    Returns scalars (``initial_loss``, ``final_loss`` = task cross-entropy on the data at the end, ``max_lr`` the
    largest learning rate the run used, ``max_unitary_dev``, ``max_residual``, ``max_iterations``, ``max_state_norm``)
    and traces per logged row (``loss_trace``, ``dev_trace``, ``lr_trace``).
    """
    spec = spec or spec_of(config)
    hp = _numeric(hp)
    k_data, k_init, k_order = jax.random.split(key, 3)
    solver_index = hp.get("solver_index")
    problem = cs.make_problem(spec, k_data, unitary_lambda=hp["unitary_lambda"], tol=config.solver_tol,
                              solver_index=solver_index)
    params = problem.init(k_init)
    schedule = lambda t: cs.lr_multiplier(t, kind=hp["scheduler_type"], warmup=hp["warmup_steps"],
                                          horizon=config.steps)
    res = loop.fit(problem.loss, params, cs.optimizer(hp["learning_rate"], hp["weight_decay"]),
                   steps=config.train_steps, key=k_order, data=problem.data, batch_size=config.batch_size,
                   schedule=schedule, clip=hp["gradient_clip"], log_every=config.log_every,
                   metrics_fn=problem.metrics, groups="global")  # per-layer grad-norm stats are unused and
    # double the compile time of this program (measured: ~24 s vs ~11 s on a loaded 2-core machine)
    # initial and final loss through one vmapped forward pass: one copy of the model in the program, not two
    ce = jax.vmap(lambda p: cs.cross_entropy(cs.apply(p, problem.data["tokens"], spec, config.solver_tol,
                                                      solver_index)[0], problem.data["targets"]))
    ce_init, ce_final = ce(jax.tree.map(lambda a, b: jnp.stack([a, b]), params, res.params))
    t = jnp.arange(config.train_steps)
    lr_used = hp["learning_rate"] * jax.vmap(schedule)(t)
    dev = res.trace["metrics/unitary_dev"].max(axis=-1)
    return {"initial_loss": ce_init, "final_loss": ce_final, "max_lr": lr_used.max(),
            "max_unitary_dev": dev.max(), "final_unitary_dev": dev[-1],
            "max_residual": res.trace["metrics/residual"].max(),
            "max_iterations": res.trace["metrics/iterations"].max(),
            "max_state_norm": res.trace["metrics/state_norm"].max(), "skipped": res.skipped_steps.astype(jnp.float32),
            "loss_trace": res.trace["metrics/ce"], "dev_trace": dev, "lr_trace": lr_used[::config.log_every]}


TRACES = ("loss_trace", "dev_trace", "lr_trace")


def switches(config: SSMStabilityConfig) -> list[ablation.Switch]:
    """The changes from the baseline recipe to this one, as ablation switches (only keys whose values differ)."""
    if config.baseline == "none":
        return []
    old, new = _numeric(NOTE_RECIPES[config.baseline]), _numeric(recipe_of(config))
    return [ablation.Switch(k, float(old[k]), float(new[k]), doc=f"{k}: {NOTE_RECIPES[config.baseline][k]} → "
                            f"{recipe_of(config)[k]}") for k in RECIPE_KEYS if float(old[k]) != float(new[k])]


# ------------------------------------------------------------------------------------------------ experiments


ARMS = ("wsd", "cosine", "constant", "emergency_fallback")


def _solver_lambda(config: SSMStabilityConfig) -> float:
    # experiment 2 compares lambda = 0 with the recipe's lambda, or the note's 0.01 where the recipe has none
    return config.unitary_lambda if config.unitary_lambda > 0 else 0.01


def recipe_parts(config: SSMStabilityConfig) -> list[tuple[str, dict[str, list], list[dict]]]:
    """Every run of the recipe's own model (complex, ``config.solver``) as ``(part, axes, recipes)``.

    ``recipes`` lists one numeric recipe per combination of ``axes`` in grid order (first axis slowest): the
    factorial (one 0/1 axis per switch), the complex half of the LR grid, the scheduler arms and the recipe's own
    solver with and without ``unitary_lambda``. They differ only in traced numbers, so one program runs them all.
    """
    base = _numeric(recipe_of(config))
    sw = switches(config)
    if sw:
        bits = [np.unravel_index(j, (2,) * len(sw)) for j in range(2 ** len(sw))]
        factorial = [{**base, **{s.name: s.changed if b[i] else s.baseline for i, s in enumerate(sw)}} for b in bits]
        parts = [("factorial", {s.name: [0, 1] for s in sw}, factorial)]
    else:  # nothing differs: the recipe alone
        parts = [("factorial", {"recipe": ["this"]}, [base])]
    parts.append(("lr_complex", {"learning_rate": list(config.lr_grid)},
                  [{**base, "learning_rate": lr} for lr in config.lr_grid]))
    arms = [{**base, "scheduler_type": float(i)} for i in range(3)] + [_numeric(NOTE_RECIPES["emergency_fallback"])]
    parts.append(("schedulers", {"arm": list(range(len(ARMS)))}, arms))
    if config.solver in config.solvers:
        lams = [0.0, _solver_lambda(config)]
        parts.append(("solvers_own", {"solver": [config.solver], "unitary_lambda": lams},
                      [{**base, "unitary_lambda": lam} for lam in lams]))
    return parts


def recipe_grid(config, progress) -> dict[str, Any]:
    """The parts of :func:`recipe_parts` as one ``run_grid`` over a recipe index (one compiled program).

    Returns the parts as GridResults (the factorial as an :class:`~optlab.ablation.Ablation`); an interrupted grid
    comes back whole (``{"recipes": grid}``, incomplete) so that no part is read from missing cells.
    """
    parts = recipe_parts(config)
    recipes = [r for _, _, rs in parts for r in rs]
    table = {k: jnp.asarray([float(r[k]) for r in recipes], jnp.float32) for k in RECIPE_KEYS}

    def cell(hp, key):
        i = jnp.asarray(hp["recipe"], jnp.int32)
        return train(config, {k: v[i] for k, v in table.items()}, key)

    grid = run_grid(cell, {"recipe": list(range(len(recipes)))}, seeds=config.seeds, progress=progress,
                    label="ssm recipes (factorial + lr grid + schedulers + own solver)")
    return split_parts(grid, parts, switches(config), _numeric(recipe_of(config)))


def split_parts(grid, parts, sw, base) -> dict[str, Any]:
    """A grid over ``recipe`` (× seed) cut back into the experiments of ``parts`` (see :func:`recipe_grid`)."""
    if not grid.complete:
        return {"recipes": grid}
    out, first = {}, 0
    for name, axes, rs in parts:
        out[name] = grid_parts.part(grid, first, axes)
        first += len(rs)
    if sw:
        out["factorial"] = ablation.Ablation(out["factorial"], tuple(sw), base)
    return out


def solver_grid(config, progress, own=None):
    """Training under each of ``config.solvers`` with and without ``unitary_lambda``.

    The recipe's own solver comes from :func:`recipe_grid` (``own``); the others run here as one program with the
    solver a traced index (``lax.switch``). Without ``own`` every solver runs here.
    """
    base = _numeric(recipe_of(config))
    others = [s for s in config.solvers if own is None or s != config.solver]
    grids = [] if own is None else [own]
    if others:
        spec = spec_of(config, solver_choices=tuple(others))

        def cell(hp, key):
            return train(config, {**base, "unitary_lambda": hp["unitary_lambda"],
                                  "solver_index": hp["solver_index"]}, key, spec)

        grid = run_grid(cell, {"solver_index": list(range(len(others))),
                               "unitary_lambda": [0.0, _solver_lambda(config)]},
                        seeds=config.seeds, progress=progress, label="ssm solvers x unitary_lambda")
        if not grid.complete:
            return grid
        grids.append(grid_parts.relabel(grid, "solver_index", "solver", others))
    return grid_parts.concat(grids, "solver", list(config.solvers))


def solve_sweep(config: SSMStabilityConfig, seeds: int | None = None) -> list[dict]:
    """The Cayley solve alone over solver × iterations × tolerance, on each seed's initial propagators.

    The exact solve's deviation is the model's own (H's structure and float rounding); any excess is the solver's.
    """
    # One compiled program per solver (per Krylov dimension for GMRES, a shape): hermitian, iterations and
    # tolerance are vmapped axes, the iteration budget a traced limit under one scan of max(sweep_iters) steps.
    seeds = seeds or config.seeds
    spec = spec_of(config)
    # the P each seed's training run starts from (train's key split), drawn in one program
    init_p = lambda s: cs.init_params(jax.random.split(jax.random.key(s), 3)[1], spec)["layers"]["P"]  # noqa: E731
    ps = jax.jit(jax.vmap(init_p))(jnp.arange(seeds))
    ps = ps.reshape(-1, spec.state, spec.state)
    gs = jnp.stack([jax.vmap(lambda p, h=h: cs.generator(p, h))(ps) for h in (True, False)])  # (2, cells, n, n)
    rows = []
    for solver in ("exact", "cg", "cg_normal", "bicgstab", "gmres"):
        budgets = [(1,)] if solver == "exact" else ([(i,) for i in config.sweep_iters] if solver == "gmres"
                                                    else [tuple(config.sweep_iters)])
        tols = (config.solver_tol,) if solver == "exact" else tuple(config.sweep_tols)
        for group in budgets:
            static_iters = max(group) if solver != "gmres" else group[0]
            combos = [(h, i, t) for h in (0, 1) for i in group for t in tols]
            lim = jnp.asarray([c[1] for c in combos], jnp.int32)
            tol = jnp.asarray([c[2] for c in combos], jnp.float32)
            g = gs[jnp.asarray([c[0] for c in combos])]
            fn = jax.vmap(jax.vmap(lambda g, l, t, s=solver, i=static_iters: _solve_stats(g, s, i, t, l),
                                   (0, None, None)))
            out = jax.tree.map(np.asarray, jax.jit(fn)(g, lim, tol))
            for c, (h, i, t) in enumerate(combos):
                rows.append({"hermitian": h == 0, "solver": solver, "iters": i, "tol": t,
                             **{k: float(np.median(v[c])) for k, v in out.items()},
                             "max_unitary_dev": float(np.max(out["unitary_dev"][c]))})
    order = {"exact": 0, "cg": 1, "cg_normal": 2, "bicgstab": 3, "gmres": 4}
    tol_order = {t: i for i, t in enumerate(config.sweep_tols)}  # the config's order, as the claims read it
    return sorted(rows, key=lambda r: (not r["hermitian"], order[r["solver"]], r["iters"], tol_order.get(r["tol"], 0)))


def _solve_stats(g, solver, iters, tol, limit=None):
    u, info = cs.cayley(g, solver=solver, iters=iters, tol=tol, limit=None if solver in ("exact", "gmres") else limit)
    return {"residual": info.residual, "iterations": info.iterations, "unitary_dev": cs.unitary_deviation(u)}


def twin_grid(config, progress):
    """The LR grid for the real-valued twin (same real parameter count to rounding): its own program (shapes)."""
    base = _numeric(recipe_of(config))
    twin = spec_of(config, complex_valued=False, state=cs.twin_state(spec_of(config)))
    return run_grid(lambda hp, key: train(config, {**base, "learning_rate": hp["learning_rate"]}, key, twin),
                    {"learning_rate": list(config.lr_grid)}, seeds=config.seeds, progress=progress,
                    label="ssm lr grid (real twin)")


def run(config: SSMStabilityConfig, *, progress: bool = True, run_dir: Path | None = None) -> StudyResult:
    """Run lab note 003's study; an interrupted grid stops it with ``complete=False`` and no claims.

    Three compiled training programs: every run of the recipe's model (:func:`recipe_grid`), the other solvers
    (:func:`solver_grid`) and the real twin (:func:`twin_grid`); then the solve sweep (small programs).

    Example: ``result = run(SSMStabilityConfig.quick(), progress=False)``.
    """
    from optlab.studies import ssm_stability_claims as claims  # claims and figures: the sibling file

    del run_dir  # no checkpoints: runs are short
    config.validate()
    start = time.perf_counter()
    title = "Complex Cayley SSM stability (lab note 003): six changes, unitarity and the solver, measured"
    parts = {}
    stages = (("recipes", lambda: parts.update(recipe_grid(config, progress)) or parts),
              ("solvers", lambda: solver_grid(config, progress, parts.get("solvers_own"))),
              ("twin", lambda: twin_grid(config, progress)))
    total = (2 ** len(switches(config)) + 2 * len(config.solvers) + 2 * len(config.lr_grid) + len(ARMS)) * config.seeds
    drop = lambda r: {k: v for k, v in r.items() if k not in TRACES}  # noqa: E731
    run = run_stages(stages, row=drop)
    if run.stopped is not None:
        return StudyResult("ssm-stability", title, dataclasses.asdict(config), [interrupted_section(run)],
                           rows=run.rows, complete=False, cells_done=run.done, cells_total=total,
                           seconds=time.perf_counter() - start)
    lr = grid_parts.concat([grid_parts.with_axis(parts["lr_complex"], "model", "complex"),
                            grid_parts.with_axis(run.results["twin"], "model", "real twin")], "model")
    results = {"factorial": parts["factorial"], "solvers": run.results["solvers"], "lr_grid": lr,
               "schedulers": parts["schedulers"]}
    # the flat table per experiment (the recipes program's cells appear once, under the experiment they serve)
    rows = [{"grid": name, **drop(r)} for name, out in results.items()
            for r in (out.grid if isinstance(out, ablation.Ablation) else out).to_rows()]
    sweep = solve_sweep(config)
    rows += [{"grid": "solve_sweep", **r} for r in sweep]
    sections = claims.sections(config, results, sweep)
    return StudyResult("ssm-stability", title, dataclasses.asdict(config), sections, rows=rows,
                       seconds=time.perf_counter() - start, cells_done=run.done, cells_total=run.done)


STUDY = Study("ssm-stability", "lab note 003: complex Cayley SSM, six optimizer changes (factorial, Shapley), "
              "unitarity drift vs the solver", SSMStabilityConfig, run)

__all__ = ["ARMS", "NOTE_RECIPES", "RECIPE_KEYS", "STUDY", "SSMStabilityConfig", "recipe_grid", "recipe_of",
           "recipe_parts", "run", "solve_sweep", "solver_grid", "spec_of", "switches", "train", "twin_grid"]
