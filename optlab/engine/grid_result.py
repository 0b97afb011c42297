"""GridResult: the table a grid leaves behind — rows, pivots for heatmaps, aggregates over seeds, CSV / JSON."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optlab import _atomic

SEED_AXIS = "seed"

_AGGREGATES: dict[str, Callable[[np.ndarray], Any]] = {
    "mean": np.mean, "median": np.median, "min": np.min, "max": np.max, "std": np.std,
    "nanmean": np.nanmean, "nanmedian": np.nanmedian, "nanmin": np.nanmin, "nanmax": np.nanmax, "nanstd": np.nanstd,
}  # fmt: skip


def _python(value):
    return value.item() if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 else value


@dataclass
class GridResult:
    """Outputs of :func:`run_grid`, one row per finished cell, in grid order (last axis, ``"seed"``, fastest).

    Attributes:
      axes: name -> list of values, the grid's axes in order, ``"seed"`` last.
      index: (n_cells, n_axes) int array; ``axes[name][index[i, k]]`` is cell ``i``'s value on axis ``k``.
      outputs: name -> numpy array with leading axis n_cells (nested output dicts are flattened to ``"a/b"``).
        If a static axis changes an output's shape, that output is an object array of per-cell arrays.
      static: names of the static axes.
      complete: False when the run was interrupted; only finished cells are present then.
      info: run facts: ``n_devices``, ``chunk_size`` (cells per compiled call), ``n_chunks``, ``padded_cells``,
        ``output_devices`` (devices the outputs were spread over), ``programs`` (compiled programs), ``seconds``.

    Example::

        res.best("final_loss")                       # the row with the smallest final loss
        rows, cols, table = res.pivot("lr", "b2", "final_loss")
        res.aggregate(over="seed")                   # final_loss_mean / _std / _min / _max / _nonfinite per lr, b2
        res.outputs["loss"][res.where(lr=0.1)]       # (n_seeds, T) curves of one learning rate
    """

    axes: dict[str, list]
    index: np.ndarray
    outputs: dict[str, np.ndarray]
    static: tuple[str, ...] = ()
    complete: bool = True
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def cells(self) -> list[dict]:
        """One dict axis -> value per cell."""
        names = list(self.axes)
        return [{n: self.axes[n][j] for n, j in zip(names, row)} for row in self.index.tolist()]

    @property
    def scalar_outputs(self) -> list[str]:
        """Names of outputs holding one scalar per cell (the columns of the flat table)."""
        return [k for k, v in self.outputs.items() if v.ndim == 1 and v.dtype != object]

    def _column(self, metric: str) -> np.ndarray:
        if metric not in self.scalar_outputs:
            raise ValueError(f"metric must be a scalar output, one of {self.scalar_outputs}; got {metric!r}")
        return np.asarray(self.outputs[metric], dtype=np.float64)

    def _axis(self, name: str, arg: str) -> int:
        if name not in self.axes:
            raise ValueError(f"{arg} must be one of the axes {list(self.axes)}; got {name!r}")
        return list(self.axes).index(name)

    def to_rows(self) -> list[dict]:
        """The flat table: per cell, its axis values and every scalar output (NaN stays NaN; arrays are left out)."""
        scalars = self.scalar_outputs
        return [
            {**cell, **{k: _python(self.outputs[k][i]) for k in scalars}} for i, cell in enumerate(self.cells)
        ]

    def to_csv(self, path) -> None:
        """Write :meth:`to_rows` as CSV (atomically); NaN is written as ``nan``."""
        _atomic.write_csv(path, self.to_rows())

    def to_json(self, path) -> None:
        """Write :meth:`to_rows` as a JSON list (atomically); NaN/inf use Python's ``NaN``/``Infinity`` tokens."""
        _atomic.write_json(path, self.to_rows())

    def best(self, metric: str, mode: str = "min") -> dict:
        """The row (as in :meth:`to_rows`) with the smallest (``mode="min"``) or largest finite ``metric``."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        values = self._column(metric)
        finite = np.isfinite(values)
        if not finite.any():
            raise ValueError(f"no cell has a finite {metric!r}")
        ranked = np.where(finite, values if mode == "min" else -values, np.inf)
        i = int(np.argmin(ranked))
        return {**self.cells[i], **{k: _python(self.outputs[k][i]) for k in self.scalar_outputs}}

    def pivot(self, row_axis: str, col_axis: str, metric: str, agg="mean") -> tuple[list, list, np.ndarray]:
        """A (rows × cols) table of ``metric`` aggregated over every other axis, e.g. for a heatmap.

        ``agg`` is one of ``mean, median, min, max, std`` (NaN propagates: a diverged seed shows), their ``nan*``
        versions, or a callable on a 1-D array. Empty combinations (interrupted grid) are NaN.
        Returns ``(row_values, col_values, matrix)``.
        """
        r, c = self._axis(row_axis, "row_axis"), self._axis(col_axis, "col_axis")
        if r == c:
            raise ValueError(f"row_axis and col_axis must differ, both are {row_axis!r}")
        reduce = agg if callable(agg) else _AGGREGATES.get(agg)
        if reduce is None:
            raise ValueError(f"agg must be a callable or one of {sorted(_AGGREGATES)}; got {agg!r}")
        values = self._column(metric)
        rows, cols = self.axes[row_axis], self.axes[col_axis]
        table = np.full((len(rows), len(cols)), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN groups are NaN by design
            for i in range(len(rows)):
                for j in range(len(cols)):
                    chosen = values[(self.index[:, r] == i) & (self.index[:, c] == j)]
                    if chosen.size:
                        table[i, j] = reduce(chosen)
        return list(rows), list(cols), table

    def aggregate(self, over: str | Sequence[str] = SEED_AXIS) -> list[dict]:
        """Statistics of every scalar output over the axes ``over``, per combination of the remaining axes.

        Each row holds the remaining axis values, ``n_cells``, and per metric ``<m>_mean``, ``<m>_std`` (population),
        ``<m>_min``, ``<m>_max`` over its finite values and ``<m>_nonfinite`` (count of NaN/inf cells, never dropped
        silently; the statistics are NaN when no value is finite).
        """
        over = (over,) if isinstance(over, str) else tuple(over)
        cols = {self._axis(name, "over") for name in over}
        keep = [k for k in range(len(self.axes)) if k not in cols]
        names = list(self.axes)
        keys = self.index[:, keep]
        out = []
        for key in sorted({tuple(k) for k in keys.tolist()}):
            chosen = np.all(keys == np.asarray(key, dtype=keys.dtype), axis=1)
            row: dict[str, Any] = {names[k]: self.axes[names[k]][j] for k, j in zip(keep, key)}
            row["n_cells"] = int(chosen.sum())
            for metric in self.scalar_outputs:
                values = self._column(metric)[chosen]
                finite = values[np.isfinite(values)]
                stats = (finite.mean(), finite.std(), finite.min(), finite.max()) if finite.size else (np.nan,) * 4
                row.update({f"{metric}_{s}": float(v) for s, v in zip(("mean", "std", "min", "max"), stats)})
                row[f"{metric}_nonfinite"] = int(values.size - finite.size)
            out.append(row)
        return out

    def where(self, **axis_values) -> np.ndarray:
        """Boolean mask over cells: each axis equals the given value (a list or set means any of its values)."""
        mask = np.ones(len(self), dtype=bool)
        for name, wanted in axis_values.items():
            k = self._axis(name, "axis name")
            wanted = list(wanted) if isinstance(wanted, (list, set, frozenset)) else [wanted]
            positions = []
            for value in wanted:
                hits = [j for j, v in enumerate(self.axes[name]) if v is value or _equal(v, value)]
                if not hits:
                    raise ValueError(f"{name}={value!r} is not on the axis; its values are {self.axes[name]}")
                positions += hits
            mask &= np.isin(self.index[:, k], positions)
        return mask


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False
