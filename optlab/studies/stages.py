"""A study's grids run one after another, stopping at the first one a Ctrl-C cut short.

Every multi-grid study does the same thing between its grids: run the next one (or take the empty result of a grid
an earlier interrupt refused to start), append its rows tagged with the stage name, count its cells, and stop at the
first incomplete grid so that no claim is computed from missing cells. :func:`run_stages` does it once.

Example::

    run = run_stages((("factorial", lambda: factorial(config)), ("lr", lambda: lr_grid(config))))
    if run.stopped is not None:
        return StudyResult(..., [interrupted_section(run)], rows=run.rows, complete=False, cells_done=run.done, ...)
    sections = make_sections(run.results["factorial"], run.results["lr"])

A stage that should survive an interrupted run wraps its function in :func:`cached_stage` (a complete result is
kept in the run folder; the same command with the same ``--out`` loads it instead of running the grid again).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from optlab import _atomic
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


_CACHE_FORMAT = 1


def cached_stage(path: str | Path, make: Callable[[], Any], *, key: Any = None) -> Any:
    """``make()``, kept in ``path`` once complete, so that a rerun of the same run loads it instead of recomputing.

    For the long grids of a study that a user may interrupt (Ctrl-C, a kill, a machine going away): the CLI lets
    the same command run again into the same ``--out`` only when its config.yaml matches, and each stage wrapped here
    then comes back from its file, every array as it was (pickled with its numpy outputs). ``key`` is anything else
    the stage's result depends on that the config does not fix (e.g. what an earlier stage chose); a file with
    another ``key``, another format or that cannot be read is ignored (with a warning when unreadable) and the stage
    runs again. An incomplete result (an interrupted grid) is never kept.

    Example: ``run_stages((("fixes", lambda: cached_stage(run_dir / "stages" / "fixes.pkl", make_fixes)),))``.
    """
    path = Path(path)
    if path.is_file():
        try:
            stored = pickle.loads(path.read_bytes())
            if stored.get("format") == _CACHE_FORMAT and stored.get("key") == key:
                return stored["result"]
        except Exception as err:  # a torn or foreign file: run the stage again
            warnings.warn(f"{path}: cannot read the kept stage result ({err}); running the stage again",
                          RuntimeWarning, stacklevel=2)
    out = make()
    if all(grid.complete for grid in _grids(out)):
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic.write_bytes(path, pickle.dumps({"format": _CACHE_FORMAT, "key": key, "result": out}))
    return out


def interrupted_section(run: StageRun) -> Section:
    """The report section of an interrupted run: which grid stopped and how many of its cells finished."""
    name, finished = run.stopped
    return Section(f"{name}: interrupted", f"{finished} cells finished; no claim is computed.")
