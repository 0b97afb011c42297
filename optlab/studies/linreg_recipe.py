"""Lab note 002: the linear-regression "recipe" (ten changes and a float16 freeze), measured and attributed exactly.

One linear unit learns noise-free ``y = 2x + 1`` (``x ~ N(0, 1)``, N = 1000, batch 32, Adam). The note's baseline is
lr 1e-3, 30 epochs, 5 warm-up epochs, cosine decay, patience 10, min_improvement 1e-6, no clipping. Each of its ten
changes, plus the initialisation its scripts also changed ("init"), is a :class:`optlab.ablation.Switch`; logging is
shown to change no number (bit-identical runs) and left out, and the other ten run as a full 2^10 factorial × seeds,
from which the Shapley values, interactions, cumulative paths and leave-one-out are read. Beside every measured loss
the study prints the closed-form loss at the run's ``(W, b)`` (:mod:`optlab.problems.linreg_recipe`).

Choices where the note leaves a setting open (the report repeats them):

- schedule per *epoch*, as the note's ``get_lr_schedule``: ``lr·(e+1)/warmup`` for epoch ``e < warmup``, then a
  half cosine to 0 that ends at ``decay_epochs`` (and stays 0); "slow cosine" moves that end from 30 to 100 epochs.
- early stopping per epoch, as the note's (PyTorch) loop almost surely does: once per epoch on the epoch-mean
  training loss (:class:`~optlab.engine.loop.EarlyStop` with ``every`` = steps per epoch), patience in epochs,
  min_improvement its ``min_delta``. (Counting ``patience × steps per epoch`` steps on per-batch losses let a lucky
  low batch set the best and stopped the baseline near epoch 15 of its 30.)
- clip: global-norm clipping of the gradient at 1.0 (DeepSpeed's ``gradient_clipping``); baseline: none.
- "explicit Adam" (0.9, 0.999, 1e-8, wd 0) is PyTorch's ``torch.optim.Adam`` default, i.e. the baseline's Adam:
  the switch exists, and the study shows it changes nothing.
- "init": PyTorch default ``U(-1, 1)`` for weight and bias → Xavier-uniform weight, bias 0.5. The fixed seed of the
  "enhanced" run is not a switch: a fixed seed is one draw of the seed distribution the study averages over.
- precision arms (the float16 freeze) run the baseline recipe, every step logged: pure float16; mixed precision
  (float16 compute, float32 master weights and moments); each of these with DeepSpeed's dynamic loss scaling
  (:class:`~optlab.engine.precision.DynamicLossScale`: 2^16, window 1000, hysteresis 2, min 1); bfloat16, float32,
  and float64 inside ``jax.enable_x64(True)``. A step that leaves W unchanged is either skipped (non-finite
  gradient / update) or applied and rounded away (W's update < ½ ulp of W); the verdict counts both.
- each seed draws its own data, start and batch order (``jax.random.split(key, 3)``); losses are the full-data MSE
  at the final parameters (the note's "Final Loss" does not say which loss it is).

Example: ``result = run(LinregRecipeConfig.quick(), progress=False); result.claims[0].verdict``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _atomic, ablation
from optlab.engine import loop
from optlab.engine.grid import run_grid
from optlab.engine.precision import DynamicLossScale
from optlab.problems import linreg_recipe as lp
from optlab.studies.base import Study, StudyResult
from optlab.studies.config import Settings, setting
from optlab.studies.stages import interrupted_section, run_stages

# The switches in the note's order (method 1..9, then init); "logging" (method 10) is checked apart.
SWITCHES = ("lr", "epochs", "warmup", "slow_cosine", "shuffle", "patience", "min_improvement", "clip", "adam", "init")
ALL_SWITCHES = SWITCHES + ("logging",)
STATIC = ("epochs", "shuffle", "logging")  # step counts and the data order are program structure
BASE_ADAM = (0.9, 0.999, 1e-8, 0.0)  # torch.optim.Adam defaults: (beta1, beta2, eps, weight_decay)
EXPLICIT_ADAM = (0.9, 0.999, 1e-8, 0.0)  # method 9, as the note's ds_config writes it
SWITCH_DOCS = {
    "lr": "method 1: learning rate 1e-3 → 1e-2", "epochs": "method 2: 30 → 100 epochs",
    "warmup": "method 3: warm-up 5 → 10 epochs", "slow_cosine": "method 4: cosine ends at epoch 30 → 100",
    "shuffle": "method 5: shuffle on → off", "patience": "method 6: patience 10 → 20 epochs",
    "min_improvement": "method 7: min_improvement 1e-6 → 1e-7", "clip": "method 8: gradient clipping none → 1.0",
    "adam": "method 9: explicit Adam (0.9, 0.999, 1e-8, wd 0)", "init": "scripts: init U(-1,1) → Xavier, bias 0.5",
    "logging": "method 10: a trace row every epoch → every 10 epochs",
}
PRECISION_ARMS = ("float16", "float16+scale", "mixed16", "mixed16+scale", "bfloat16", "float32", "float64")
ARM_DOCS = {
    "float16": "pure float16: params, data, gradients and Adam moments (eps 1e-8 rounds to 0)",
    "float16+scale": "pure float16 with DeepSpeed's dynamic loss scaling (2^16, window 1000, hysteresis 2, min 1)",
    "mixed16": "float16 compute, float32 master weights and Adam moments",
    "mixed16+scale": "mixed16 with DeepSpeed's dynamic loss scaling (its fp16 engine's default)",
    "bfloat16": "pure bfloat16 (reference)", "float32": "float32 (reference)",
    "float64": "float64 (reference; run under jax.enable_x64)",
}


@dataclass(frozen=True)
class LinregRecipeConfig(Settings):
    """Sizes, the (baseline, changed) value of each numeric switch, and which switches the factorial varies."""

    n: int = setting(1000, range=(1, None), doc="examples (x ~ N(0, 1), y = 2x + 1)")
    batch_size: int = setting(32, range=(1, None), doc="mini-batch size (the last partial batch is dropped)")
    seeds: int = setting(16, range=(2, None), doc="seeds per recipe (each: its own data, start, batch order)")
    switches: tuple[str, ...] = setting(SWITCHES, choices=SWITCHES,
                                        doc="switches the factorial varies; the others stay at their baseline")
    lr: tuple[float, ...] = setting((1e-3, 1e-2), range=(0, None), bounds="(]", doc="method 1: baseline, changed")
    epochs: tuple[int, ...] = setting((30, 100), range=(1, None), doc="method 2: baseline, changed")
    warmup: tuple[int, ...] = setting((5, 10), range=(1, None), doc="method 3: warm-up epochs, baseline, changed")
    decay_epochs: tuple[int, ...] = setting((30, 100), range=(1, None),
                                            doc="method 4: epoch where the cosine reaches 0, baseline, changed")
    patience: tuple[int, ...] = setting((10, 20), range=(1, None), doc="method 6: patience in epochs")
    min_improvement: tuple[float, ...] = setting((1e-6, 1e-7), range=(0, None), doc="method 7: baseline, changed")
    clip: float = setting(1.0, range=(0, None), bounds="(]", doc="method 8: clipping threshold (baseline: none)")
    log_epochs: int = setting(10, range=(1, None), doc="method 10: epochs per trace row when logging is switched")
    n_boot: int = setting(1000, range=(10, None), doc="seed-bootstrap resamples of the Shapley CIs")
    grid_lrs: tuple[float, ...] = setting((1e-3, 3e-3, 1e-2, 3e-2, 1e-1), range=(0, None), bounds="(]",
                                          doc="lr axis of the lr x epochs grid (baseline recipe otherwise)")
    grid_epochs: tuple[int, ...] = setting((30, 100), range=(1, None), doc="epochs axis of the lr x epochs grid")
    precision_arms: tuple[str, ...] = setting(PRECISION_ARMS, choices=PRECISION_ARMS,
                                              doc="dtypes of the float16-freeze experiment (baseline recipe)")
    precision_seeds: int = setting(16, range=(1, None), doc="seeds per precision arm")

    @classmethod
    def quick(cls) -> "LinregRecipeConfig":
        # 4 switches (16 recipes, one program) x 4 seeds; the other six stay at the baseline
        return cls(n=320, seeds=4, switches=("lr", "warmup", "clip", "init"), n_boot=100, grid_lrs=(1e-3, 1e-2),
                   grid_epochs=(10, 30), precision_seeds=4,
                   precision_arms=("float16", "mixed16+scale", "bfloat16", "float32"))  # one program per arm

    def check(self) -> None:
        for name in ("lr", "epochs", "warmup", "decay_epochs", "patience", "min_improvement"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} must be two values 'baseline,changed', got {getattr(self, name)!r}")
        if self.batch_size > self.n:
            raise ValueError(f"batch_size must be <= n={self.n}, got {self.batch_size}")
        if len(set(self.switches)) != len(self.switches):
            raise ValueError(f"switches must be distinct, got {self.switches!r}")
        for epochs in (*self.epochs, *self.grid_epochs):
            if epochs % self.log_epochs:
                raise ValueError(f"log_epochs={self.log_epochs} must divide every epoch count, got {epochs}")

    @property
    def per_epoch(self) -> int:
        return self.n // self.batch_size


# ------------------------------------------------------------------------------------------------ the recipe


def make_switches(config: LinregRecipeConfig, names=SWITCHES) -> list[ablation.Switch]:
    """The note's changes as ablation switches (baseline → changed), in the note's order."""
    values = {
        "lr": config.lr, "epochs": config.epochs, "warmup": [float(v) for v in config.warmup],
        "slow_cosine": [float(v) for v in config.decay_epochs], "shuffle": (True, False),
        "patience": [float(v) for v in config.patience], "min_improvement": config.min_improvement,
        "clip": (math.inf, config.clip), "adam": (0.0, 1.0), "init": (0.0, 1.0), "logging": (1, config.log_epochs),
    }
    return [ablation.Switch(name, values[name][0], values[name][1], static=name in STATIC, doc=SWITCH_DOCS[name])
            for name in names]


def baseline(config: LinregRecipeConfig) -> dict[str, Any]:
    """The baseline recipe: every switch at its baseline value (a ``recipe`` for :func:`recipe_fit`)."""
    return {s.name: s.baseline for s in make_switches(config, ALL_SWITCHES)}


def recipe(config: LinregRecipeConfig, on=()) -> dict[str, Any]:
    """The recipe with exactly the switches in ``on`` changed. Example: ``recipe(config, ["lr", "epochs"])``."""
    bad = sorted(set(on) - set(ALL_SWITCHES))
    if bad:
        raise ValueError(f"unknown switch {bad[0]!r}; allowed: {', '.join(ALL_SWITCHES)}")
    return {s.name: s.changed if s.name in on else s.baseline for s in make_switches(config, ALL_SWITCHES)}


def schedule_fn(per_epoch: int, warmup: Any, decay_epochs: Any):
    """The note's per-epoch multiplier: ``(e+1)/warmup`` for ``e < warmup``, then a half cosine that is 0 from
    ``decay_epochs`` on (``e`` = step // per_epoch). ``warmup`` and ``decay_epochs`` may be traced."""
    def multiplier(step):
        epoch = (step // per_epoch).astype(jnp.float32)
        span = jnp.maximum(decay_epochs - warmup, 1.0)
        progress = jnp.clip((epoch - warmup) / span, 0.0, 1.0)
        return jnp.where(epoch < warmup, (epoch + 1.0) / warmup, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    return multiplier


def _concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def precision_kwargs(arm: str) -> dict[str, Any]:
    """The ``fit`` keywords of a precision arm (one of :data:`PRECISION_ARMS`, see :data:`ARM_DOCS`).

    Example: ``precision_kwargs("mixed16")`` is ``{"dtype": "float32", "compute_dtype": "float16"}``.
    """
    if arm not in PRECISION_ARMS:
        raise ValueError(f"precision arm must be one of {', '.join(PRECISION_ARMS)}; got {arm!r}")
    base = arm.removesuffix("+scale")
    kwargs = {"dtype": "float32", "compute_dtype": "float16"} if base == "mixed16" else {"dtype": base}
    if arm.endswith("+scale"):  # DeepSpeed's fp16 defaults: 2^16, window 1000, hysteresis 2, min scale 1
        kwargs["loss_scale"] = DynamicLossScale(initial=2.0**16, window=1000, hysteresis=2, minimum=1.0)
    return kwargs


def recipe_fit(config: LinregRecipeConfig, hp: dict, key: jax.Array, *, precision: str = "float32",
               every_step: bool = False, trace_updates: bool = False):
    """One training run of the recipe ``hp`` (a :func:`recipe` dict; numbers may be traced).

    Returns ``(FitResult, data, start params)``. The trace has a row per ``hp["logging"]`` epochs with the
    parameters as ``metrics/w``, ``metrics/b`` (before that row's step); ``every_step`` gives one row per step
    instead (gradient-norm and frozen-step diagnostics). ``precision`` is a :data:`PRECISION_ARMS` name (a plain
    dtype name is its pure arm; "float64" needs x64 on); ``trace_updates`` adds ``fit``'s update-vs-½-ulp and
    finite-moment rows.

    Example: ``res, data, p0 = recipe_fit(config, recipe(config), jax.random.key(0))``.
    """
    per_epoch = config.per_epoch
    k_data, k_init, k_order = jax.random.split(key, 3)
    data = lp.make_data(k_data, config.n)
    p0 = lp.init_params(k_init, hp["init"])
    explicit = jnp.asarray(hp["adam"], jnp.float32) > 0.5
    b1, b2, eps, wd = (jnp.where(explicit, e, b) for e, b in zip(EXPLICIT_ADAM, BASE_ADAM))
    optimizer = optax.adamw(hp["lr"], b1=b1, b2=b2, eps=eps, weight_decay=wd)
    patience = hp["patience"]  # in epochs: the early-stop test runs once per epoch on the epoch-mean loss
    if _concrete(patience):
        patience = int(patience)
    clip = hp["clip"]
    if _concrete(clip) and not np.isfinite(clip):
        clip = None  # a direct run: no clipping (inf, the traced baseline, leaves every gradient as it is)
    steps = int(hp["epochs"]) * per_epoch
    result = loop.fit(lp.loss, p0, optimizer, steps=steps, key=k_order, data=data, batch_size=config.batch_size,
                      shuffle=bool(hp["shuffle"]), schedule=schedule_fn(per_epoch, hp["warmup"], hp["slow_cosine"]),
                      clip=clip, early_stop=loop.EarlyStop(patience, hp["min_improvement"], every=per_epoch),
                      log_every=1 if every_step else per_epoch * int(hp["logging"]), metrics_fn=lambda p: dict(p),
                      trace_updates=trace_updates, **precision_kwargs(precision))
    return result, data, p0


def outcome(config: LinregRecipeConfig, result, data, p0) -> dict[str, jax.Array]:
    """The per-run scalars every table uses: losses (measured and closed form), W, b, errors, stopping epoch."""
    params = jax.tree.map(lambda v: v.astype(jnp.float32), result.params)
    data32 = jax.tree.map(lambda v: v.astype(jnp.float32), data)
    m1, m2 = lp.moments(data32["x"])
    w, b = params["w"], params["b"]
    initial = lp.loss(p0, data32)
    final = lp.loss(params, data32)
    return {"final_loss": final, "closed_form_loss": lp.closed_form_loss(w, b, m1, m2), "initial_loss": initial,
            "reduction_pct": 100.0 * (1.0 - final / initial), "w": w, "b": b,
            "w_err_pct": 100.0 * jnp.abs(w - lp.TRUE_W) / lp.TRUE_W,
            "b_err_pct": 100.0 * jnp.abs(b - lp.TRUE_B) / lp.TRUE_B,
            "param_dist": jnp.sqrt(jnp.square(w - lp.TRUE_W) + jnp.square(b - lp.TRUE_B)),
            "w0": p0["w"], "b0": p0["b"],
            "stopped_epoch": result.stopped_at.astype(jnp.float32) / config.per_epoch,
            "skipped_steps": result.skipped_steps.astype(jnp.float32)}


def make_cell(config: LinregRecipeConfig):
    """``cell(hp, key) -> outcome scalars`` for :func:`optlab.ablation.factorial` and :func:`run_grid`."""
    def cell(hp, key):
        return outcome(config, *recipe_fit(config, hp, key))
    return cell


# ------------------------------------------------------------------------------------------------ experiments


def factorial(config: LinregRecipeConfig, progress: bool = True) -> ablation.Ablation:
    """The 2^k factorial of the config's switches × seeds; switches not varied stay at baseline."""
    base = {k: v for k, v in baseline(config).items() if k not in config.switches}
    return ablation.factorial(make_cell(config), make_switches(config, config.switches), seeds=config.seeds,
                              base=base, progress=progress, label="linreg-recipe factorial")


def logging_check(config: LinregRecipeConfig, seeds: int = 2) -> dict[str, Any]:
    """Runs the full recipe with logging on and off: whether final params, best loss and stop step are bit-identical."""
    full = recipe(config, SWITCHES)
    out = {}
    for every in (1, config.log_epochs):
        res = [recipe_fit(config, {**full, "logging": every}, jax.random.key(s))[0] for s in range(seeds)]
        out[every] = [(np.asarray(r.params["w"]), np.asarray(r.params["b"]), np.asarray(r.best_loss),
                       np.asarray(r.stopped_at)) for r in res]
    identical = all(np.array_equal(a, b) for x, y in zip(out[1], out[config.log_epochs]) for a, b in zip(x, y))
    return {"identical": identical, "seeds": seeds, "rows": {k: int(full["epochs"]) // k for k in out}}


def timelines(config: LinregRecipeConfig, names=("baseline", "full")) -> dict[str, dict[str, np.ndarray]]:
    """Per-step traces (W, b, loss, gradient norm) of the baseline and full recipe over the seeds, vmapped."""
    out = {}
    for name in names:
        hp = baseline(config) if name == "baseline" else recipe(config, SWITCHES)

        def one(key, hp=hp):
            res, data, p0 = recipe_fit(config, hp, key, every_step=True)
            m1, m2 = lp.moments(data["x"])
            return {"w_trace": res.trace["metrics/w"], "b_trace": res.trace["metrics/b"],
                    "grad_norm": res.trace["grad_norm"],
                    "m1": m1, "m2": m2,
                    "batch_loss": res.trace["loss"], "stopped_at": res.stopped_at, **outcome(config, res, data, p0)}

        keys = jnp.stack([jax.random.key(s) for s in range(config.seeds)])
        out[name] = jax.tree.map(np.asarray, jax.jit(jax.vmap(one))(keys))
    return out


def lr_epochs_grid(config: LinregRecipeConfig, progress: bool = True):
    """Baseline recipe over lr (dynamic) × epochs (static), seeds innermost."""
    cell = make_cell(config)
    base = baseline(config)
    return run_grid(lambda hp, key: cell({**base, **hp}, key), {"lr": list(config.grid_lrs),
                    "epochs": list(config.grid_epochs)}, seeds=config.seeds, static=["epochs"], progress=progress,
                    label="linreg-recipe lr x epochs")


def run(config: LinregRecipeConfig, *, progress: bool = True, run_dir: Path | None = None) -> StudyResult:
    """Run lab note 002's study: logging check, factorial + attribution, claims, precision arms, lr × epochs grid.

    An interrupted grid stops the study: the finished rows come back with ``complete=False`` and no claim from a
    partial grid.

    Example: ``result = run(LinregRecipeConfig.quick(), progress=False)``.
    """
    from optlab.studies import linreg_precision as lpr  # precision arms and claims: sibling files
    from optlab.studies import linreg_recipe_claims as lc

    # no checkpoints (a run is minutes); run_dir receives the precision arms' per-step log
    config.validate()
    start = time.perf_counter()
    total = 2 ** len(config.switches) * config.seeds
    title = "Linear-regression recipe (lab note 002): ten changes, a float16 freeze, exact attribution"
    stages = (("factorial", lambda: factorial(config, progress)),
              ("precision", lambda: lpr.precision_grid(config, progress)),
              ("lr_epochs", lambda: lr_epochs_grid(config, progress)))
    run = run_stages(stages)
    rows, done, results = run.rows, run.done, run.results
    if run.stopped is not None:
        return StudyResult("linreg-recipe", title, dataclasses.asdict(config), [interrupted_section(run)], rows=rows,
                           complete=False, cells_done=done, cells_total=total, seconds=time.perf_counter() - start)
    if run_dir is not None:
        _atomic.write_csv(Path(run_dir) / "precision_steps.csv", lpr.precision_steps(results["precision"]))
    sections = lc.sections(config, results["factorial"], results["precision"], results["lr_epochs"],
                           logging_check(config), timelines(config))
    return StudyResult("linreg-recipe", title, dataclasses.asdict(config), sections, rows=rows,
                       seconds=time.perf_counter() - start, cells_done=done, cells_total=done)


STUDY = Study("linreg-recipe", "lab note 002: ten recipe changes for y = 2x + 1 (full factorial, exact Shapley) "
              "and the float16 freeze", LinregRecipeConfig, run)

__all__ = ["ALL_SWITCHES", "ARM_DOCS", "PRECISION_ARMS", "STUDY", "SWITCHES", "LinregRecipeConfig", "baseline",
           "factorial", "logging_check", "make_cell", "make_switches", "outcome", "precision_kwargs", "recipe", "recipe_fit", "run", "schedule_fn", "timelines"]
