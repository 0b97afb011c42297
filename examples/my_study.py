"""A user's own study: gradient descent on f(x) = h/2·||x||² converges exactly when lr < 2/h.

Run it like a built-in study: ``optlab run examples/my_study.py --quick --grid learning_rates=0.5,2.5``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

import optlab
from optlab.studies import Claim, Section, Study, StudyResult
from optlab.studies import summary
from optlab.studies.config import Settings, setting, to_dict


@dataclasses.dataclass(frozen=True)
class SgdConfig(Settings):
    curvature: float = setting(1.0, range=(0, None), bounds="(]", doc="h in f(x) = h/2 ||x||^2")
    learning_rates: tuple[float, ...] = setting((0.5, 1.0, 1.9, 2.1, 3.0), range=(0, None), bounds="(]",
                                                doc="grid axis")
    steps: int = setting(100, range=(1, None), doc="SGD steps per run")
    seeds: int = setting(4, range=(1, None), doc="random starts per learning rate")

    @classmethod
    def quick(cls):
        return cls(steps=30, seeds=2)


def run(config: SgdConfig, *, progress: bool = True, run_dir=None) -> StudyResult:
    def cell(hp, key):  # one (learning rate, seed) cell: the grid vmaps it over traced learning rates
        loss = lambda x, _: 0.5 * config.curvature * jnp.sum(x**2)
        fit = optlab.fit(loss, jax.random.normal(key, (3,)), optax.sgd(hp["learning_rates"]), steps=config.steps)
        return {"ratio": fit.trace["loss"][-1] / fit.trace["loss"][0]}

    grid = optlab.run_grid(cell, {"learning_rates": config.learning_rates}, seeds=config.seeds, progress=progress)
    rows = grid.to_rows()
    # the claim's rule: every run below 2/h shrinks the loss, every run above it grows it
    edge = 2.0 / config.curvature
    holds = all((r["ratio"] < 1) == (r["learning_rates"] < edge) for r in rows)
    claim = Claim("1", "GD converges iff lr < 2/h", f"edge at lr = {edge:g}",
                  f"{sum(r['ratio'] < 1 for r in rows)} of {len(rows)} runs shrank the loss", summary.check(holds))
    return StudyResult("my-sgd", "My note: the 2/h edge of gradient descent", to_dict(config),
                       [Section("Stability edge", claims=[claim])], rows=rows, complete=grid.complete,
                       cells_done=len(grid), cells_total=len(config.learning_rates) * config.seeds)


STUDY = Study("my-sgd", "gradient descent on a quadratic: the 2/h stability edge", SgdConfig, run)
