"""Shared test fixtures: a tiny registered study so CLI and report tests do not depend on real studies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from optlab import plot
from optlab.studies import base, summary
from optlab.studies import config as cfg


@dataclasses.dataclass(frozen=True)
class TinyConfig(cfg.Settings):
    steps: int = cfg.setting(10, doc="trace length", range=(1, None))
    rate: float = cfg.setting(0.5, doc="geometric rate", range=(0, None), bounds="(]")
    label: str = cfg.setting("a", doc="a free string")
    flag: bool = cfg.setting(False, doc="a switch")
    seeds: int = cfg.setting(2, doc="seeds per learning rate", range=(1, None))
    learning_rates: tuple[float, ...] = cfg.setting((0.1, 0.2), doc="grid axis", range=(0, None), bounds="(]")
    cap: float | None = cfg.setting(None, doc="optional upper bound of rate", allow_nonfinite=True)

    @classmethod
    def quick(cls):
        return cls(steps=3)

    def check(self):
        if self.cap is not None and self.rate > self.cap:
            raise ValueError(f"rate={self.rate} must be <= cap={self.cap}")


def _tiny_run(config: TinyConfig, *, progress: bool = True, run_dir=None) -> base.StudyResult:
    losses = np.asarray([config.rate ** k for k in range(config.steps)])
    fig, ax = plot.new_figure()
    plot.loss_band(ax, np.stack([losses, losses * 1.1]), label="tiny")
    claim = base.Claim("1", "loss halves each step", "rate 0.5", f"rate {config.rate:.3g}",
                       summary.check(abs(config.rate - 0.5) < 1e-9), detail="closed form")
    section = base.Section("Experiment 1", text="A geometric trace.", claims=[claim],
                           tables=[base.Table("losses", ["step", "loss"], [[k, v] for k, v in enumerate(losses)])],
                           figures={"tiny_loss.png": fig, "tiny_heat.png": plot.heatmap(
                               np.array([[1.0, np.nan], [0.1, 2.0]]), ["r0", "r1"], ["c0", "c1"], title="t")})
    rows = [{"lr": lr, "seed": s, "final": float(losses[-1] * lr)} for lr in config.learning_rates
            for s in range(config.seeds)]
    return base.StudyResult("tiny", "A tiny study", dataclasses.asdict(config), [section], rows=rows)


TINY = base.Study("tiny", "a tiny geometric study for tests", TinyConfig, _tiny_run)


@pytest.fixture
def tiny_study(monkeypatch):
    from optlab import studies

    real_get, real_available = studies.get, studies.available
    monkeypatch.setattr(studies, "get", lambda name: TINY if name == "tiny" else real_get(name))
    monkeypatch.setattr(studies, "available", lambda: sorted(real_available() + ["tiny"]))
    return TINY
