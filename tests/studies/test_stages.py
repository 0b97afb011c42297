"""run_stages: grids in order, rows tagged by stage, stop at the first incomplete one."""

import numpy as np
import pytest

from optlab.engine.grid_result import GridResult
from optlab.engine.interrupt import GridInterrupted
from optlab.studies import stages
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


def test_cached_stage_keeps_a_complete_result_and_loads_it_without_running(tmp_path):
    path = tmp_path / "stages" / "fixes.pkl"
    calls = []

    def make():
        calls.append(1)
        return {"a": _grid(3)}

    first = stages.cached_stage(path, make, key="combo 1")
    again = stages.cached_stage(path, make, key="combo 1")
    assert len(calls) == 1 and path.is_file()
    np.testing.assert_array_equal(again["a"].outputs["loss"], first["a"].outputs["loss"])
    assert again["a"].axes == first["a"].axes and again["a"].complete
    stages.cached_stage(path, make, key="combo 2")  # another choice upstream: the stage runs again
    assert len(calls) == 2


def test_cached_stage_never_keeps_an_interrupted_grid(tmp_path):
    path = tmp_path / "hyp.pkl"
    stages.cached_stage(path, lambda: _grid(2, complete=False))
    assert not path.exists()


def test_cached_stage_runs_again_over_a_torn_file(tmp_path):
    path = tmp_path / "fixes.pkl"
    path.write_bytes(b"\x80\x04 torn")
    with pytest.warns(RuntimeWarning, match="cannot read the kept stage result"):
        out = stages.cached_stage(path, lambda: _grid(2))
    assert len(out) == 2
    assert stages.cached_stage(path, lambda: pytest.fail("ran again")).outputs["loss"].tolist() == [0.0, 1.0]
