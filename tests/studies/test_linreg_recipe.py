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
from optlab.studies import linreg_precision as lpr
from optlab.studies import linreg_recipe as lr

TINY = lr.LinregRecipeConfig(n=64, batch_size=16, seeds=2, lr=(1e-2, 3e-2), epochs=(2, 4), warmup=(1, 2),
                             decay_epochs=(2, 4), patience=(1, 2), log_epochs=2, switches=("lr", "shuffle", "init"))
SHRINK = ["--set", "n=64", "--set", "batch_size=16", "--set", "epochs=2,4", "--set", "warmup=1,2", "--set",
          "decay_epochs=2,4", "--set", "patience=1,2", "--set", "log_epochs=2", "--set", "grid_epochs=2",
          "--set", "grid_lrs=0.01", "--set", "switches=lr,init", "--set", "seeds=2", "--set", "precision_seeds=1",
          "--set", "precision_arms=float16"]


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


@pytest.mark.parametrize("min_improvement", [1e-6, 0.02, 1e3])
def test_early_stop_is_per_epoch_on_the_epoch_mean_loss(min_improvement):
    # The note's epoch loop: after each epoch, compare the mean of its batch losses with the best epoch mean so
    # far; stop (after completing that epoch) once `patience` epochs in a row failed to beat it by min_improvement.
    hp = {**lr.recipe(TINY, ["epochs"]), "min_improvement": min_improvement}  # 4 epochs, patience 1
    res = lr.recipe_fit(TINY, hp, jax.random.key(0), every_step=True)[0]
    losses = np.asarray(res.trace["loss"]).reshape(int(hp["epochs"]), TINY.per_epoch)
    best, wait, stop = np.inf, 0, losses.size
    for epoch, mean in enumerate(losses.mean(axis=1, dtype=np.float32)):
        wait = 0 if mean < np.float32(best - np.float32(min_improvement)) else wait + 1
        best = min(best, mean)
        if wait >= hp["patience"]:
            stop = (epoch + 1) * TINY.per_epoch
            break
    assert int(res.stopped_at) == stop and int(res.stopped_at) % TINY.per_epoch == 0
    if min_improvement == 1e3:  # nothing is an improvement after the first epoch: the second one is the last
        assert stop == 2 * TINY.per_epoch


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


def test_precision_arm_keywords():
    assert lr.precision_kwargs("float16") == {"dtype": "float16"}
    assert lr.precision_kwargs("mixed16") == {"dtype": "float32", "compute_dtype": "float16"}
    scaler = lr.precision_kwargs("mixed16+scale")["loss_scale"]
    assert (scaler.initial, scaler.window, scaler.hysteresis, scaler.minimum) == (2.0**16, 1000, 2, 1.0)
    assert np.float16(1e-8) == 0  # why pure float16 Adam divides by sqrt(v) alone
    with pytest.raises(ValueError, match="precision arm"):
        lr.precision_kwargs("float8")


def test_mixed_precision_keeps_float32_master_weights_and_moments():
    hp = lr.baseline(TINY)
    mixed = lr.recipe_fit(TINY, hp, jax.random.key(0), precision="mixed16")[0]
    pure = lr.recipe_fit(TINY, hp, jax.random.key(0), precision="float16")[0]
    moments = lambda res: {leaf.dtype for leaf in jax.tree.leaves(res.opt_state)  # noqa: E731
                           if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)}
    assert mixed.params["w"].dtype == np.float32 and moments(mixed) == {np.dtype("float32")}
    assert pure.params["w"].dtype == np.float16 and moments(pure) == {np.dtype("float16")}


def test_precision_arms_log_the_freeze_evidence():
    config = dataclasses.replace(TINY, precision_arms=("float16+scale", "float64"), precision_seeds=1)
    grids = lpr.precision_grid(config, progress=False)
    assert list(grids) == ["float16+scale", "float64"]
    assert not jax.config.jax_enable_x64  # the float64 arm's x64 scope is closed again
    steps = TINY.epochs[0] * TINY.per_epoch
    for arm, grid in grids.items():
        out = grid.outputs
        for name in lpr.PRECISION_TRACES:
            assert out[f"trace/{name}"].shape == (1, steps), (arm, name)
        # every step where W did not move is explained: skipped, or applied and rounded away
        np.testing.assert_array_equal(out["frozen_skipped"] + out["frozen_rounded"], out["w_frozen_steps"])
        assert np.all(out["live_steps"] <= steps) and np.all(out["sub_ulp_steps"] <= out["live_steps"])
    assert np.isnan(grids["float64"].outputs["min_loss_scale"]).all()  # no scaler, no scale
    assert grids["float16+scale"].outputs["trace/loss_scale"][0, 0] == 2.0**16
    assert np.isfinite(grids["float64"].outputs["w"]).all()
    rows = lpr.precision_steps(grids)
    assert len(rows) == 2 * steps and set(rows[0]) == {"arm", "seed", "step", *lpr.PRECISION_TRACES}


def test_frozen_verdict_names_the_mechanism():
    from optlab.studies.linreg_recipe_claims import _mechanism
    g = {"w_frozen_steps": np.array([10.0, 2.0]), "live_steps": np.array([10.0, 10.0]), "w": np.zeros(2),
         "frozen_skipped": np.array([0.0, 2.0]), "frozen_rounded": np.array([10.0, 0.0]),
         "sub_ulp_steps": np.array([10.0, 0.0])}
    text = _mechanism(g)
    assert "12 of 20" in text and "2 skipped" in text and "below ½ ulp" in text and "1 of 2 seeds frozen" in text
