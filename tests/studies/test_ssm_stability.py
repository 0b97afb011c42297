"""Lab note 003's study: shipped configs load and round-trip, bad ones are named, the quick run writes its files."""

from pathlib import Path

import pytest

from optlab.cli import main
from optlab.studies import config as cfg
from optlab.studies import get
from optlab.studies import ssm_stability as st

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ssm"
NAMES = ("test_old", "test", "max_aggression_old", "max_aggression", "emergency_fallback")
# a run smaller than --quick: 2 switches (test_old -> test differ in all six; --set pins four of them)
SHRINK = ["--set", "layers=1", "--set", "train_steps=5", "--set", "log_every=5", "--set", "seeds=2", "--set", "delay=2", "--set", "copy_len=1",
          "--set", "n_examples=4", "--set", "batch_size=4", "--set", "width=4", "--set", "state=2",
          "--set", "sweep_tols=0.001",
          "--set", "solvers=exact", "--set", "sweep_iters=2", "--set", "lr_grid=0.001", "--set", "n_boot=10"]


def test_registered_under_its_cli_name():
    assert get("ssm-stability") is st.STUDY


@pytest.mark.parametrize("name", NAMES)
def test_shipped_config_loads_with_the_note_values_and_round_trips(name, tmp_path):
    config = cfg.load(st.SSMStabilityConfig, path=CONFIGS / f"{name}.yaml")
    for key, value in st.NOTE_RECIPES[name].items():
        assert getattr(config, key) == value, key
    (tmp_path / "c.yaml").write_text(cfg.dump(config))
    assert cfg.load(st.SSMStabilityConfig, path=tmp_path / "c.yaml") == config


@pytest.mark.parametrize("text, words", [
    ("learning_rat: 0.1\n", ["unknown key 'learning_rat'", "allowed:", "learning_rate"]),
    ("warmup_steps: fifty\n", ["warmup_steps"]),
    ("gradient_clip: -1.0\n", ["gradient_clip", "> 0"]),
    ("scheduler_type: linear\n", ["scheduler_type", "wsd", "cosine", "constant"]),
])
def test_bad_config_names_file_key_and_allowed_values(text, words, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises((ValueError, TypeError)) as err:
        cfg.load(st.SSMStabilityConfig, path=path)
    message = str(err.value)
    assert "bad.yaml" in message
    for word in words:
        assert word in message


def test_switches_are_the_keys_that_differ():
    config = cfg.load(st.SSMStabilityConfig, path=CONFIGS / "test.yaml")
    assert [s.name for s in st.switches(config)] == list(st.RECIPE_KEYS)
    fallback = cfg.load(st.SSMStabilityConfig, path=CONFIGS / "emergency_fallback.yaml")
    assert "weight_decay" not in [s.name for s in st.switches(fallback)]  # the fallback keeps test's 0.01


@pytest.mark.slow  # five compiled training programs: ~50 s on a loaded 2-core machine (was 337 s)
def test_cli_run_with_a_shipped_config_writes_its_files(tmp_path):
    out = tmp_path / "run"
    pins = ["--set", "weight_decay=0.1", "--set", "warmup_steps=50", "--set", "gradient_clip=1.0",
            "--set", "scheduler_type=wsd"]  # only learning_rate and unitary_lambda stay switches: 4 recipes
    assert main(["run", "ssm-stability", "--quick", "--config", str(CONFIGS / "test.yaml"), "--out", str(out),
                 *SHRINK, *pins]) == 0
    for name in ("report.md", "results.csv", "results.json", "config.yaml", "shapley.png", "lr_heatmap.png",
                 "loss_and_unitarity.png", "solver_residual.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "untestable as stated" in report and "Shapley" in report
