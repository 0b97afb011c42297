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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optlab import diagnostics as dg
from optlab.studies.base import Claim, Table

PAIRED_Z = 2.0  # a paired mean difference counts when it is more than this many standard errors from 0
MIN_PAIRS = 2  # a paired rule needs at least this many finite pairs (one seed has no standard error)
CONSISTENCY_RTOL = 0.05  # two claimed values of one quantity agree within this relative difference
INCONSISTENT = "refuted (inconsistent)"  # qualified verdicts of optlab.studies.base.VERDICTS
UNTESTABLE = "untestable as stated"

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


# ------------------------------------------------------------------------------------------------ statistics


class Stats(NamedTuple):
    """Statistics of the finite values among ``n`` (NaN where undefined)."""

    n: int  # values given
    n_finite: int  # of them finite: the rest are reported, never averaged
    mean: float
    std: float  # sample standard deviation (ddof=1 unless asked otherwise); NaN for a single value
    sem: float  # std / sqrt(n_finite)
    median: float
    min: float
    max: float


def describe(values, ddof: int = 1) -> Stats:
    """:class:`Stats` of ``values`` over their finite entries. Example: ``describe([1.0, 3.0, nan]).mean == 2``."""
    values = np.asarray(values, np.float64).ravel()
    finite = values[np.isfinite(values)]
    k = finite.size
    if not k:
        return Stats(values.size, 0, *(math.nan,) * 6)
    std = float(finite.std(ddof=ddof)) if k > ddof else math.nan
    return Stats(values.size, k, float(finite.mean()), std, std / math.sqrt(k), float(np.median(finite)),
                 float(finite.min()), float(finite.max()))


class Reached(NamedTuple):
    """How many runs reached a target (a steps-to-X metric with -1 for "never"), and when."""

    k: int  # runs that reached it (value >= 0)
    n: int  # runs
    median: float  # median step over the k that did (NaN if none did)


def reached(steps) -> Reached:
    """:class:`Reached` of a steps-to-X column; ``-1`` (and NaN) mean never and are left out of the median."""
    steps = np.asarray(steps, np.float64).ravel()
    hit = steps[np.isfinite(steps) & (steps >= 0)]
    return Reached(int(hit.size), int(steps.size), float(np.median(hit)) if hit.size else math.nan)


# ------------------------------------------------------------------------------------------------ formatting


def mean_std(values, fmt: str = "{:.3g}", std_fmt: str | None = None, ddof: int = 1) -> str:
    """``"mean ± std (n=k)"`` over the finite values, the non-finite count shown; one value prints no ``± 0``.

    ``std_fmt`` defaults to ``"{:.2g}"`` with the default ``fmt``, else to ``fmt``. Scale before formatting
    (``mean_std(share * 100, "{:.0f}")``). Examples: ``"0.0123 ± 0.0041 (n=8)"``, ``"0.5 (n=1)"``,
    ``"2.1 ± 0.3 (n=6, 2 non-finite)"``, ``"nan (n=3, 3 non-finite)"``.
    """
    std_fmt = ("{:.2g}" if fmt == "{:.3g}" else fmt) if std_fmt is None else std_fmt
    s = describe(values, ddof=ddof)
    count = f"n={s.n}" + (f", {s.n - s.n_finite} non-finite" if s.n_finite < s.n else "")
    if not s.n_finite:
        return f"nan ({count})"
    spread = f" ± {std_fmt.format(s.std)}" if s.n_finite > 1 and math.isfinite(s.std) else ""
    return f"{fmt.format(s.mean)}{spread} ({count})"


def median_text(values, fmt: str = "{:.3g}") -> str:
    """``"median (n=k)"`` over the finite values, with the non-finite count. Example: ``"0.31 (n=8)"``."""
    s = describe(values)
    count = f"n={s.n}" + (f", {s.n - s.n_finite} non-finite" if s.n_finite < s.n else "")
    return f"{fmt.format(s.median) if s.n_finite else 'nan'} ({count})"


def reached_text(steps, fmt: str = "{:g}", what: str = "reached") -> str:
    """``"k of n reached, median m"`` for a steps-to-X column (-1: never); ``"0 of n reached"`` when none did."""
    r = reached(steps)
    return f"{r.k} of {r.n} {what}" + (f", median {fmt.format(r.median)}" if r.k else "")


