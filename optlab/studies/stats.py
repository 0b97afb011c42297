"""Statistics over seeds and the text cells of study tables (re-exported by :mod:`optlab.studies.summary`).

Non-finite values are counted, never averaged; ``-1`` ("never") markers are never averaged either. Cells read
``"0.0123 ± 0.0041 (n=8)"``, ``"5 of 8 reached, median 212"``, ``"converged 5, plateaued 1, diverged 2, nan 0"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from optlab import diagnostics as dg


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
