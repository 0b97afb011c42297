import csv
import json
import math

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