def counts_text(codes, labels: Sequence[str] = dg.VERDICTS) -> str:
    """Category counts as text, every label shown: ``"converged 1, plateaued 0, diverged 2, nan 0"``.

    ``codes`` are integer codes into ``labels`` (e.g. the ``verdict`` output) or a ``{label: count}`` mapping as
    :meth:`GridResult.count` returns it.
    """
    if isinstance(codes, Mapping):
        return ", ".join(f"{label} {int(n)}" for label, n in codes.items())
    codes = np.asarray(codes).ravel()
    if codes.size and (not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= len(labels)):
        raise ValueError(f"codes must be integers in [0, {len(labels)}) indexing labels {tuple(labels)}")
    return ", ".join(f"{label} {int((codes == k).sum())}" for k, label in enumerate(labels))


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


# --------------------------------------------------------------------------------------------- verdict rules

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
}
_SYMBOLS = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}


@dataclass(frozen=True)
class Threshold:
    """Threshold rule: confirmed when ``value op confirm``, else partly when ``value partly_op partly``, else refuted.

    A NaN value is inconclusive. ``op`` is ``">="``, ``">"``, ``"<="`` or ``"<"``; ``partly_op`` defaults to
    ``op``. Set ``confirm`` / ``partly`` from named constants or config fields, and quote :meth:`describe`.

    Example::

        faster = Threshold(2.0, partly=1.0, op=">=", partly_op=">", name="speed-up")
        faster(3.1), faster(1.5), faster(0.9)   # 'confirmed', 'partly', 'refuted'
        faster.describe()   # 'confirmed if speed-up ≥ 2, partly if speed-up > 1, refuted otherwise'
    """

    confirm: float
    partly: float | None = None
    op: str = ">="
    partly_op: str | None = None
    name: str = "value"

    def __post_init__(self):
        for field, op in (("op", self.op), ("partly_op", self.partly_op)):
            if op is not None and op not in _OPS:
                raise ValueError(f"{field} must be one of {sorted(_OPS)}, got {op!r}")
        if not isinstance(self.confirm, (int, float)) or not math.isfinite(self.confirm):
            raise ValueError(f"confirm must be a finite number, got {self.confirm!r}")

    def __call__(self, value) -> str:
        value = float(value)
        if math.isnan(value):
            return "inconclusive"
        if _OPS[self.op](value, self.confirm):
            return "confirmed"
        if self.partly is not None and _OPS[self.partly_op or self.op](value, self.partly):
            return "partly"
        return "refuted"

    def describe(self) -> str:
        """The rule as a sentence, numbers taken from the fields."""
        text = f"confirmed if {self.name} {_SYMBOLS[self.op]} {self.confirm:g}"
        if self.partly is not None:
            text += f", partly if {self.name} {_SYMBOLS[self.partly_op or self.op]} {self.partly:g}"
        return text + ", refuted otherwise"


