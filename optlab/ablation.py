"""Ablations of named recipe switches: the full 2^k factorial as vmapped grids, and exact attributions from it.

A recipe change ("lr 1e-3 → 1e-2", "shuffle off") is a :class:`Switch`. :func:`factorial` runs every combination
of the switches × seeds through :func:`optlab.engine.grid.run_grid` (dynamic switches vmap in one program, each
combination of static ones is one program) and returns an :class:`Ablation`. Every attribution below is read off
that one factorial, so none of them needs another run:

- exact Shapley values (the average marginal effect over all k! orderings) with paired seed-bootstrap CIs,
- the pairwise Shapley interaction index,
- cumulative add-one-at-a-time paths in any order (given, reverse, random) and how much a switch's gain depends on
  the order (down to the exact min / max over every context the switch can be added in),
- leave-one-out from the full recipe.

Conventions: the value ``v(S)`` of a coalition ``S`` (the switches that are changed) is the seed mean of a scalar
metric; a NaN seed makes its coalition NaN (a diverged run is never averaged away). Every effect is *with − without*
in the metric's own units (a helpful switch has a negative effect on a loss), so Shapley values, cumulative gains and
leave-one-out losses share one sign. An interrupted factorial (``GridResult.complete`` False) gives no attribution:
every method that reads coalition values raises :class:`IncompleteAblation` (check :attr:`Ablation.complete` first).

Example:

>>> from optlab import ablation
>>> def cell(config, key):  # a closed form: no training run
...     noise = 0.01 * jax.random.normal(key)
...     return {"loss": 1.0 - 0.5 * config["lr"] - 0.2 * config["clip"] + noise}
>>> res = ablation.factorial(cell, [ablation.Switch("lr", 0.0, 1.0), ablation.Switch("clip", 0.0, 1.0)],
...                          seeds=4, progress=False)
>>> [(row["switch"], round(row["shapley"], 2)) for row in res.shapley("loss", n_boot=50)]
[('lr', -0.5), ('clip', -0.2)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from optlab.engine.grid import run_grid
from optlab._shapley import interaction_matrix as _interaction_matrix
from optlab._shapley import shapley_matrix as _shapley_matrix
from optlab.ablation_switch import MAX_SWITCHES, Switch, _check_switches  # noqa: F401 (exported from here)
from optlab.engine.grid_result import SEED_AXIS, GridResult

class IncompleteAblation(RuntimeError):
    """The factorial was interrupted: some coalitions are missing, so no attribution is computed from it."""


def factorial(
    cell: Callable[[dict, jax.Array], Mapping[str, Any]],
    switches: Sequence[Switch],
    *,
    seeds: int | Sequence[int] = 16,
    base: Mapping[str, Any] | None = None,
    mesh=None,
    chunk_size: int | None = None,
    progress: bool = True,
    label: str | None = None,
) -> Ablation:
    """Run every combination of ``switches`` (2^k recipes) × ``seeds`` as one :func:`run_grid`.

    The grid has one axis per switch, named after it, with values ``0`` (baseline) and ``1`` (changed), plus
    ``"seed"``. Static switches are static axes. A cell of the grid calls
    ``cell({**base, name: switch.value(bit) for each switch}, jax.random.key(seed))``, so re-running one recipe
    alone is ``cell(res.config(on=[...]), jax.random.key(seed))`` (to float rounding).

    Args:
      cell: ``cell(config, key) -> dict of arrays``; metrics are scalars per run.
      switches: non-empty list of :class:`Switch` with distinct names.
      seeds: an int N (seeds 0..N-1) or distinct ints, as in :func:`run_grid`.
      base: config entries no switch changes (a switch's name overrides the same key).
      mesh, chunk_size, progress, label: passed to :func:`run_grid`.

    Returns:
      :class:`Ablation`.

    Example::

        res = factorial(cell, [Switch("lr", 1e-3, 1e-2), Switch("shuffle", True, False, static=True)],
                        seeds=16, base={"epochs": 30})
        res.shapley("final_error")
    """
    if not callable(cell):
        raise TypeError(f"cell must be callable cell(config, key) -> dict, got {cell!r}")
    switches = _check_switches(switches)
    if base is None:
        base = {}
    if not isinstance(base, Mapping):
        raise TypeError(f"base must be a mapping of config entries or None, got {type(base).__name__}")
    base = dict(base)

    def grid_cell(bits, key):
        return cell({**base, **{s.name: s.value(bits[s.name]) for s in switches}}, key)

    grid = run_grid(grid_cell, {s.name: [0, 1] for s in switches}, seeds=seeds,
                    static=[s.name for s in switches if s.static], mesh=mesh, chunk_size=chunk_size,
                    progress=progress, label=label)
    return Ablation(grid, switches, base)


def _fmt(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.4g}"


@dataclass
class Ablation:
    """The factorial of :func:`factorial` and the attributions computed from it.

    Attributes:
      grid: the :class:`GridResult` (one 0/1 axis per switch, then ``"seed"``).
      switches: the switches, in order.
      base: the config entries no switch changes.

    Example: ``res.values("loss", on=["lr"])`` is the ``(n_seeds,)`` loss of the recipe with only ``lr`` changed.
    """

    grid: GridResult
    switches: tuple[Switch, ...]
    base: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Switch names in order."""
        return [s.name for s in self.switches]

    @property
    def complete(self) -> bool:
        """False when the factorial was interrupted (attribution methods then raise :class:`IncompleteAblation`)."""
        return bool(self.grid.complete) and len(self.grid) == 2 ** len(self.switches) * len(self.grid.axes[SEED_AXIS])

    def _mask(self, on) -> int:
        on = [on] if isinstance(on, str) else list(on)
        unknown = [n for n in on if n not in self.names]
        if unknown:
            raise ValueError(f"on must name switches, some of {self.names}; got {unknown[0]!r}")
        return sum(1 << self.names.index(n) for n in set(on))

    def config(self, on: str | Sequence[str] = ()) -> dict:
        """The Python config of the recipe with exactly the switches in ``on`` changed (what the cell receives)."""
        mask = self._mask(on)
        return {**self.base, **{s.name: s.changed if mask >> i & 1 else s.baseline
                                for i, s in enumerate(self.switches)}}

    def _table(self, metric: str) -> np.ndarray:
        """``(2^k, n_seeds)`` metric per coalition (bit i = switch i changed) and seed."""
        if not isinstance(metric, str) or metric not in self.grid.scalar_outputs:
            raise ValueError(f"metric must be a scalar output, one of {self.grid.scalar_outputs}; got {metric!r}")
        if not self.complete:
            raise IncompleteAblation(
                f"the factorial is incomplete ({len(self.grid)} of "
                f"{2 ** len(self.switches) * len(self.grid.axes[SEED_AXIS])} cells ran): no attribution of {metric!r} "
                "is computed from missing recipes; rerun the factorial to completion")
        k = len(self.switches)
        masks = self.grid.index[:, :k] @ (1 << np.arange(k))
        table = np.full((2**k, len(self.grid.axes[SEED_AXIS])), np.nan)
        table[masks, self.grid.index[:, k]] = np.asarray(self.grid.outputs[metric], dtype=np.float64)
        return table

    def _coalitions(self, metric: str) -> np.ndarray:
        return self._table(metric).mean(axis=1)

    def values(self, metric: str, on: str | Sequence[str] = ()) -> np.ndarray:
        """The ``(n_seeds,)`` metric of the recipe with exactly the switches in ``on`` changed, in seed order."""
        mask = self._mask(on)
        return self._table(metric)[mask]

    def shapley(self, metric: str, *, n_boot: int = 1000, ci: float = 0.95, key=0) -> list[dict]:
        """Exact Shapley value of each switch, with a paired seed-bootstrap confidence interval.

        .. math::

            \\phi_i = \\sum_{S \\subseteq N \\setminus \\{i\\}} \\frac{|S|!\\,(k-|S|-1)!}{k!}
            \\bigl(v(S \\cup \\{i\\}) - v(S)\\bigr), \\qquad \\sum_i \\phi_i = v(N) - v(\\emptyset)

        Each bootstrap replicate resamples the seeds once for every coalition (so CIs of differences are paired).

        Args:
          metric: a scalar output of the cell.
          n_boot: bootstrap replicates (0: no interval, ``lo``/``hi`` NaN; also NaN with a single seed).
          ci: the interval's coverage in (0, 1) (percentile bootstrap).
          key: an int or a ``jax.random.key`` for the resampling.

        Returns:
          One dict per switch: ``switch``, ``shapley``, ``lo``, ``hi``, ``share`` (of ``v(N) − v(∅)``; NaN if that
          is 0).

        Example: ``{r["switch"]: r["shapley"] for r in res.shapley("loss")}``.
        """
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
            raise ValueError(f"n_boot must be an int >= 0, got {n_boot!r}")
        if not isinstance(ci, (int, float)) or not 0 < ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {ci!r}")
        table = self._table(metric)
        matrix = _shapley_matrix(len(self.switches))
        phi = matrix @ table.mean(axis=1)
        total = table[-1].mean() - table[0].mean()
        lo = hi = np.full(len(phi), np.nan)
        n_seeds = table.shape[1]
        if n_boot and n_seeds > 1:
            key = jax.random.key(key) if isinstance(key, (int, np.integer)) and not isinstance(key, bool) else key
            draws = np.asarray(jax.random.randint(key, (n_boot, n_seeds), 0, n_seeds))
            counts = np.zeros((n_boot, n_seeds))
            np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
            boot = matrix @ (table @ counts.T / n_seeds)  # (k, n_boot)
            lo, hi = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2], axis=1)
        share = phi / total if total != 0 else np.full(len(phi), np.nan)
        return [{"switch": n, "shapley": float(p), "lo": float(a), "hi": float(b), "share": float(s)}
                for n, p, a, b, s in zip(self.names, phi, lo, hi, share)]

    def interactions(self, metric: str) -> np.ndarray:
        """``(k, k)`` pairwise Shapley interaction index; the diagonal holds the Shapley values.

        .. math::

            I_{ij} = \\sum_{S \\subseteq N \\setminus \\{i,j\\}} \\frac{|S|!\\,(k-|S|-2)!}{(k-1)!}
            \\bigl(v(S \\cup \\{i,j\\}) - v(S \\cup \\{i\\}) - v(S \\cup \\{j\\}) + v(S)\\bigr)

        Zero off the diagonal means the two switches add; positive means together they do more (in the metric's
        sign) than apart. Example: ``plot.interaction_heatmap(res.interactions("loss"), res.names)``.
        """
        v = self._coalitions(metric)
        k = len(self.switches)
        out = np.diag(_shapley_matrix(k) @ v)
        for i in range(k):
            for j in range(i + 1, k):
                out[i, j] = out[j, i] = _interaction_matrix(k, i, j) @ v
        return out

    def _order(self, order) -> list[str]:
        if order is None:
            return self.names
        order = [order] if isinstance(order, str) else list(order)
        unknown = [n for n in order if n not in self.names]
        if unknown or len(set(order)) != len(order) or not order:
            raise ValueError(f"order must list distinct switch names from {self.names}; got {order}")
        return order

    def cumulative(self, metric: str, order: Sequence[str] | None = None) -> list[dict]:
        """The add-one-at-a-time path from the baseline, in ``order`` (default: the switches' order).

        Returns one dict per step: ``step`` (1-based), ``switch``, ``before`` (seed-mean value before adding it),
        ``value`` (after), ``gain`` (``value − before``). Example: ``res.cumulative("loss", order=res.names[::-1])``.
        """
        v = self._coalitions(metric)
        rows, mask = [], 0
        for step, name in enumerate(self._order(order), start=1):
            new = mask | 1 << self.names.index(name)
            rows.append({"step": step, "switch": name, "before": float(v[mask]), "value": float(v[new]),
                         "gain": float(v[new] - v[mask])})
            mask = new
        return rows

    def paths(self, metric: str, *, n_random: int = 4, key=0) -> dict[str, list[dict]]:
        """Cumulative paths in the given, reverse and ``n_random`` random orders (for ``plot.cumulative_paths``).

        Example: ``plot.cumulative_paths(res.paths("loss"), title="loss")``.
        """
        if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
            raise ValueError(f"n_random must be an int >= 0, got {n_random!r}")
        key = jax.random.key(key) if isinstance(key, (int, np.integer)) and not isinstance(key, bool) else key
        out = {"given": self.cumulative(metric), "reverse": self.cumulative(metric, self.names[::-1])}
        for r, subkey in enumerate(jax.random.split(key, n_random) if n_random else []):
            order = np.asarray(jax.random.permutation(subkey, len(self.names)))
            out[f"random {r + 1}"] = self.cumulative(metric, [self.names[i] for i in order])
        return out

    def order_spread(self, metric: str, *, n_random: int = 4, key=0) -> list[dict]:
        """How much each switch's cumulative gain depends on the order it is added in.

        Returns one dict per switch: ``given``, ``reverse``, ``random_min`` / ``random_max`` (over the ``n_random``
        random orders; NaN without them), ``min`` / ``max`` over those orders, ``any_min`` / ``any_max`` (exact, over
        all 2^(k−1) sets of switches it can be added after, i.e. every ordering) and ``shapley``.
        Example: ``max(r["max"] - r["min"] for r in res.order_spread("loss"))``.
        """
        paths = self.paths(metric, n_random=n_random, key=key)
        gains = {label: {row["switch"]: row["gain"] for row in rows} for label, rows in paths.items()}
        v = self._coalitions(metric)
        masks = np.arange(2 ** len(self.names))
        rows = []
        for i, (name, phi) in enumerate(zip(self.names, _shapley_matrix(len(self.names)) @ v)):
            random = [g[name] for label, g in gains.items() if label.startswith("random")]
            seen = [g[name] for g in gains.values()]
            without = masks[(masks >> i) & 1 == 0]
            marginal = v[without | 1 << i] - v[without]
            rows.append({"switch": name, "given": gains["given"][name], "reverse": gains["reverse"][name],
                         "random_min": float(min(random)) if random else float("nan"),
                         "random_max": float(max(random)) if random else float("nan"),
                         "min": float(min(seen)), "max": float(max(seen)),
                         "any_min": float(marginal.min()), "any_max": float(marginal.max()), "shapley": float(phi)})
        return rows

    def leave_one_out(self, metric: str) -> list[dict]:
        """Each switch removed from the full recipe: ``switch``, ``value`` (seed mean without it), ``loss``
        (``v(N) − v(N∖{i})``: the effect the switch still has at the end, with − without).

        Example: ``res.leave_one_out("loss")[0]["loss"]``.
        """
        v = self._coalitions(metric)
        full = len(v) - 1
        return [{"switch": n, "value": float(v[full & ~(1 << i)]), "loss": float(v[full] - v[full & ~(1 << i)])}
                for i, n in enumerate(self.names)]

    def tables(self, metric: str, *, n_boot: int = 1000, ci: float = 0.95, n_random: int = 4, key=0) -> list:
        """Report tables (:class:`optlab.studies.base.Table`): Shapley with CI, leave-one-out, cumulative, spread.

        Example: ``Section("Attribution", tables=res.tables("final_error"))``.
        """
        from optlab.studies.base import Table  # on call: importing optlab must not load the studies layer

        v = self._coalitions(metric)
        n_seeds, k = self._table(metric).shape[1], len(self.names)
        docs = {s.name: s.doc for s in self.switches}
        scope = f"{metric}, exact over 2^{k} = {2**k} recipes × {n_seeds} seeds; baseline {_fmt(v[0])}, " \
                f"full {_fmt(v[-1])}"
        shap = self.shapley(metric, n_boot=n_boot, ci=ci, key=key)
        return [
            Table(f"Shapley values ({scope}; {ci:.0%} seed-bootstrap CI)",
                  ["switch", "change", "Shapley", "CI", "share of full − baseline"],
                  [[r["switch"], docs[r["switch"]], _fmt(r["shapley"]), f"[{_fmt(r['lo'])}, {_fmt(r['hi'])}]",
                    _fmt(r["share"])] for r in shap]),
            Table(f"Leave one out from the full recipe ({scope})", ["switch", "value without it", "with − without"],
                  [[r["switch"], _fmt(r["value"]), _fmt(r["loss"])] for r in self.leave_one_out(metric)]),
            Table(f"Cumulative, in the given order ({scope})", ["step", "switch", "value", "gain"],
                  [[r["step"], r["switch"], _fmt(r["value"]), _fmt(r["gain"])] for r in self.cumulative(metric)]),
            Table(f"Gain by order ({scope}; {n_random} random orders)",
                  ["switch", "given", "reverse", "random min … max", "any order min … max", "Shapley"],
                  [[r["switch"], _fmt(r["given"]), _fmt(r["reverse"]), f"{_fmt(r['random_min'])} … "
                    f"{_fmt(r['random_max'])}", f"{_fmt(r['any_min'])} … {_fmt(r['any_max'])}", _fmt(r["shapley"])]
                   for r in self.order_spread(metric, n_random=n_random, key=key)]),
        ]


__all__ = ["MAX_SWITCHES", "Ablation", "IncompleteAblation", "Switch", "factorial"]
