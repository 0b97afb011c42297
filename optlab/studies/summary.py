"""The summary → table → claim layer every study stands on: trace summaries, statistics, formats and verdict rules.

A study is a cell function, axes and claims; everything between the grid and a :class:`~optlab.studies.base.Claim`
lives here, once, so a misleading number is fixed for every study at the same time:

- :func:`summarize` / :func:`summarize_grid`: one jitted, vmapped pass over loss traces (divergence verdict and
  onset, zig-zag, steps to floor, convergence rate) instead of a per-study loop.
- :func:`describe` / :func:`reached`: statistics over seeds. Non-finite values are counted, never averaged; ``-1``
  ("never") markers are never averaged either: :func:`reached` gives "k of n reached" and the median over those.
- :func:`mean_std`, :func:`reached_text`, :func:`counts_text`, :func:`grid_table`: the cells of every study table,
  e.g. ``"0.0123 ± 0.0041 (n=8)"``, ``"5 of 8 reached, median 212"``, ``"converged 5, plateaued 1, diverged 2, nan
  0"``. One cell prints no ``± 0``.
- :class:`Threshold` and :class:`PairedDifference`: the two verdict rules, with their tolerances as fields (set
  them from named constants or config fields) and a :meth:`describe` sentence generated from those fields;
  :func:`check` maps a boolean test. :func:`inconsistent` and :func:`untestable` build the claims whose numbers
  cannot all be true ("refuted (inconsistent)", with the arithmetic) or cannot be measured as stated.

Worked example (a study's experiment, end to end)::

    from optlab.engine.grid import run_grid
    from optlab.studies import summary as sm
    from optlab.studies.base import Claim, Section

    SMOOTH = 0.1    # rise/drop at or below this counts as smooth
    grid = sm.summarize_grid(run_grid(cell, {"optimizer": ["global", "adamw"], "lr": [0.3, 1.0]}, seeds=8),
                             floor="floor")          # cell returns "loss" (T,) and "floor" (); adds the summary
    table = sm.grid_table(grid, ["optimizer", "lr"], [
        ("final loss", "final_loss", "mean_std"),     # "0.0123 ± 0.0041 (n=8)"
        ("rise/drop", "up_over_drop", "median"),      # "0.31 (n=8)"
        ("steps to floor", "steps_to_floor", "reached"),  # "5 of 8 reached, median 212"
        ("verdicts", "verdict", "verdicts"),          # "converged 5, plateaued 1, diverged 2, nan 0"
    ], title="Experiment 5: over 8 seeds")

    smooth = sm.Threshold(SMOOTH, partly=0.5, op="<=", name="median rise/drop")
    adamw = grid.select(optimizer="adamw", lr=1.0)
    size = sm.describe(adamw.outputs["up_over_drop"]).median
    claim = Claim("5", "AdamW converges smoothly", "converges smoothly with AdamW",
                  f"rise/drop {size:.3g} (median); {sm.counts_text(adamw.outputs['verdict'])}",
                  smooth(size), smooth.describe())

    better = sm.PairedDifference(z=2.0)            # per-seed a - b, claimed > 0
    diff = grid.select(optimizer="global", lr=0.3).outputs["final_loss"] - \\
        grid.select(optimizer="global", lr=1.0).outputs["final_loss"]
    claim = Claim("5", "lr 1 ends lower than lr 0.3", "...", f"paired diff {sm.mean_std(diff)}", better(diff),
                  better.describe("final loss(lr 0.3) − final loss(lr 1)"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from optlab import diagnostics as dg
from optlab.studies.base import Table
from optlab.studies.stats import (  # noqa: F401 (re-exported: the one import path of the study layer)
    Reached,
    Stats,
    counts_text,
    describe,
    mean_std,
    median_text,
    reached,
    reached_text,
)
from optlab.studies.verdicts import (  # noqa: F401 (re-exported)
    CONSISTENCY_RTOL,
    INCONSISTENT,
    MIN_PAIRS,
    PAIRED_Z,
    UNTESTABLE,
    PairedDifference,
    Threshold,
    check,
    inconsistency,
    inconsistent,
    untestable,
)


SUMMARY_FIELDS = ("verdict", "onset_step", "best_step", "best_loss", "final_best_ratio", "zigzag", "up_over_drop",
                  "steps_to_floor", "rate")


# --------------------------------------------------------------------------------------------- trace summaries


def _summarize_one(loss, floor, rule: dict) -> dict[str, jax.Array]:
    divergence = dg.divergence(loss, floor=floor, **rule)
    above = jnp.where(loss > floor, loss, jnp.nan)  # steps at or below the floor are float noise, not zig-zag
    zigzag = dg.zigzag_score(above)
    return {"verdict": divergence.verdict, "onset_step": divergence.onset_step, "best_step": divergence.best_step,
            "best_loss": divergence.best_loss, "final_best_ratio": divergence.final_best_ratio,
            "zigzag": zigzag.up_fraction, "up_over_drop": zigzag.up_over_drop,
            "steps_to_floor": dg.starvation(loss[:, None], threshold=floor).settle_step[0],
            "rate": dg.convergence_rate(above)}


@partial(jax.jit, static_argnames=("rule",))
def _summarize(loss, floor, rule: tuple) -> dict[str, jax.Array]:
    return jax.vmap(lambda l, f: _summarize_one(l, f, dict(rule)))(loss, floor)


def summarize(loss, floor=None, **rule) -> dict[str, np.ndarray]:
    """Per-run scalars of loss traces, in one compiled, vmapped call.

    Args:
      loss: (runs, T) loss traces (a (T,) trace is one run).
      floor: () or (runs,) loss at or below which a run is done (e.g. the known minimum plus a tolerance); None
        means 0. It feeds :func:`optlab.diagnostics.divergence`, and zig-zag and rate ignore steps at or below it.
      **rule: keyword arguments of :func:`optlab.diagnostics.divergence` (``rel_tol``, ``window``, ``noise``,
        ``rel_floor``, ``tail``, ``plateau_tol``); Python scalars.

    Returns:
      dict of (runs,) NumPy arrays: ``verdict`` (index into ``diagnostics.VERDICTS``; count it, never average it),
      ``onset_step``, ``best_step`` (-1 / step), ``best_loss``, ``final_best_ratio``, ``zigzag`` (share of rising
      steps), ``up_over_drop`` (sum of rises / sum of drops), ``steps_to_floor`` (first step from which the loss
      stays below ``floor``; -1: never, so use :func:`reached`), ``rate`` (per-step contraction factor of the loss
      above the floor).

    Example::

        out = summarize(jnp.stack([0.5 ** jnp.arange(40.0), jnp.ones(40)]), floor=1e-6)
        out["steps_to_floor"]   # [20, -1]; out["rate"][0] == 0.5
    """
    loss = jnp.asarray(loss)
    if loss.ndim == 1:
        loss = loss[None]
    if loss.ndim != 2 or loss.shape[1] == 0:
        raise ValueError(f"loss must be (runs, T) with T >= 1, got shape {loss.shape}")
    if not jnp.issubdtype(loss.dtype, jnp.floating):
        loss = loss.astype(jnp.result_type(float))
    floor = jnp.broadcast_to(jnp.asarray(0.0 if floor is None else floor, loss.dtype), loss.shape[:1])
    bad = sorted(set(rule) - {"rel_tol", "window", "noise", "rel_floor", "tail", "plateau_tol"})
    if bad:
        raise TypeError(f"rule takes divergence's rel_tol, window, noise, rel_floor, tail, plateau_tol; got {bad}")
    out = _summarize(loss, floor, tuple(sorted(rule.items())))
    return {k: np.asarray(v) for k, v in out.items()}


def summarize_grid(grid, trace: str = "loss", floor=None, **rule):
    """A copy of ``grid`` with the :func:`summarize` columns added to its outputs (the grid itself is unchanged).

    Args:
      grid: a :class:`~optlab.engine.grid_result.GridResult` whose output ``trace`` is (cells, T).
      trace: the output holding the loss traces.
      floor: None, a number, or the name of a per-cell scalar output holding each cell's floor.
      **rule: as in :func:`summarize`.

    Example: ``grid = summarize_grid(run_grid(cell, axes, seeds=8), floor="floor")``; then
    ``grid.count("verdict", by="lr", labels=diagnostics.VERDICTS)``.
    """
    if trace not in grid.outputs or grid.outputs[trace].ndim != 2:
        raise ValueError(f"trace must name a (cells, T) output of the grid, got {trace!r}")
    if isinstance(floor, str):
        if floor not in grid.scalar_outputs:
            raise ValueError(f"floor must be a number or a scalar output of the grid {grid.scalar_outputs}; "
                             f"got {floor!r}")
        floor = grid.outputs[floor]
    if not len(grid):
        return replace(grid, outputs={**grid.outputs, **{k: np.zeros(0) for k in SUMMARY_FIELDS}})
    return replace(grid, outputs={**grid.outputs, **summarize(grid.outputs[trace], floor, **rule)})


FORMATS: dict[str, Callable[[np.ndarray], str]] = {
    "mean_std": mean_std, "median": median_text, "reached": reached_text, "verdicts": counts_text,
}


def grid_table(grid, by: str | Sequence[str], columns: Sequence[tuple], title: str = "") -> Table:
    """A report :class:`~optlab.studies.base.Table`: one row per combination of the ``by`` axes (grid order).

    Args:
      grid: a GridResult.
      by: the axes whose values start each row.
      columns: ``(header, metric, format)`` triples; ``format`` is a name in ``FORMATS`` (``"mean_std"``,
        ``"median"``, ``"reached"``, ``"verdicts"``) or a callable from the group's (cells,) values to a string.
      title: the table title.

    Example: ``grid_table(grid, "scaling", [("final loss", "final_loss", "mean_std")], title="Experiment 4")``.
    """
    by = [by] if isinstance(by, str) else list(by)
    resolved = []
    for header, metric, form in columns:
        if metric not in grid.outputs or grid.outputs[metric].ndim != 1:
            raise ValueError(f"column {header!r}: metric must be a one-value-per-cell output, got {metric!r}")
        if not callable(form) and form not in FORMATS:
            raise ValueError(f"column {header!r}: format must be a callable or one of {sorted(FORMATS)}; "
                             f"got {form!r}")
        resolved.append((metric, form if callable(form) else FORMATS[form]))
    rows = [[*key.values(), *(form(grid.outputs[metric][mask]) for metric, form in resolved)]
            for key, mask in grid.groups(by)]
    return Table(title, [*by, *(header for header, _, _ in columns)], rows)


__all__ = ["CONSISTENCY_RTOL", "FORMATS", "INCONSISTENT", "MIN_PAIRS", "PAIRED_Z", "SUMMARY_FIELDS", "UNTESTABLE",
           "PairedDifference", "Reached", "Stats", "Threshold", "check", "counts_text", "describe", "grid_table",
           "inconsistency", "inconsistent", "mean_std", "median_text", "reached", "reached_text", "summarize",
           "summarize_grid", "untestable"]
