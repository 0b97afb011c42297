import csv
import json
import math
import os
import signal
import time

import numpy as np
import pytest

from optlab import report
from optlab.studies import base


def test_write_report_writes_every_file(tiny_study, tmp_path):
    result = tiny_study.run(tiny_study.config_cls())
    paths = report.write_report(result, tmp_path / "out", command="optlab run tiny")
    for name in ("report.md", "results.csv", "results.json", "tiny_loss.png", "tiny_heat.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
        assert name in paths
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| experiment | claim | claimed (note) | measured (optlab) | verdict |" in text
    assert "✅ confirmed" in text and "![tiny_loss.png](tiny_loss.png)" in text
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 4 and set(rows[0]) == {"lr", "seed", "final"}
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["claims"][0]["verdict"] == "confirmed"
    assert not list((tmp_path / "out").glob(".*.tmp")), "temporary files left behind"


def test_non_finite_values_are_written_as_names(tmp_path):
    result = base.StudyResult("x", "x", {"a": 1}, [], rows=[{"v": float("nan")}, {"v": float("inf"), "w": 2}])
    report.write_report(result, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert rows[0]["v"] == "nan" and rows[1]["v"] == "inf" and rows[0]["w"] == ""
    assert math.isnan(json.loads((tmp_path / "results.json").read_text())["rows"][0]["v"])


def test_markdown_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 cells"):
        report.markdown_table(["a", "b", "c"], [[1, 2]])


def test_claim_rejects_unknown_verdict():
    with pytest.raises(ValueError, match="verdict must be one of"):
        base.Claim("1", "c", "x", "y", "maybe")


def test_figure_names_must_be_png(tmp_path):
    section = base.Section("s", figures={"plot.jpg": object()})
    with pytest.raises(ValueError, match="must end with .png"):
        report.write_report(base.StudyResult("x", "x", {}, [section]), tmp_path)


def test_each_claim_row_appears_once(tiny_study, tmp_path):
    result = tiny_study.run(tiny_study.config_cls())
    text = report.render_markdown(result)
    assert text.count("| 1 | loss halves each step |") == 1
    assert text.count("| experiment | claim |") == 1
    assert "*loss halves each step* (✅ confirmed): closed form" in text  # the section keeps the detail


def _interrupted(**kw):
    claim = base.Claim("5", "fix 3 removes the zig-zag", "a fix", "rise/drop 0.5", "confirmed", detail="d")
    return base.StudyResult("x", "Title", {"seeds": 2}, [base.Section("Experiment 5", claims=[claim])],
                            rows=[{"a": 1}], complete=False, **kw)


def test_interrupted_run_says_so_first_and_computes_no_verdict(tmp_path):
    report.write_report(_interrupted(cells_done=42, cells_total=54), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.splitlines()[0].startswith("INCOMPLETE: 42 of 54 cells")
    assert "confirmed" not in text and text.count("⏸ inconclusive (incomplete)") == 2  # table row + detail
    assert "(partial run) rise/drop 0.5" in text
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["complete"] is False and (payload["cells_done"], payload["cells_total"]) == (42, 54)
    assert [c["verdict"] for c in payload["claims"]] == [base.INCOMPLETE]
    summary = report.verdict_summary(_interrupted(cells_done=42, cells_total=54)).splitlines()
    assert summary[0].startswith("INCOMPLETE: 42 of 54 cells") and summary[1].startswith(base.INCOMPLETE)


def test_interrupted_run_without_a_cell_count_still_says_so():
    assert report.render_markdown(_interrupted()).startswith("INCOMPLETE: cell count unknown. The run was")


def test_complete_run_has_no_incomplete_line(tiny_study):
    assert report.render_markdown(tiny_study.run(tiny_study.config_cls())).startswith("# A tiny study")


@pytest.mark.parametrize(("value", "text"), [
    (None, "—"), (-0.0, "0"), ((0.1, 0.2), "0.1, 0.2"), (np.array([1.5, 2.0]), "1.5, 2"), ("a|b", "a\\|b"),
    ("line\nbreak", "line break"), (np.float32(0.123456), "0.1235"),
    ("converged 1, plateaued 0, diverged 2, nan 0", "converged 1, plateaued 0, diverged 2, nan 0"),
    ("0.51 ± 0.02 (n = 8)", "0.51 ± 0.02 (n = 8)"),
])
def test_cells_are_rendered_not_garbled(value, text):
    assert report.markdown_table(["v"], [[value]]).splitlines()[2] == f"| {text} |"


def test_qualified_verdicts_are_accepted_and_marked():
    for verdict in ("refuted (inconsistent)", "untestable as stated", base.INCOMPLETE):
        assert verdict in report.claims_table([base.Claim("1", "c", "x", "y", verdict)])


def test_ctrl_c_while_writing_finishes_the_files_then_raises(tiny_study, tmp_path, monkeypatch):
    from optlab.engine import interrupt

    real, pressed = report.plot.annotate_legends, []

    def press_ctrl_c(fig):  # once, while the first figure is written
        if not pressed:
            pressed.append(os.kill(os.getpid(), signal.SIGINT))
            time.sleep(0.01)
        real(fig)

    monkeypatch.setattr(report.plot, "annotate_legends", press_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            report.write_report(tiny_study.run(tiny_study.config_cls()), tmp_path)
    finally:
        interrupt.reset_interrupt()
    assert {p.name for p in tmp_path.iterdir()} == {"report.md", "results.csv", "results.json", "tiny_loss.png",
                                                   "tiny_heat.png"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
