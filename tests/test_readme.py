"""The README's Python example runs as written and does what its comment says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    loss = float(re.search(r"loss ([0-9.e+-]+)", printed).group(1))
    assert loss < 1e-3, printed


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
