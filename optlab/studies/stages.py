"""A study's grids run one after another, stopping at the first one a Ctrl-C cut short.

Every multi-grid study does the same thing between its grids: run the next one (or take the empty result of a grid
an earlier interrupt refused to start), append its rows tagged with the stage name, count its cells, and stop at the
first incomplete grid so that no claim is computed from missing cells. :func:`run_stages` does it once.

Example::

    run = run_stages((("factorial", lambda: factorial(config)), ("lr", lambda: lr_grid(config))))
    if run.stopped is not None:
        return StudyResult(..., [interrupted_section(run)], rows=run.rows, complete=False, cells_done=run.done, ...)
    sections = make_sections(run.results["factorial"], run.results["lr"])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from optlab.engine.grid_result import GridResult
from optlab.engine.interrupt import GridInterrupted
from optlab.studies.base import Section


class StageRun(NamedTuple):
    """What :func:`run_stages` returns."""

    results: dict[str, Any]  # stage name -> what its function returned (complete stages only)
    rows: list[dict]  # every finished cell's row, tagged {"grid": stage name}, in run order
    done: int  # finished cells over all stages run
    stopped: tuple[str, int] | None  # (stage name, its finished cells) of the interrupted stage, None when complete


def _grids(out: Any) -> list[GridResult]:
    # a stage returns a GridResult, an object holding one (.grid, e.g. an ablation) or a dict of them (one per arm)
    if isinstance(out, Mapping):
        return [g for value in out.values() for g in _grids(value)]
    return [out.grid if hasattr(out, "grid") else out]


def run_stages(stages: Sequence[tuple[str, Callable[[], Any]]], *,
               row: Callable[[dict], dict] = lambda r: r) -> StageRun:
    """Runs ``(name, make)`` stages in order; ``row`` maps each cell row (e.g. to drop trace columns)."""
    results, rows, done = {}, [], 0
    for name, make in stages:
        try:
            out = make()
        except GridInterrupted as stopped:  # an earlier Ctrl-C: this grid never started
            out = stopped.result
        grids = _grids(out)
        rows += [{"grid": name, **row(r)} for grid in grids for r in grid.to_rows()]
        done += sum(len(grid) for grid in grids)
        if not all(grid.complete for grid in grids):
            return StageRun(results, rows, done, (name, len(grids[-1])))
        results[name] = out
    return StageRun(results, rows, done, None)


def interrupted_section(run: StageRun) -> Section:
    """The report section of an interrupted run: which grid stopped and how many of its cells finished."""
    name, finished = run.stopped
    return Section(f"{name}: interrupted", f"{finished} cells finished; no claim is computed.")