@dataclass(frozen=True)
class PairedDifference:
    """Paired-difference rule over seeds for a claim that ``a − b > 0`` (or ``< 0`` with ``direction="less"``).

    Per seed ``d = a − b`` (pairs with a non-finite side are dropped and reported). Confirmed when ``mean(d)`` is
    more than ``z`` standard errors in the claimed direction, refuted when more than ``z`` the other way,
    inconclusive otherwise and with fewer than ``min_pairs`` pairs (one seed has no standard error). Identical
    non-zero differences on every seed (standard error 0) are decisive.

    Example::

        rule = PairedDifference()                 # z = PAIRED_Z = 2
        rule(reduction_at_001, reduction_at_002)  # 'confirmed' when 0.01 beats 0.02 by > 2 SE
        rule.describe("reduction(0.01) − reduction(0.02)")
    """

    z: float = PAIRED_Z
    direction: str = "greater"
    min_pairs: int = MIN_PAIRS

    def __post_init__(self):
        if self.direction not in ("greater", "less"):
            raise ValueError(f"direction must be 'greater' or 'less', got {self.direction!r}")
        if not self.z >= 0:
            raise ValueError(f"z must be >= 0, got {self.z!r}")
        if self.min_pairs < 1:
            raise ValueError(f"min_pairs must be >= 1, got {self.min_pairs!r}")

    def differences(self, a, b=None) -> np.ndarray:
        """The finite per-seed differences ``a − b`` (``a`` itself when ``b`` is None)."""
        a = np.asarray(a, np.float64).ravel()
        if b is not None:
            b = np.asarray(b, np.float64).ravel()
            if a.shape != b.shape:
                raise ValueError(f"a and b must pair up seed by seed, got shapes {a.shape} and {b.shape}")
            a = a - b
        return a[np.isfinite(a)]

    def __call__(self, a, b=None) -> str:
        d = self.differences(a, b)
        if d.size < self.min_pairs:
            return "inconclusive"
        s = describe(d)
        sign = 1.0 if self.direction == "greater" else -1.0
        margin = self.z * (s.sem if math.isfinite(s.sem) else 0.0)
        if sign * s.mean > margin and sign * s.mean > 0:
            return "confirmed"
        if sign * s.mean < -margin and sign * s.mean < 0:
            return "refuted"
        return "inconclusive"

    def text(self, a, b=None, fmt: str = "{:.3g}") -> str:
        """The measured side: ``"paired diff 0.012 ± 0.004 (n=8), 8.5 SE"``."""
        d = np.asarray(a, np.float64).ravel() - (0.0 if b is None else np.asarray(b, np.float64).ravel())
        s = describe(d)
        se = f", {s.mean / s.sem:.2g} SE" if s.n_finite >= 2 and s.sem > 0 else ""
        return f"paired diff {mean_std(d, fmt)}{se}"

    def describe(self, difference: str = "a − b") -> str:
        """The rule as a sentence."""
        claimed = ">" if self.direction == "greater" else "<"
        return (f"paired over seeds: confirmed if mean({difference}) {claimed} 0 by more than {self.z:g} standard "
                f"errors, refuted if that far the other way, inconclusive otherwise or with < {self.min_pairs} seeds")


def check(holds: bool | None, *, partly: bool = False) -> str:
    """A boolean test as a verdict: True → confirmed, False → refuted (or partly), None → inconclusive."""
    if holds is None:
        return "inconclusive"
    return "confirmed" if holds else "partly" if partly else "refuted"


def inconsistency(claimed: Mapping[str, Sequence[float]], rtol: float = CONSISTENCY_RTOL) -> str | None:
    """The arithmetic showing a note's numbers cannot all be true, or None when they can.

    ``claimed`` maps a quantity to every value the note states for it; values more than ``rtol`` apart (relative
    to the larger) cannot all hold. Example: ``inconsistency({"reduction at 0.01": [5.8e-4, 5.2e-4]})`` →
    ``"reduction at 0.01 is stated as 0.00058 and 0.00052: they differ by 10 % > 5 %"``.
    """
    parts = []
    for quantity, values in claimed.items():
        values = [float(v) for v in values]
        lo, hi = min(values), max(values)
        scale = max(abs(lo), abs(hi))
        gap = (hi - lo) / scale if scale > 0 else 0.0
        if gap > rtol:
            parts.append(f"{quantity} is stated as {' and '.join(f'{v:g}' for v in values)}: they differ by "
                         f"{gap * 100:.0f} % > {rtol * 100:g} %")
    return "; ".join(parts) or None


def inconsistent(experiment: str, claim: str, claimed: str, arithmetic: str, detail: str = "") -> Claim:
    """A claim whose numbers cannot all be true at once: verdict ``"refuted (inconsistent)"``, the arithmetic as measured.

    Example: ``inconsistent("grid", "0.01 beats 0.02", note_text, inconsistency(stated))``.
    """
    return Claim(experiment, claim, claimed, arithmetic, INCONSISTENT, detail)


def untestable(experiment: str, claim: str, claimed: str, reason: str, detail: str = "") -> Claim:
    """A claim that cannot be measured as stated: verdict ``"untestable as stated"``, the reason as measured."""
    return Claim(experiment, claim, claimed, reason, UNTESTABLE, detail)


__all__ = ["CONSISTENCY_RTOL", "FORMATS", "INCONSISTENT", "MIN_PAIRS", "PAIRED_Z", "SUMMARY_FIELDS", "UNTESTABLE",
           "PairedDifference", "Reached", "Stats", "Threshold", "check", "counts_text", "describe", "grid_table",
           "inconsistency", "inconsistent", "mean_std", "median_text", "reached", "reached_text", "summarize",
           "summarize_grid", "untestable"]
