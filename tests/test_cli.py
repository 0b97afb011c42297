import json
import subprocess
import sys
from pathlib import Path

import pytest

from optlab import cli


def test_list_names_every_study(tiny_study, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "a tiny geometric study" in out
    assert "newton-root" in out and "correction" in out


def test_run_writes_report_and_prints_verdicts(tiny_study, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["run", "tiny", "--quick", "--out", str(out), "--set", "rate=0.5",
                     "--grid", "learning_rates=0.1,0.3,0.5", "--seeds", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "confirmed" in printed and str(out / "report.md") in printed
    assert (out / "report.md").exists() and len(list(out.glob("*.png"))) == 2
    # 3 learning rates x 3 seeds from the overrides
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 9


@pytest.mark.parametrize("argv, message", [
    (["run", "nope"], "unknown study 'nope'; available:"),
    (["run", "tiny", "--set", "colour=red"], "unknown key 'colour' for study 'tiny'; allowed:"),
    (["run", "tiny", "--set", "steps=ten"], "steps: cannot read 'ten' as int"),
    (["run", "tiny", "--set", "rate=-1"], "rate must be > 0"),
    (["run", "tiny", "--set", "steps"], "--set expects key=value"),
    (["run", "tiny", "--grid", "steps=1,2"], "'steps' is not a grid axis"),
    (["run", "tiny", "--seeds", "0"], "--seeds must be >= 1"),
    (["run", "tiny", "--set", "flag=maybe"], "flag: cannot read 'maybe' as bool"),
])
def test_bad_input_exits_2_with_one_line(tiny_study, argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_console_script_bad_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "optlab", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr


# --- configs: config.yaml in every run folder, --config reproduces the run -------------------------------------


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_config_yaml_reproduces_the_tiny_run(tiny_study, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(["run", "tiny", "--quick", "--out", str(first), "--set", "rate=0.25", "--set", "label=x y",
                 "--grid", "learning_rates=0.1,0.7", "--seeds", "3", "--no-progress"], capsys)[0] == 0
    text = (first / "config.yaml").read_text()
    assert text.startswith("# optlab study: tiny\n") and "rate: 0.25  # geometric rate" in text
    assert _run(["run", "tiny", "--config", str(first / "config.yaml"), "--out", str(second), "--no-progress"],
                capsys)[0] == 0
    assert (second / "config.yaml").read_text() == text
    assert (second / "results.csv").read_text() == (first / "results.csv").read_text()
    assert len((first / "results.csv").read_text().splitlines()) == 1 + 2 * 3


@pytest.mark.slow
def test_config_yaml_reproduces_a_correction_run(tmp_path, capsys):
    # `correction --quick` shrunk further through --set / --grid; compile time still dominates (~15 s per run)
    first, second = tmp_path / "first", tmp_path / "second"
    # the digits accuracy section (network=false here) has its own tests in tests/studies/test_correction_study.py
    argv = ["run", "correction", "--quick", "--set", "d_in=8", "--set", "d_out=8", "--set", "n=24", "--seeds", "2",
            "--set", "network=false",
            "--grid", "magnitude=0.01,0.03", "--grid", "fraction=0.25", "--grid", "sweep=1", "--no-progress"]
    assert _run(argv + ["--out", str(first)], capsys)[0] == 0
    assert _run(["run", "correction", "--config", str(first / "config.yaml"), "--out", str(second),
                 "--no-progress"], capsys)[0] == 0
    assert (second / "results.csv").read_text() == (first / "results.csv").read_text()


def test_config_command_prints_yaml_that_loads_back(tiny_study, tmp_path, capsys):
    code, out, _ = _run(["config", "tiny", "--quick", "--set", "flag=on"], capsys)
    assert code == 0
    path = tmp_path / "mine.yaml"
    path.write_text(out)
    assert tiny_study.make_config(path=path) == tiny_study.make_config(quick=True, overrides={"flag": "true"})


@pytest.mark.parametrize("text, message", [
    ("colour: red\n", "mine.yaml: unknown key 'colour' for study 'tiny'; allowed:"),
    ("rate: -2\n", "mine.yaml: rate must be > 0, got -2.0"),
    ("steps: [3\n", "mine.yaml: not valid YAML (line 2)"),
])
def test_bad_config_file_exits_2_naming_file_and_key(tiny_study, tmp_path, capsys, text, message):
    (tmp_path / "mine.yaml").write_text(text)
    code, _, err = _run(["run", "tiny", "--config", str(tmp_path / "mine.yaml"), "--out", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "correction", "--grid", "magnitude=inf"], "--grid: magnitude values must be finite, got inf"),
    (["run", "correction", "--set", "max_relative=nan"], "--set: max_relative must be finite, got nan"),
    (["run", "newton-root", "--set", "learning_rates=-1"], "--set: learning_rates values must be > 0, got -1.0"),
    (["run", "tiny", "--set", "rate=1", "--set", "rate=2"], "--set: 'rate' is given twice"),
])
def test_bad_values_exit_2_naming_the_key_typed(tiny_study, argv, message, capsys):
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


# --- --out is checked before the study runs ----------------------------------------------------------------------


def _recording_study(monkeypatch, tiny_study):
    calls = []
    real = tiny_study.run

    def run(config, **kwargs):
        calls.append(kwargs)
        return real(config, **kwargs)

    from optlab import studies
    study = studies.Study("tiny", tiny_study.description, tiny_study.config_cls, run)
    monkeypatch.setattr(studies, "get", lambda name: study)
    return calls


def test_out_that_cannot_hold_the_run_exits_2_before_work(tiny_study, monkeypatch, tmp_path, capsys):
    calls = _recording_study(monkeypatch, tiny_study)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for out, message in [(a_file, "is an existing file"), (a_file / "sub", "cannot be written"),
                         (other, "non-empty folder that holds no optlab run")]:
        code, _, err = _run(["run", "tiny", "--out", str(out), "--no-progress"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert calls == [] and a_file.read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_out_holding_a_run_is_reused_only_for_the_same_config(tiny_study, monkeypatch, tmp_path, capsys):
    calls = _recording_study(monkeypatch, tiny_study)
    out = tmp_path / "run"
    assert _run(["run", "tiny", "--out", str(out), "--no-progress"], capsys)[0] == 0
    assert calls[0]["run_dir"] == out  # the study gets its run folder (for checkpoints/)
    assert _run(["run", "tiny", "--out", str(out), "--no-progress"], capsys)[0] == 0  # same config: re-run
    code, _, err = _run(["run", "tiny", "--out", str(out), "--set", "steps=4", "--no-progress"], capsys)
    assert code == 2 and "holds another run" in err
    assert len(calls) == 2 and "steps: 10" in (out / "config.yaml").read_text()


# --- Ctrl-C --------------------------------------------------------------------------------------------------------


def _study_that(monkeypatch, tiny_study, run):
    from optlab import studies
    study = studies.Study("tiny", tiny_study.description, tiny_study.config_cls, run)
    monkeypatch.setattr(studies, "get", lambda name: study)


def test_ctrl_c_writes_an_incomplete_run_and_exits_130(tiny_study, monkeypatch, tmp_path, capsys):
    def run(config, *, progress=True, run_dir=None):
        raise KeyboardInterrupt

    _study_that(monkeypatch, tiny_study, run)
    code, _, err = _run(["run", "tiny", "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 130 and "Traceback" not in err and "incomplete" in err
    payload = json.loads((tmp_path / "r" / "results.json").read_text())
    assert payload["rows"] == [] and payload["config"]["steps"] == 10
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "config.yaml").exists()


def test_a_study_that_returns_an_incomplete_result_exits_130(tiny_study, monkeypatch, tmp_path, capsys):
    def run(config, *, progress=True, run_dir=None):
        result = tiny_study.run(config)
        result.complete, result.cells_done, result.cells_total, result.rows = False, 1, 4, result.rows[:1]
        return result

    _study_that(monkeypatch, tiny_study, run)
    code, _, err = _run(["run", "tiny", "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 130 and "1 of 4 cells finished" in err and "Traceback" not in err
    assert len((tmp_path / "r" / "results.csv").read_text().splitlines()) == 2
    assert "INCOMPLETE: 1 of 4 cells" in (tmp_path / "r" / "report.md").read_text()


def test_an_interrupted_grid_inside_the_study_exits_130(tiny_study, monkeypatch, tmp_path, capsys):
    # the study forgets to pass its grid's complete=False on; the CLI's interrupt scope still knows
    from optlab.engine import interrupt

    def run(config, *, progress=True, run_dir=None):
        interrupt.mark_interrupted()
        return tiny_study.run(config)

    _study_that(monkeypatch, tiny_study, run)
    assert _run(["run", "tiny", "--out", str(tmp_path / "r"), "--no-progress"], capsys)[0] == 130
    assert not interrupt.interrupt_requested()  # the scope ended with the command


# --- a user-written study file -------------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_study.py"


def test_example_user_study_runs_from_the_cli(tmp_path, capsys):
    out = tmp_path / "mine"
    code, printed, _ = _run(["run", str(EXAMPLE), "--quick", "--grid", "learning_rates=0.5,1.5,2.5",
                             "--out", str(out), "--no-progress"], capsys)
    assert code == 0 and "confirmed" in printed
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 2  # 3 learning rates x 2 quick seeds
    assert _run(["run", str(EXAMPLE), "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"),
                 "--no-progress"], capsys)[0] == 0
    assert (tmp_path / "again" / "results.csv").read_text() == (out / "results.csv").read_text()


@pytest.mark.parametrize("source, message", [
    (None, "not found"),
    ("X = 1\n", "defines no STUDY"),
    ("import math\n\nraise RuntimeError('boom')\n", "bad.py:3: importing the study failed: RuntimeError: boom"),
    ("def broken(:\n", "bad.py:1: importing the study failed: SyntaxError"),
])
def test_bad_study_file_exits_2_with_one_line(tmp_path, capsys, source, message):
    path = tmp_path / "bad.py"
    if source is not None:
        path.write_text(source)
    code, _, err = _run(["run", str(path)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
