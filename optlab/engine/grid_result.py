"""GridResult: the table a grid leaves behind — select, table, pivot, count, aggregate, heatmap, CSV / JSON, pandas.

Example::

    res = run_grid(cell, {"optimizer": ["sgd", "adam"], "lr": [0.1, 1.0]}, seeds=8)
    adam = res.select(optimizer="adam")                       # a smaller GridResult: 2 lr × 8 seeds
    adam.table(by="lr", metrics=["final_loss"], stat="median")  # one row per lr: n_cells, final_loss
    res.count("verdict", by="optimizer", labels=VERDICTS)     # categories are counted, never averaged
    rows, cols, matrix = res.pivot("optimizer", "lr", "final_loss", agg="median", where={"seed": [0, 1]})
    figure = res.heatmap("optimizer", "lr", "final_loss", agg="median", log=True)
    frame = res.to_pandas()                                   # needs the optional pandas extra
"""

from __future__ import annotations

import dataclasses
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
        res.select(b2=0.99).table(by="lr", stat="median")  # median of every scalar output per lr
        res.count("verdict", by="lr", labels=VERDICTS)     # category counts per lr
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

    def pivot(self, row_axis: str, col_axis: str, metric: str, agg="mean",
              where: dict | None = None) -> tuple[list, list, np.ndarray]:
        """A (rows × cols) table of ``metric`` aggregated over every other axis, e.g. for a heatmap.

        ``agg`` is one of ``mean, median, min, max, std`` (NaN propagates: a diverged seed shows), their ``nan*``
        versions, or a callable on a 1-D array. Empty combinations (interrupted grid) are NaN. ``where`` restricts
        the cells first, as :meth:`select` (e.g. ``where={"scaling": "global"}``).
        Returns ``(row_values, col_values, matrix)``.
        """
        if where:
            return self.select(**where).pivot(row_axis, col_axis, metric, agg=agg)
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

    def groups(self, by: str | Sequence[str] = ()) -> list[tuple[dict, np.ndarray]]:
        """The combinations of the ``by`` axes present in the grid, in grid order, each with its boolean cell mask.

        ``by=()`` gives one group holding every cell. Example: ``for key, mask in res.groups("lr"): ...`` with
        ``key == {"lr": 0.1}``.
        """
        by = (by,) if isinstance(by, str) else tuple(by)
        cols = {name: self._axis(name, "by") for name in by}
        ordered = sorted(cols, key=cols.get)  # grid order (as aggregate) whatever order ``by`` lists the axes in
        keys = self.index[:, [cols[name] for name in ordered]]
        out = []
        for key in sorted({tuple(k) for k in keys.tolist()}):
            mask = np.all(keys == np.asarray(key, dtype=keys.dtype), axis=1)
            values = dict(zip(ordered, key))
            out.append(({name: self.axes[name][values[name]] for name in by}, mask))
        return out

    def select(self, **axis_values) -> GridResult:
        """The cells where each axis equals the given value (a list or set: any of them), as a smaller GridResult.

        Every axis stays an axis (a selected one keeps only its chosen values), so ``pivot``, ``aggregate``,
        ``table`` and ``count`` work on the result as on a whole grid. Example:
        ``res.select(optimizer="adam", lr=[0.1, 1.0]).aggregate()``.
        """
        mask = self.where(**axis_values)
        index = self.index[mask]
        axes, columns = {}, []
        for k, (name, values) in enumerate(self.axes.items()):
            kept = sorted(set(index[:, k].tolist())) if name in axis_values else list(range(len(values)))
            axes[name] = [values[j] for j in kept]
            lookup = np.full(len(values), -1, dtype=index.dtype)
            lookup[kept] = np.arange(len(kept), dtype=index.dtype)
            columns.append(lookup[index[:, k]])
        new_index = np.stack(columns, axis=1) if columns else index
        outputs = {k: v[mask] for k, v in self.outputs.items()}
        return dataclasses.replace(self, axes=axes, index=new_index.reshape(len(index), len(axes)), outputs=outputs,
                                   info=dict(self.info))

    def table(self, by: str | Sequence[str] = (), metrics: Sequence[str] | None = None, stat="mean") -> list[dict]:
        """One row per combination of the ``by`` axes: the axis values, ``n_cells`` and ``stat`` of each metric.

        Built on :meth:`aggregate` (statistics over every axis not in ``by``, finite values only, plus
        ``<m>_nonfinite``). ``stat`` is ``"mean"``, ``"std"``, ``"min"``, ``"max"`` (taken from :meth:`aggregate`),
        ``"median"``, or a callable on the 1-D array of a group's values (NaN included: it decides); ``metrics``
        defaults to every scalar output. A ``-1`` "never" marker is a number here: use
        :func:`optlab.studies.summary.reached` for steps-to-floor columns and :meth:`count` for categories.

        Example: ``res.table(by=["optimizer", "lr"], metrics=["final_loss"], stat="median")``.
        """
        by = (by,) if isinstance(by, str) else tuple(by)
        metrics = list(self.scalar_outputs if metrics is None else ([metrics] if isinstance(metrics, str) else metrics))
        for metric in metrics:
            self._column(metric)  # validates the name before any work
        if not callable(stat) and stat not in ("mean", "std", "min", "max", "median"):
            raise ValueError(f"stat must be 'mean', 'std', 'min', 'max', 'median' or a callable; got {stat!r}")
        over = [name for name in self.axes if name not in by]
        summary = self.aggregate(over=over) if stat in ("mean", "std", "min", "max") else None
        rows = []
        for i, (key, mask) in enumerate(self.groups(by)):
            row: dict[str, Any] = {**key, "n_cells": int(mask.sum())}
            for metric in metrics:
                values = self._column(metric)[mask]
                finite = values[np.isfinite(values)]
                if summary is not None:  # same grid order as groups()
                    row[metric] = summary[i][f"{metric}_{stat}"]
                elif callable(stat):
                    row[metric] = _python(np.asarray(stat(values)))
                else:
                    row[metric] = float(np.median(finite)) if finite.size else float("nan")
                row[f"{metric}_nonfinite"] = int(values.size - finite.size)
            rows.append(row)
        return rows

    def count(self, name: str, by: str | Sequence[str] | None = None, labels: Sequence[str] | None = None):
        """How many cells hold each category of the output ``name`` (a verdict is a category: counted, not averaged).

        The output holds integer codes (``labels[code]`` names them; every label is counted, zeros included) or
        strings / other values (each distinct value is its own category, in first-seen order).

        Returns:
          ``{category: count}`` for ``by=None``; else one dict per combination of the ``by`` axes with the axis
          values, ``n_cells`` and the counts under ``"counts"``.

        Example: ``res.count("verdict", labels=diagnostics.VERDICTS)`` →
        ``{"converged": 5, "plateaued": 1, "diverged": 2, "nan": 0}``.
        """
        if name not in self.outputs or self.outputs[name].ndim != 1:
            names = [k for k, v in self.outputs.items() if v.ndim == 1]
            raise ValueError(f"name must be a one-value-per-cell output, one of {names}; got {name!r}")
        column = self.outputs[name]
        if labels is not None:
            labels = list(labels)
            if not np.issubdtype(column.dtype, np.integer):
                raise TypeError(f"labels need integer codes, but output {name!r} has dtype {column.dtype}")
            if column.size and (column.min() < 0 or column.max() >= len(labels)):
                raise ValueError(f"output {name!r} holds codes outside [0, {len(labels)}) of the {len(labels)} labels")
            categories = list(range(len(labels)))
        else:
            categories = list(dict.fromkeys(_python(v) for v in column.tolist()))

        def counts(mask):
            chosen = column[mask].tolist()
            return {(labels[c] if labels is not None else c): sum(1 for v in chosen if v == c) for c in categories}

        if by is None:
            return counts(np.ones(len(self), bool))
        return [{**key, "n_cells": int(mask.sum()), "counts": counts(mask)} for key, mask in self.groups(by)]

    def heatmap(self, row_axis: str, col_axis: str, metric: str, agg="median", where: dict | None = None,
                **plot_kw):
        """A figure of :meth:`pivot` (``metric`` by ``agg`` over every other axis), drawn by ``optlab.plot.heatmap``.

        ``plot_kw`` go to ``optlab.plot.heatmap`` (``title``, ``fmt``, ``log``, ``cmap``); the axis names label the
        axes. Example: ``res.heatmap("optimizer", "lr", "final_loss", log=True, title="median final loss")``.
        """
        rows, cols, matrix = self.pivot(row_axis, col_axis, metric, agg=agg, where=where)
        # Imported on call, the one sanctioned upward import (tests/test_architecture.py): importing the engine
        # never loads matplotlib, and figures stay drawn by the plotting layer alone.
        from optlab import plot
        plot_kw = {"title": metric, "xlabel": col_axis, "ylabel": row_axis, **plot_kw}
        return plot.heatmap(matrix, rows, cols, **plot_kw)

    def to_pandas(self):
        """:meth:`to_rows` as a ``pandas.DataFrame`` (pandas is an optional extra: ``pip install optlab[pandas]``)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("GridResult.to_pandas needs pandas: pip install 'optlab[pandas]'") from None
        return pandas.DataFrame(self.to_rows(), columns=[*self.axes, *self.scalar_outputs])

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
