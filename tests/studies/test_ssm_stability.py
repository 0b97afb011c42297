"""Lab note 003's study: shipped configs load and round-trip, bad ones are named, the quick run writes its files."""

import json
from pathlib import Path

import numpy as np
import pytest

from optlab.cli import main
from optlab.engine.grid_result import GridResult
from optlab.studies import config as cfg
from optlab.studies import get, grid_parts
from optlab.studies import ssm_stability as st

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ssm"
NAMES = ("test_old", "test", "max_aggression_old", "max_aggression", "emergency_fallback")
# a run smaller than --quick: two training programs (the recipe's model with its own solver, the real twin; the
# other-solver program and the join are tested on their own below); 2 switches (test_old -> test differ in all
# six; the test pins four of them). log_every=1: one copy of the training step per program
SHRINK = [a for kv in ("layers=1", "train_steps=4", "log_every=1", "seeds=2", "delay=2", "copy_len=1", "n_examples=4",
                       "batch_size=4", "width=4", "state=2", "sweep_tols=0.001", "solvers=exact", "sweep_iters=2",
                       "lr_grid=0.001", "n_boot=10") for a in ("--set", kv)]


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


def test_one_recipe_program_splits_back_into_the_experiments():
    # a fake recipe grid whose outputs are the recipe each cell received: every part must read back its own recipes
    config = cfg.load(st.SSMStabilityConfig, path=CONFIGS / "test.yaml")
    parts = st.recipe_parts(config)
    recipes = [r for _, _, rs in parts for r in rs]
    n, seeds = len(recipes), 3
    index = np.stack(np.meshgrid(np.arange(n), np.arange(seeds), indexing="ij"), -1).reshape(-1, 2)
    outputs = {k: np.asarray([float(recipes[i][k]) for i in index[:, 0]]) for k in st.RECIPE_KEYS}
    outputs["seed_out"] = index[:, 1].astype(float)
    grid = GridResult({"recipe": list(range(n)), "seed": list(range(seeds))}, index, outputs)
    out = st.split_parts(grid, parts, st.switches(config), st._numeric(st.recipe_of(config)))
    fact = out["factorial"]
    assert fact.complete and len(fact.grid) == 2 ** 6 * seeds
    for on in ([], ["learning_rate"], ["unitary_lambda", "scheduler_type"], fact.names):
        want = fact.config(on)
        for key in st.RECIPE_KEYS:
            np.testing.assert_allclose(fact.values(key, on), float(want[key]), rtol=1e-6)
        np.testing.assert_array_equal(fact.values("seed_out", on), np.arange(seeds))
    lr = out["lr_complex"]
    for value in config.lr_grid:
        np.testing.assert_allclose(lr.select(learning_rate=value).outputs["learning_rate"], value)
    fallback = out["schedulers"].select(arm=3).outputs
    assert np.all(fallback["gradient_clip"] == st.NOTE_RECIPES["emergency_fallback"]["gradient_clip"])
    own = out["solvers_own"]
    assert own.axes["solver"] == [config.solver]
    np.testing.assert_allclose(own.select(unitary_lambda=0.0).outputs["unitary_lambda"], 0.0)
    # joined with another solver's grid along "solver", in the config's order
    other = GridResult({"solver": ["cg"], **{k: v for k, v in own.axes.items() if k != "solver"}}, own.index,
                       {k: v + 100.0 for k, v in own.outputs.items()})
    both = grid_parts.concat([other, own], "solver", [config.solver, "cg"])
    assert both.axes["solver"] == [config.solver, "cg"] and len(both) == 2 * len(own)
    np.testing.assert_array_equal(both.select(solver="cg").outputs["seed_out"], own.outputs["seed_out"] + 100.0)
    np.testing.assert_array_equal(both.select(solver=config.solver).outputs["seed_out"], own.outputs["seed_out"])
    assert [tuple(r) for r in both.index] == sorted(tuple(r) for r in both.index)  # grid order


def test_an_interrupted_recipe_grid_is_not_split():
    config = cfg.load(st.SSMStabilityConfig, path=CONFIGS / "test.yaml")
    grid = GridResult({"recipe": [0, 1], "seed": [0]}, np.zeros((1, 2), int), {"x": np.zeros(1)}, complete=False)
    assert set(st.split_parts(grid, st.recipe_parts(config), st.switches(config), {})) == {"recipes"}


def test_cli_run_with_a_shipped_config_writes_its_files(tmp_path):
    # the whole study at a tiny size; --quick's own size is timed in the issue note (CPU-bound: ~1 min)
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
    grids = {row["grid"] for row in json.loads((out / "results.json").read_text())["rows"]}
    assert grids == {"factorial", "solvers", "lr_grid", "schedulers", "solve_sweep"}


def test_monotone_after_warmup_counts_rises_only_after_the_warmup():
    from optlab.studies.ssm_stability_claims import monotone_after

    steps = np.array([0, 10, 20, 30])
    traces = np.array([[1.0, 3.0, 2.0, 1.0],     # rises only inside the warm-up: monotone after step 10
                       [3.0, 2.0, 2.5, 1.0],     # one rise of 2 intervals after step 10
                       [3.0, 2.0, np.nan, 1.0]])  # a NaN breaks monotone
    assert monotone_after(traces, steps, 10) == (1, 3, 0.5, 2)
    assert monotone_after(traces, steps, 0)[0] == 0  # counted from step 0, the first seed rises too
    assert monotone_after(traces, steps, 40)[3] == 0  # no row after the warm-up: nothing to test


@pytest.mark.parametrize("losses, verdict", [
    # (complex row, real-twin row) of final losses over lr 1e-3, 1e-2, 1e-1
    (([2.0, 1.0, 3.0], [3.0, 1.0, 2.0]), "refuted"),       # both optima inside the grid: ratio 1, measured
    (([2.0, 3.0, 1.0], [3.0, 2.0, 1.0]), "inconclusive"),  # both at the last lr: a bound, not an optimum
])
def test_lr_ratio_needs_both_optima_inside_the_grid(losses, verdict):
    from optlab.engine.grid_result import GridResult
    from optlab.studies.ssm_stability_claims import _lr

    index = np.array([[m, j, 0] for m in range(2) for j in range(3)])
    grid = GridResult({"model": ["complex", "real twin"], "learning_rate": [1e-3, 1e-2, 1e-1], "seed": [0]}, index,
                      {"final_loss": np.asarray(losses, float).ravel()})
    claim = _lr(None, grid).claims[0]
    assert claim.verdict == verdict
    assert ("grid's edge" in claim.measured) == (verdict == "inconclusive")
