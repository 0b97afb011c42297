"""run_stages: grids in order, rows tagged by stage, stop at the first incomplete one."""

import numpy as np

from optlab.engine.grid_result import GridResult
from optlab.engine.interrupt import GridInterrupted
from optlab.studies.stages import interrupted_section, run_stages


def _grid(n: int, complete: bool = True) -> GridResult:
    return GridResult({"lr": list(range(n))}, np.arange(n)[:, None], {"loss": np.arange(n, dtype=float)},
                      complete=complete)


class _Holder:  # what an ablation looks like to run_stages: an object with .grid
    def __init__(self, grid):
        self.grid = grid


def test_complete_stages_keep_every_result_and_tag_rows():
    run = run_stages((("a", lambda: _grid(2)), ("b", lambda: {"x": _grid(1), "y": _Holder(_grid(3))})),
                     row=lambda r: {"loss": r["loss"]})
    assert run.stopped is None and run.done == 6 and set(run.results) == {"a", "b"}
    assert [r["grid"] for r in run.rows] == ["a"] * 2 + ["b"] * 4 and set(run.rows[0]) == {"grid", "loss"}


def test_an_incomplete_stage_stops_the_run_before_the_next():
    later = []
    run = run_stages((("a", lambda: _grid(2)), ("b", lambda: _grid(1, complete=False)),
                      ("c", lambda: later.append(1) or _grid(4))))
    assert run.stopped == ("b", 1) and run.done == 3 and set(run.results) == {"a"} and not later
    assert interrupted_section(run).title == "b: interrupted"


def test_a_refused_grid_counts_as_its_empty_result():
    def refused():
        raise GridInterrupted("earlier Ctrl-C", result=_grid(0, complete=False))

    run = run_stages((("a", lambda: _grid(2)), ("b", refused)))
    assert run.stopped == ("b", 0) and run.done == 2 and len(run.rows) == 2
