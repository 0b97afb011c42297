"""Lab note 002's precision arms: the baseline linear-regression recipe in float16 / mixed / bfloat16 / float32 /
float64, every step logged, and the counts that name why W freezes (skipped steps vs updates rounded below ½ ulp).

The recipe itself (config, ``recipe_fit``, ``outcome``, ``precision_kwargs``) lives in
:mod:`optlab.studies.linreg_recipe`; this module is the arm grid and its per-step log.

Example: ``precision_grid(LinregRecipeConfig.quick(), progress=False)["float16"].outputs["w_frozen_steps"]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optlab.engine.grid import run_grid
from optlab.studies.linreg_recipe import LinregRecipeConfig, baseline, outcome, recipe_fit

PRECISION_TRACES = ("loss", "w", "b", "w_changed", "skipped", "loss_scale", "update_ulp_ratio", "moments_finite",
                    "live")  # the per-step rows of every precision-arm run (precision_steps.csv)


def precision_cell(config: LinregRecipeConfig):
    """``cell({"arm": name}, key)``: the baseline recipe in one precision arm, logged every step.

    Per step (arrays of length steps, ``trace/<name>`` for :data:`PRECISION_TRACES`): loss, W and b before the
    step, whether the step changed W, whether it was skipped, the loss scale it used (NaN without a scaler),
    ``|applied update| / (ulp(param) / 2)`` (max over W and b), whether the Adam moments were finite after it,
    and whether the run was still live (before its early stop). Scalars: :func:`outcome` plus the counts over live
    steps that name the freezing mechanism: ``w_frozen_steps`` (W unchanged), ``skipped_live`` (step skipped for
    a non-finite gradient or update), ``sub_ulp_steps`` (not skipped, every update entry < ½ ulp: rounds away),
    ``nonfinite_moment_steps``, ``frozen_skipped`` / ``frozen_rounded`` (W unchanged because the step was skipped /
    applied but W's update was below ½ ulp of W), the loss scale's minimum and final value, ``first_w_change``.

    Example: ``run_grid(precision_cell(config), {"arm": ["float16"]}, seeds=2, static=["arm"])``.
    """
    per_epoch = config.per_epoch
    base = baseline(config)

    def cell(hp, key):
        res, data, p0 = recipe_fit(config, base, key, precision=hp["arm"], every_step=True, trace_updates=True)
        tr = res.trace
        steps = tr["loss"].shape[0]
        w_before = tr["metrics/w"]
        # the trace holds params before each step, so the final params close the "after" side of the last step
        w_after = jnp.concatenate([w_before[1:], jnp.reshape(res.params["w"], (1,)).astype(w_before.dtype)])
        changed = w_after != w_before
        live = jnp.arange(steps) < res.stopped_at
        skipped = tr["skipped"] & live
        sub_ulp = live & ~tr["skipped"] & (tr["update_ulp_ratio"] < 1.0)
        bad_moments = live & ~tr["opt_state_finite"]
        scale = tr["loss_scale"] if "loss_scale" in tr else jnp.full((steps,), jnp.nan, jnp.float32)
        live_scale = jnp.where(live, scale, jnp.inf)
        count = lambda mask: jnp.sum(mask).astype(jnp.float32)  # noqa: E731
        traces = {"loss": tr["loss"], "w": w_before, "b": tr["metrics/b"], "w_changed": changed, "skipped": skipped,
                  "loss_scale": scale, "update_ulp_ratio": tr["update_ulp_ratio"],
                  "moments_finite": tr["opt_state_finite"], "live": live}
        return {**outcome(config, res, data, p0),
                **{f"trace/{k}": v.astype(jnp.float32) for k, v in traces.items()},
                "live_steps": count(live), "w_frozen_steps": count(live & ~changed),
                "skipped_live": count(skipped), "sub_ulp_steps": count(sub_ulp),
                "frozen_sub_ulp": count(live & ~changed & sub_ulp), "frozen_skipped": count(live & ~changed & skipped),
                "frozen_rounded": count(live & ~changed & ~skipped),  # applied, yet W's update rounded away
                "nonfinite_moment_steps": count(bad_moments),
                "min_loss_scale": jnp.where(jnp.isnan(scale[0]), jnp.nan, jnp.min(live_scale)),
                "final_loss_scale": jnp.where(jnp.isnan(scale[0]), jnp.nan,
                                              scale[jnp.maximum(res.stopped_at - 1, 0)]),
                "first_w_change": jnp.where(jnp.any(changed & live), jnp.argmax(changed & live), steps
                                            ).astype(jnp.float32) / per_epoch}

    return cell


def precision_grid(config: LinregRecipeConfig, progress: bool = True) -> dict[str, Any]:
    """The baseline recipe in each precision arm of the config, ``precision_seeds`` seeds each.

    Returns ``{arm: GridResult}`` (axis ``arm``, one value each). The float64 arm runs in its own grid under
    ``jax.enable_x64(True)`` (64-bit must be on while its program is traced and run); the others share one
    ``run_grid`` call with ``arm`` static (one program per arm).

    Example: ``precision_grid(LinregRecipeConfig.quick(), progress=False)["float16"].outputs["w_frozen_steps"]``.
    """
    cell = precision_cell(config)
    arms32 = [a for a in config.precision_arms if a != "float64"]
    out = {}
    if arms32:
        grid = run_grid(cell, {"arm": arms32}, seeds=config.precision_seeds, static=["arm"], progress=progress,
                        label="linreg-recipe precision arms")
        if not grid.complete:
            return {"interrupted": grid}
        out.update({arm: grid.select(arm=arm) for arm in arms32})
    if "float64" in config.precision_arms:
        with jax.enable_x64(True):
            grid = run_grid(cell, {"arm": ["float64"]}, seeds=config.precision_seeds, static=["arm"],
                            progress=progress, label="linreg-recipe precision arm float64")
        if not grid.complete:
            return {"interrupted": grid}
        out["float64"] = grid
    return out


def precision_steps(grids: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (arm, seed, step) of the precision arms: the per-step log written to precision_steps.csv."""
    rows = []
    for arm, grid in grids.items():
        traces = {k: np.asarray(grid.outputs[f"trace/{k}"]) for k in PRECISION_TRACES}
        for i, cell in enumerate(grid.cells):
            for t in range(traces["loss"].shape[1]):
                rows.append({"arm": arm, "seed": cell["seed"], "step": t,
                             **{k: float(v[i, t]) for k, v in traces.items()}})
    return rows


__all__ = ["PRECISION_TRACES", "precision_cell", "precision_grid", "precision_steps"]
