"""User story 2 end to end, as the README tells it: a run diverges, its best checkpoint is found, and four fixes
resumed from it run as one grid whose table says which fix held."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"
TITLE = "## Example: resume from the best checkpoint with four fixes as one grid"


def test_readme_story2_finds_the_onset_and_only_cosine_decay_holds(tmp_path, monkeypatch, capsys):
    section = README.read_text().split(TITLE, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert sum(1 for line in code.splitlines() if line.strip()) <= 20  # the story fits in 20 lines
    monkeypatch.chdir(tmp_path)  # the example writes ./ckpt
    namespace: dict = {}
    exec(compile(code, "README.md (story 2)", "exec"), namespace)

    d = namespace["d"]
    assert int(d.onset_step) > int(d.best_step) >= 0  # a real divergence after a real best point
    best = namespace["best"]
    assert int(best.step) % 10 == 0 and int(best.step) <= int(d.onset_step) + 10  # a saved state near the best
    assert float(best.best_loss) < 1.0
    rows = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines() if "held=" in line}
    assert set(rows) == {"cosine", "clip", "moment reset", "sgd"}
    held = {fix: "held=True" in line for fix, line in rows.items()}
    assert held == {"cosine": True, "clip": False, "moment reset": False, "sgd": False}
    losses = {fix: float(line.rsplit(" ", 1)[1]) for fix, line in rows.items()}
    assert losses["cosine"] <= 1.05 * float(d.best_loss) and not np.isfinite(losses["sgd"])
