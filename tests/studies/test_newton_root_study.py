"""Newton-root study (lab note 001): claim logic on synthetic traces, optimizer table, and the quick study end to end."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab.diagnostics import VERDICTS
from optlab.studies import newton_root as nr
from optlab.studies import newton_root_claims as nc
from optlab.engine.grid_result import GridResult
from optlab.engine.interrupt import GridInterrupted

CONV, DIV = VERDICTS.index("converged"), VERDICTS.index("diverged")
STEPS = np.arange(40)


def _nan_number(text: str) -> bool:
    """A NaN among the numbers of ``text`` (the verdict count "nan 2" is a label, not a NaN)."""
    return re.search(r"\bnan\b(?! \d)", text.lower()) is not None


def _halving(rate=0.5):
    return 3.0 + 7.0 * rate**STEPS


def _starved(rate_x, rate_y, c=100.0):
    ex, ey = 9.0 * rate_x ** np.arange(12), 8.0 * rate_y ** np.arange(12)
    return ex, ey, ex**2, c * ey**2, c


def _kink_loss(bend):
    # loss falls ×0.25 per step for 5 steps, then ×bend per step
    head = 100.0 * 0.25 ** np.arange(6)
    return np.concatenate([head, head[-1] * bend ** np.arange(1, 30)])


def _mlp(zz_global, zz_other, final_other=1e-3, name="per_layer_equal"):
    def stats(zz, final, verdict):
        return {"zigzag": np.full(4, zz), "up_over_drop": np.full(4, zz), "final_loss": np.full(4, final),
                "initial_loss": np.full(4, 3.0), "verdict": np.full(4, verdict)}

    return {"global": stats(zz_global, 1e-3, DIV), "adamw": stats(0.05, 1e-3, CONV),
            name: stats(zz_other, final_other, CONV if zz_other < 0.1 else DIV)}


def _linreg(steps_global, steps_leaf):
    return {"global": {"steps_to_floor": np.full(3, steps_global), "verdict": np.full(3, CONV)},
            "per_leaf_full": {"steps_to_floor": np.full(3, steps_leaf), "verdict": np.full(3, CONV)}}


ramp = np.concatenate([np.linspace(0.01, 2.0, 20), np.full(20, 2.0)])
wobble = np.concatenate([np.linspace(0.01, 2.0, 10), np.tile([2.0, 0.1], 15)])
on_line = np.linspace(0, 1, 40)

# (name, function, arguments that should confirm, arguments that should refute)
CASES = [
    ("halving", nc.claim_halving, (_halving(), _halving().astype(np.float32), 3.0, 10.0),
     (_halving(0.6), _halving(0.6), 3.0, 10.0)),
    ("monotone", lambda loss: nc.claim_monotone("3", loss, 0.0), (0.5**STEPS,),
     (np.array([4.0, 2.0, 3.0, 1.0]),)),
    ("precision", nc.claim_precision, (_halving().astype(np.float32), _halving(), 3.0),
     (_halving() * (1 + 1e-4), _halving(), 3.0)),
    ("rates_half", nc.claim_rates_half, (0.5**STEPS, 2 * 0.5**STEPS, STEPS < 30),
     (0.6**STEPS, 0.5**STEPS, STEPS < 30)),
    ("straight_line", nc.claim_straight_line, (10 - 9 * on_line, 10 - 8 * on_line, (10, 10), (1, 2), STEPS >= 0),
     (10 - 9 * on_line, 10 - 8 * on_line**2, (10, 10), (1, 2), STEPS >= 0)),
    ("starved_rates", nc.claim_starved_rates, _starved(1 - 1 / 200, 0.5), _starved(0.9, 0.9)),
    ("sequential", nc.claim_sequential, (np.r_[np.ones(200), 1e-9 * np.ones(20)], np.r_[1.0, 1e-9 * np.ones(219)], 100.0),
     (0.5 ** np.arange(50), 0.5 ** np.arange(50), 100.0)),
    ("start_ratio", nc.claim_start_ratio, (9.0, 1600.0, (10, 18), (1, 2), 100.0),
     (18.0, 1600.0, (10, 10), (1, 2), 100.0)),
    ("ratio_grows", nc.claim_ratio_grows, (ramp, np.ones(40), STEPS >= 0), (0.01 * np.ones(40), np.ones(40), STEPS >= 0)),
    ("kink", nc.claim_kink, (_kink_loss(0.95), np.r_[np.zeros(5), np.ones(30)], np.r_[np.ones(5), np.zeros(30)],
                             np.ones(35, bool)),
     (_kink_loss(0.25), np.r_[np.zeros(5), np.ones(30)], np.r_[np.ones(5), np.zeros(30)], np.ones(35, bool))),
    ("fix_quadratic", nc.claim_fix_quadratic, ({(100.0, "global"): 150, (100.0, "per_leaf_full"): 10}, 100.0, 200),
     ({(100.0, "global"): 150, (100.0, "per_leaf_full"): -1}, 100.0, 200)),
    ("linreg_converges", nc.claim_linreg_converges, ({"steps_to_floor": np.array([10, 12]), "final_loss": np.zeros(2)},),
     ({"steps_to_floor": np.array([-1, -1]), "final_loss": np.ones(2)},)),
    ("linreg_mild", nc.claim_linreg_mild, ({"zigzag": np.zeros(3), "up_over_drop": np.zeros(3)},),
     ({"zigzag": np.full(3, 0.4), "up_over_drop": np.full(3, 0.8)},)),
    ("linreg_fix", nc.claim_linreg_fix, (_linreg(20, 10),), (_linreg(20, -1),)),
    ("mlp_zigzag", nc.claim_mlp_zigzag, (_mlp(0.4, 0.4),), (_mlp(0.0, 0.0),)),
    ("fix", lambda at_ref: nc.claim_fix("2. per-layer", ("per_layer_equal",), at_ref), (_mlp(0.4, 0.05),),
     (_mlp(0.4, 0.4),)),
    ("adamw_smooth", nc.claim_adamw_smooth, (_mlp(0.4, 0.4),),
     ({"adamw": {"zigzag": np.full(3, 0.5), "up_over_drop": np.full(3, 0.8), "final_loss": np.ones(3),
                 "verdict": np.full(3, DIV)}},)),
]


@pytest.mark.parametrize("name, claim, confirming, refuting", CASES, ids=[c[0] for c in CASES])
def test_claim_logic_on_synthetic_traces(name, claim, confirming, refuting):
    confirmed, refuted = claim(*confirming), claim(*refuting)
    assert confirmed.verdict == "confirmed", (name, confirmed)
    assert refuted.verdict == "refuted", (name, refuted)
    assert confirmed.claimed and confirmed.measured and not _nan_number(confirmed.measured)


def test_halving_leaves_out_steps_frozen_by_the_guard():
    x = _halving()
    frozen = x.copy()
    frozen[31:] = x[30]  # the step guard stops the trajectory at step 30
    step_scale = np.where(STEPS >= 30, 0.0, 0.25)
    assert nc.claim_halving(frozen, frozen, 3.0, 10.0).verdict == "refuted"
    claim = nc.claim_halving(frozen, frozen, 3.0, 10.0, step_scale)
    assert claim.verdict == "confirmed" and "from step 30 the step is 0" in claim.measured


def test_fix_that_blows_up_is_not_a_fix():
    claim = nc.claim_fix("1. per-parameter", ("per_leaf_full",), _mlp(0.4, 0.01, final_other=1e20, name="per_leaf_full"))
    assert claim.verdict == "refuted" and "does not train" in claim.measured


def test_measured_text_counts_verdicts_by_name_and_never_averages_never():
    stats = {"steps_to_floor": np.array([-1, 10, 12]), "verdict": np.array([CONV, CONV, DIV])}
    claim = nc.claim_linreg_fix({"global": stats, "per_leaf_full": stats})
    assert "converged 2, plateaued 0, diverged 1, nan 0" in claim.measured
    assert "2 of 3 seeds reach the floor, median 11" in claim.measured  # not a mean with -1 in it


def test_nan_measurement_is_inconclusive_not_refuted():
    nan = np.full(40, np.nan)
    assert nc.claim_rates_half(nan, nan, STEPS >= 0).verdict == "inconclusive"


def test_polyak_sgd_with_inverse_scaling_is_the_global_step():
    # optax.polyak_sgd(scaling=s) computes its step from s·g, so 1/lr reproduces newton_root(lr) (uncapped steps).
    loss = lambda p: jnp.sum(jnp.array([1.0, 3.0]) * (p - 1.0) ** 2)
    params = jnp.array([1.5, 1.2])
    value, grad = jax.value_and_grad(loss)(params)
    for lr in (0.5, 2.0):
        ours = nr.make_optimizer("global", lr)
        theirs = nr.make_optimizer("polyak_sgd", lr)
        mine, _ = ours.update(grad, ours.init(params), params, value=value)
        ref, _ = theirs.update(grad, theirs.init(params), params, value=value)
        np.testing.assert_allclose(mine, ref, rtol=1e-6)


@pytest.mark.parametrize("name", nr.OPTIMIZERS)
def test_every_optimizer_takes_a_descent_step(name):
    loss = lambda p: jnp.sum((p - 1.0) ** 2)
    params = jnp.array([3.0, -2.0])
    optimizer = nr.make_optimizer(name, 0.5, key=jax.random.key(0))
    value, grad = jax.value_and_grad(loss)(params)
    updates, _ = optimizer.update(grad, optimizer.init(params), params, value=value, value_fn=loss)
    assert float(loss(optax.apply_updates(params, updates))) < float(value)


def test_unknown_optimizer_raises():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        nr.make_optimizer("sgd", 1.0)


@pytest.mark.parametrize("changes, match", [
    ({"optimizers": ("global", "lion")}, "optimizers"), ({"reference_lr": 0.5}, "reference_lr"),
    ({"steps": 10}, "steps"), ({"c": -1.0}, "c must"), ({"mlp_target": "cos"}, "mlp_target"),
    ({"start_y": (1.0, 2.0)}, "start_x"), ({"linreg_scalings": ("per_leaf_full",)}, "linreg_scalings"),
])
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(nr.NewtonRootConfig.quick(), **changes).validate()


def test_cli_strings_build_the_config():
    config = nr.STUDY.make_config(quick=True, grid={"learning_rates": "0.5,1", "optimizers": "global,adamw"},
                                  overrides={"c": "10"}, seeds=2)
    assert config.learning_rates == (0.5, 1.0) and config.optimizers == ("global", "adamw")
    assert config.c == 10.0 and config.seeds == 2


def test_quick_study_end_to_end(tmp_path):
    # One test (not a shared fixture) so that `pytest -n 2` runs the study once, not once per worker.
    config = nr.NewtonRootConfig.quick()
    result = nr.run(config, progress=False)

    # all six experiments, valid verdicts, measured numbers
    assert len(result.sections) == 6
    assert {c.experiment for c in result.claims} == {"1", "2", "3", "4", "5", "6"}
    for claim in result.claims:
        assert claim.measured and not _nan_number(claim.measured), claim
    figures = [name for section in result.sections for name in section.figures]
    assert len(figures) >= 4 and len(set(figures)) == len(figures)
    assert all(name.endswith(".png") for name in figures)

    # one row per grid cell of experiments 3-6
    by_experiment = {e: [r for r in result.rows if r["experiment"] == e] for e in ("3", "4", "5", "6")}
    n_c = len({*config.c_values, 1.0, config.c})
    assert len(by_experiment["3"]) == n_c * len(nr.QUAD_SCALINGS) * len(config.start_x) * len(config.start_y)
    assert len(by_experiment["4"]) == len(config.linreg_scalings) * config.seeds
    assert len(by_experiment["5"]) == len(config.optimizers) * len(config.learning_rates) * config.seeds
    cells = {(r["optimizer"], r["learning_rate"], r["seed"]) for r in by_experiment["5"]}
    assert len(cells) == len(by_experiment["5"])
    assert len(by_experiment["6"]) == len(config.net_optimizers) * len(config.net_learning_rates) * config.seeds
    # experiment 6 is paired: at one seed every optimizer starts from the same network (same first loss)
    first = {}
    for row in by_experiment["6"]:
        first.setdefault(row["seed"], set()).add(round(row["initial_loss"], 5))
        assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["starvation"] <= 1, row
    assert len(first) == config.seeds and all(len(losses) == 1 for losses in first.values())
    assert len({row["initial_loss"] for row in by_experiment["6"]}) > 1  # ... and the seed changes it
    for row in result.rows:
        assert not np.isnan(row["final_loss"]) and not np.isnan(row["zigzag"]), row

    # experiments 1-2 have closed forms the study must reproduce
    claims = {(c.experiment, c.claim): c for c in result.claims}
    assert claims[("1", "trajectory x_n = 3 + (x0 - 3)/2ⁿ")].verdict == "confirmed"
    assert claims[("2", "both coordinates contract by 1/2 per step")].verdict == "confirmed"
    assert claims[("2", "straight path from (10, 10) to (1, 2)")].verdict == "confirmed"
    assert ("6", "the shared step zig-zags on a real network and per-layer scaling removes it") in claims

    # the report writer accepts the result
    from optlab import report

    paths = report.write_report(result, tmp_path)
    assert sum(name.endswith(".png") for name in paths) == len(figures)
    assert result.title in (tmp_path / "report.md").read_text()


def _tiny_config(**changes):
    return dataclasses.replace(nr.NewtonRootConfig.quick(), steps=40, c=10.0, c_values=(10.0,), seeds=2,
                               linreg_steps=5, linreg_n=8, net_steps=5, **changes)


def _interrupt_at(monkeypatch, label, keep):
    """Make the grid called ``label`` come back interrupted with the cells ``keep(grid)`` selects (None: not
    started), as run_grid does on Ctrl-C; every other grid runs for real."""
    real = nr.run_grid
    called = []

    def fake(cell, axes, *, label=None, **kw):
        called.append(label)
        if label != wanted:
            return real(cell, axes, label=label, **kw)
        if keep is None:
            names = [*axes, "seed"]
            empty = GridResult({**axes, "seed": list(range(kw["seeds"]))}, np.zeros((0, len(names)), int), {},
                               tuple(kw["static"]), False, {})
            raise GridInterrupted("not started", empty)
        return dataclasses.replace(keep(real(cell, axes, label=label, **kw)), complete=False)

    wanted = label
    monkeypatch.setattr(nr, "run_grid", fake)
    return called


def _cells(config):
    n3 = len({*config.c_values, 1.0, config.c}) * len(nr.QUAD_SCALINGS) * len(config.start_x) * len(config.start_y)
    n6 = math.prod(map(len, (config.net_optimizers, config.net_learning_rates))) * config.seeds
    return n3, len(config.linreg_scalings) * config.seeds, math.prod(map(len, (config.optimizers,
                                                                           config.learning_rates))) * config.seeds, n6


def test_interrupted_grid_stops_the_study_and_keeps_finished_rows(monkeypatch, tmp_path):
    config = _tiny_config()
    called = _interrupt_at(monkeypatch, "exp 4", lambda grid: grid.select(scaling="global", seed=0))
    result = nr.run(config, progress=False)
    n3, n4, n5, n6 = _cells(config)
    assert called == ["exp 2-3", "exp 4"]  # experiments 5 and 6 never start
    assert not result.complete and (result.cells_done, result.cells_total) == (n3 + 1, n3 + n4 + n5 + n6)
    assert [r["experiment"] for r in result.rows] == ["3"] * n3 + ["4"]
    assert {c.experiment for c in result.claims} == {"1", "2", "3"}  # none from the partial grid
    assert "1 of 4 cells finished" in result.sections[-1].text
    table = result.sections[2].tables[0]  # one start point: every cell is one run, so no "± 0"
    assert all("(n=1" in cell and "±" not in cell for row in table.rows for cell in row[2:6])
    report = (tmp_path / "report.md")
    from optlab import report as rp

    rp.write_report(result, tmp_path)
    assert report.read_text().startswith(f"INCOMPLETE: {n3 + 1} of {n3 + n4 + n5 + n6} cells")


def test_grid_refused_after_an_earlier_interrupt_returns_an_empty_incomplete_result(monkeypatch):
    config = _tiny_config()
    _interrupt_at(monkeypatch, "exp 2-3", None)
    result = nr.run(config, progress=False)
    assert not result.complete and result.rows == [] and result.cells_done == 0
    assert result.cells_total == sum(_cells(config))
    assert {c.experiment for c in result.claims} == {"1"}
