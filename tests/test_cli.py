import subprocess
import sys

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
