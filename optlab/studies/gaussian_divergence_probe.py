"""H1 of the Gaussian-divergence study, measured: Adam's actual per-parameter step at every saved checkpoint.

Split from :mod:`optlab.studies.gaussian_divergence` (the study calls :func:`step_probe` after its grids). The
parameter groups are ``STEP_GROUPS`` (opacity stays fixed in the baseline).

Example: ``measured_steps(loss, params, optax.adam(1e-3), stacked_states, 1e-3)["median/xy"]``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.engine import loop
from optlab.engine.checkpoint import list_checkpoints
from optlab.problems import gaussian_image as gi
from optlab.studies.gaussian_divergence_figures import STEP_GROUPS


def measured_steps(loss, template: dict, opt: optax.GradientTransformation, states, lr: float) -> dict:
    """One more step from each of the stacked TrainStates ``states``: per group of ``STEP_GROUPS``, the median and
    max over the group's entries of ``|Δθ| / lr``, and each state's ``step`` (one vmapped, jitted call).

    Example: ``measured_steps(loss, params, optax.adam(1e-3), stacked, 1e-3)["median/xy"]`` (a fresh Adam state
    gives 1 for every entry with a nonzero gradient: its first step is ``lr · sign(g)``).
    """
    def one_step(state):
        moved = loop.fit(loss, template, opt, steps=1, start=state).params
        out = {"step": state.step}
        for group in STEP_GROUPS:
            ratio = jnp.abs(moved[group] - state.params[group]).ravel() / lr
            out[f"median/{group}"], out[f"max/{group}"] = jnp.median(ratio), jnp.max(ratio)
        return out

    return jax.jit(jax.vmap(one_step))(states)


def step_probe(config, grid, combo: dict, target: jax.Array, checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """H1, measured: Adam's actual step at every saved checkpoint of ``combo``'s baseline runs.

    Each saved state is stepped once more (``fit(steps=1, start=state)``, all states of one N in one vmapped call)
    and the applied change ``|Δθ|`` is divided by the lr: per parameter group, its median and max over the
    group's entries. Under Adam this is ``|m̂| / (√v̂ + ε)`` per entry (clamping included when on), the
    "effective per-parameter step" the bias-correction hypothesis is about.

    Returns ``step`` (runs, checkpoints) global step of each state, ``bc1`` / ``bc2`` (runs, checkpoints) Adam's
    bias corrections at the probed update (``1 − β^(t+1)``, from the stored count), ``best_step`` (runs,) the
    run's best iteration, and ``median/<group>``, ``max/<group>`` (runs, checkpoints) ``|Δθ| / lr``.
    """
    from optlab.studies import gaussian_divergence as gd  # the study's optimizer and switch encoding

    shape = target.shape[:2]
    loss = gi.make_loss(target, rasteriser=combo["rasteriser"],
                        gradient_of=gd._flag(combo["gradient_of"], "l2_only"), chunk=config.chunk)
    opt = gd._optimizer("adam", config.lr, shape, combo["clamp"])
    parts: list[dict[str, np.ndarray]] = []
    for n in config.n_gaussians:
        template = gi.init_params(jax.random.key(0), n, shape)
        rows = np.flatnonzero(grid.where(n=n, **combo))
        states = []
        for i in rows:
            paths = list_checkpoints(loop.cell_dir(checkpoint_dir, int(grid.info["checkpoint_cells"][i])))
            states.append([loop.load_state(path, template, opt) for path in paths])
        length = min(len(s) for s in states)  # every run of a complete grid saved the same steps
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[s for run in states for s in run[:length]])
        measured = measured_steps(loss, template, opt, stacked, config.lr)
        parts.append({k: np.asarray(v).reshape(len(rows), length) for k, v in measured.items()})
        parts[-1]["best_step"] = np.asarray(grid.outputs["best_step"][rows]) * config.log_every
    length = min(p["step"].shape[1] for p in parts)
    out = {k: np.concatenate([p[k][:, :length] if p[k].ndim == 2 else p[k] for p in parts]) for k in parts[0]}
    count = out["step"].astype(np.float64) + 1.0  # optax's Adam counts the update being made
    out["bc1"], out["bc2"] = 1.0 - 0.9 ** count, 1.0 - 0.999 ** count
    return out


__all__ = ["STEP_GROUPS", "measured_steps", "step_probe"]
