"""Verdict rules of the study layer (re-exported by :mod:`optlab.studies.summary`).

:class:`Threshold` and :class:`PairedDifference` carry their tolerances as fields and describe themselves from those
fields; :func:`check` maps a boolean test; :func:`inconsistent` and :func:`untestable` build the claims whose
numbers cannot all be true ("refuted (inconsistent)", with the arithmetic) or cannot be measured as stated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optlab.studies.base import Claim
from optlab.studies.stats import describe, mean_std

PAIRED_Z = 2.0  # a paired mean difference counts when it is more than this many standard errors from 0
MIN_PAIRS = 2  # a paired rule needs at least this many finite pairs (one seed has no standard error)
CONSISTENCY_RTOL = 0.05  # two claimed values of one quantity agree within this relative difference
INCONSISTENT = "refuted (inconsistent)"  # qualified verdicts of optlab.studies.base.VERDICTS
UNTESTABLE = "untestable as stated"

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
