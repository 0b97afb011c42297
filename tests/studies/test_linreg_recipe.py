"""The linear-regression recipe study (lab note 002): switches, the factorial cell, logging, the CLI."""

import dataclasses

import chex
import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from optlab import ablation
from optlab.cli import main
from optlab.problems import linreg_recipe as lp
from optlab.studies import get
from optlab.studies import linreg_recipe as lr

TINY = lr.LinregRecipeConfig(n=64, batch_size=16, seeds=2, lr=(1e-2, 3e-2), epochs=(2, 4), warmup=(1, 2),
                             decay_epochs=(2, 4), patience=(1, 2), log_epochs=2, switches=("lr", "shuffle", "init"))
SHRINK = ["--set", "n=64", "--set", "batch_size=16", "--set", "epochs=2,4", "--set", "warmup=1,2", "--set",
          "decay_epochs=2,4", "--set", "patience=1,2", "--set", "log_epochs=2", "--set", "grid_epochs=2",
          "--set", "grid_lrs=0.01", "--set", "switches=lr,init", "--set", "seeds=2", "--set", "precision_seeds=1",
          "--set", "precision_arms=float16,float32"]


def test_registered_under_its_cli_name():
    assert get("linreg-recipe") is lr.STUDY


@pytest.mark.parametrize("name", lr.ALL_SWITCHES)
def test_each_switch_changes_exactly_its_config(name):
    base, changed = lr.baseline(TINY), lr.recipe(TINY, [name])
    assert [k for k in base if base[k] != changed[k]] == [name]


@settings(max_examples=20, deadline=None)
@given(w=st.floats(-5, 5), b=st.floats(-5, 5), seed=st.integers(0, 100))
def test_closed_form_loss_equals_the_mse(w, b, seed):
    data = lp.make_data(jax.random.key(seed), 50)
    m1, m2 = lp.moments(data["x"])
    np.testing.assert_allclose(lp.closed_form_loss(w, b, m1, m2), lp.loss({"w": w, "b": b}, data),
                               rtol=1e-4, atol=1e-5)


def test_factorial_cell_equals_a_direct_fit():
    res = lr.factorial(TINY, progress=False)
    on = ("lr", "init")
    for seed in range(TINY.seeds):
        fit, data, p0 = lr.recipe_fit(TINY, lr.recipe(TINY, on), jax.random.key(seed))
        direct = lr.outcome(TINY, fit, data, p0)
        np.testing.assert_allclose(res.values("final_loss", on=on)[seed], direct["final_loss"], rtol=1e-5)
        np.testing.assert_allclose(res.values("w", on=on)[seed], direct["w"], rtol=1e-5)
    # shuffle off changes the batches, so the recipe changes
    assert not np.array_equal(res.values("w", on=("shuffle",)), res.values("w", on=()))


def test_logging_on_off_is_bit_identical():
    full = lr.recipe(TINY, lr.SWITCHES)
    a = lr.recipe_fit(TINY, {**full, "logging": 1}, jax.random.key(3))[0]
    b = lr.recipe_fit(TINY, {**full, "logging": TINY.log_epochs}, jax.random.key(3))[0]
    chex.assert_trees_all_equal((a.params, a.best_loss, a.stopped_at), (b.params, b.best_loss, b.stopped_at))
    assert a.trace["loss"].shape[0] == TINY.log_epochs * b.trace["loss"].shape[0]
    assert lr.logging_check(TINY, seeds=1)["identical"]


def test_the_note_rows_consistency_arithmetic():
    from optlab.studies.linreg_recipe_claims import _consistency
    assert _consistency(0.2715, 25.10, 14.49, 1000) is None  # the baseline row is possible
    assert "outside" in _consistency(0.008234, 0.06, 0.12, 1000)  # the full recipe row is not


def test_cli_quick_writes_the_report(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "linreg-recipe", "--quick", "--out", str(out), *SHRINK]) == 0
    for name in ("report.md", "results.csv", "config.yaml", "shapley_final_loss.png", "precision_w.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "refuted (inconsistent)" in report and "closed-form loss" in report


@pytest.mark.parametrize("bad", ["switches=lr,warp", "lr=0.001", "epochs=-3,5"])
def test_bad_switch_names_or_values_exit_2(bad, capsys, tmp_path):
    try:
        code = main(["run", "linreg-recipe", "--quick", "--out", str(tmp_path / "x"), "--set", bad])
    except SystemExit as err:  # argparse-level errors exit, config errors return the status
        code = err.code
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
