"""The shared summary layer: trace summaries equal the diagnostics, statistics never average markers, formats, rules."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab import GridResult
from optlab import diagnostics as dg
from optlab.studies import summary as sm
from optlab.studies.base import Claim


def traces():
    """Three runs of 40 steps: halving to the floor, flat at 1, and a V that blows up."""
    halving = 0.5 ** np.arange(40.0)
    flat = np.ones(40)
    v_shape = np.concatenate([np.linspace(1.0, 0.1, 20), np.linspace(0.2, 5.0, 20)])
    return np.stack([halving, flat, v_shape]).astype(np.float32)


def test_summarize_equals_the_diagnostics_per_run():
    loss, floor = traces(), np.array([1e-6, 0.0, 0.0], np.float32)
    out = sm.summarize(loss, floor)
    assert set(out) == set(sm.SUMMARY_FIELDS) and all(v.shape == (3,) for v in out.values())
    for i in range(3):
        d = dg.divergence(loss[i], floor=floor[i])
        assert out["verdict"][i] == int(d.verdict) and out["onset_step"][i] == int(d.onset_step)
        np.testing.assert_allclose(out["best_loss"][i], d.best_loss)
    assert list(dg.verdict_name(out["verdict"])) == ["converged", "plateaued", "diverged"]
    # halving: below 1e-6 from step 20 on; zig-zag and rate only see steps above the floor
    assert list(out["steps_to_floor"]) == [20, -1, -1]
    np.testing.assert_allclose(out["rate"][0], 0.5, rtol=1e-5)
    assert out["zigzag"][0] == 0.0 and out["up_over_drop"][2] > 1.0
    single = sm.summarize(loss[0], 1e-6)
    assert single["steps_to_floor"].tolist() == [20]
    with pytest.raises(TypeError, match="rule takes"):
        sm.summarize(loss, tolerance=0.1)
    with pytest.raises(ValueError, match="loss must be"):
        sm.summarize(np.ones((2, 3, 4)))


def test_summarize_grid_adds_columns_and_reads_a_floor_output():
    index = np.array([[0, 0], [0, 1], [1, 0]])
    grid = GridResult({"lr": [0.1, 1.0], "seed": [0, 1]}, index,
                      {"loss": traces(), "floor": np.array([1e-6, 0.0, 0.0], np.float32)})
    summarized = sm.summarize_grid(grid, floor="floor", window=2)
    assert "verdict" not in grid.outputs  # the input grid is not changed
    assert summarized.outputs["steps_to_floor"].tolist() == [20, -1, -1]
    assert summarized.count("verdict", labels=dg.VERDICTS) == {"converged": 1, "plateaued": 1, "diverged": 1,
                                                               "nan": 0}
    with pytest.raises(ValueError, match="floor must be"):
        sm.summarize_grid(grid, floor="missing")
    with pytest.raises(ValueError, match="trace must name"):
        sm.summarize_grid(grid, trace="floor")


def test_reached_never_averages_markers():
    steps = np.array([10, -1, 30, -1, 20])
    r = sm.reached(steps)
    assert (r.k, r.n, r.median) == (3, 5, 20.0)
    assert sm.reached_text(steps) == "3 of 5 reached, median 20"
    assert sm.reached_text([-1, -1]) == "0 of 2 reached"
    assert math.isnan(sm.reached([-1]).median)


@settings(deadline=None, max_examples=30)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf)), min_size=1, max_size=12))
def test_describe_counts_nonfinite_and_uses_only_finite(values):
    s = sm.describe(values)
    finite = np.asarray([v for v in values if math.isfinite(v)])
    assert s.n == len(values) and s.n_finite == finite.size
    if finite.size:
        np.testing.assert_allclose(s.mean, finite.mean(), rtol=1e-9, atol=1e-9)
        assert s.min <= s.median <= s.max
    if finite.size >= 2:
        np.testing.assert_allclose(s.std, finite.std(ddof=1), rtol=1e-9, atol=1e-9)
    else:
        assert math.isnan(s.std)
    text = sm.mean_std(values)
    assert f"n={len(values)}" in text and ("non-finite" in text) == (finite.size < len(values))
    assert ("±" in text) == (finite.size >= 2)


def test_mean_std_formats():
    assert sm.mean_std([1.0, 3.0]) == "2 ± 1.4 (n=2)"
    assert sm.mean_std([0.5]) == "0.5 (n=1)"  # no "± 0" for one cell
    assert sm.mean_std([1.0, 3.0, np.nan]) == "2 ± 1.4 (n=3, 1 non-finite)"
    assert sm.mean_std([np.nan, np.inf]) == "nan (n=2, 2 non-finite)"
    assert sm.mean_std(np.array([0.2, 0.4]) * 100, "{:.0f}") == "30 ± 14 (n=2)"
    assert sm.median_text([1.0, 2.0, 10.0, np.nan]) == "2 (n=4, 1 non-finite)"


def test_counts_text_names_every_category():
    assert sm.counts_text([0, 2, 2]) == "converged 1, plateaued 0, diverged 2, nan 0"
    assert sm.counts_text({"converged": 1, "diverged": 0}) == "converged 1, diverged 0"
    with pytest.raises(ValueError, match="codes must be integers"):
        sm.counts_text([0, 4])


def test_grid_table_rows_per_group():
    axes = {"optimizer": ["sgd", "adam"], "seed": [0, 1, 2]}
    index = np.array(list(itertools.product(range(2), range(3))))
    grid = GridResult(axes, index, {"final_loss": np.array([1.0, 2.0, 3.0, 0.5, np.nan, 0.5]),
                                    "steps": np.array([5, -1, 7, 1, 2, 3]), "verdict": np.array([0, 0, 2, 0, 3, 0])})
    columns = [("final loss", "final_loss", "mean_std"), ("to floor", "steps", "reached"),
               ("verdicts", "verdict", "verdicts"), ("worst", "final_loss", lambda v: f"{np.nanmax(v):g}")]
    table = sm.grid_table(grid, "optimizer", columns, title="t")
    assert table.title == "t" and table.headers == ["optimizer", "final loss", "to floor", "verdicts", "worst"]
    verdicts = "converged 2, plateaued 0, diverged 1, nan 0"
    assert table.rows[0] == ["sgd", "2 ± 1 (n=3)", "2 of 3 reached, median 6", verdicts, "3"]
    assert table.rows[1][1] == "0.5 ± 0 (n=3, 1 non-finite)"  # two finite cells: their spread (0) is shown
    with pytest.raises(ValueError, match="format must be"):
        sm.grid_table(grid, "optimizer", [("x", "final_loss", "mean")])


@pytest.mark.parametrize("value, expected", [(3.0, "confirmed"), (2.0, "confirmed"), (1.5, "partly"),
                                             (1.0, "refuted"), (math.nan, "inconclusive")])
def test_threshold_rule(value, expected):
    faster = sm.Threshold(2.0, partly=1.0, op=">=", partly_op=">", name="speed-up")
    assert faster(value) == expected
    assert faster.describe() == "confirmed if speed-up ≥ 2, partly if speed-up > 1, refuted otherwise"


def test_threshold_at_most_and_bad_op():
    smooth = sm.Threshold(0.1, op="<=", name="rise/drop")
    assert [smooth(v) for v in (0.05, 0.1, 0.2)] == ["confirmed", "confirmed", "refuted"]
    with pytest.raises(ValueError, match="op must be"):
        sm.Threshold(1.0, op="=>")


def test_paired_difference_rule():
    rule = sm.PairedDifference()
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    assert rule(base + 1.0 + 0.01 * rng.normal(size=8), base) == "confirmed"
    assert rule(base - 1.0, base) == "refuted"
    assert rule(rng.normal(size=8)) == "inconclusive"  # mean within 2 SE of 0
    assert rule([0.3]) == "inconclusive"  # one seed has no standard error
    assert rule([0.2, 0.2, 0.2]) == "confirmed"  # identical non-zero differences: standard error 0
    assert rule([0.0, 0.0]) == "inconclusive"
    assert rule([1.0, np.nan, 1.1, 0.9]) == "confirmed"  # the non-finite pair is dropped
    assert sm.PairedDifference(direction="less")(base - 1.0, base) == "confirmed"
    assert "2 standard errors" in rule.describe("x − y")
    assert rule.text([1.0, 2.0, 3.0]).startswith("paired diff 2 ± 1 (n=3), 3.5 SE")
    with pytest.raises(ValueError, match="pair up"):
        rule([1.0, 2.0], [1.0])


@settings(deadline=None, max_examples=30)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=10), st.floats(0.1, 10))
def test_paired_rule_flips_with_the_sign(diffs, scale):
    rule = sm.PairedDifference()
    forward = rule(np.asarray(diffs) * scale)
    backward = rule(-np.asarray(diffs) * scale)
    flip = {"confirmed": "refuted", "refuted": "confirmed", "inconclusive": "inconclusive"}
    assert backward == flip[forward]


def test_check_inconsistent_untestable():
    assert [sm.check(True), sm.check(False), sm.check(False, partly=True), sm.check(None)] == [
        "confirmed", "refuted", "partly", "inconclusive"]
    arithmetic = sm.inconsistency({"reduction at 0.01": [5.8e-4, 5.2e-4], "at 0.02": [3.1e-4, 3.1e-4]})
    assert arithmetic == "reduction at 0.01 is stated as 0.00058 and 0.00052: they differ by 10 % > 5 %"
    assert sm.inconsistency({"x": [1.0, 1.01]}) is None
    claim = sm.inconsistent("grid", "0.01 beats 0.02", "note", arithmetic)
    assert isinstance(claim, Claim) and claim.verdict == "refuted (inconsistent)"
    assert claim.measured.startswith("reduction at 0.01")
    untestable = sm.untestable("3", "x converges 100x slower", "note", "the note names no tolerance")
    assert untestable.measured == "the note names no tolerance"
    assert untestable.verdict == "untestable as stated"


def test_summarize_accepts_jax_arrays_and_rule_overrides():
    loss = jnp.asarray(traces())
    strict = sm.summarize(loss, rel_tol=0.01, window=1, rel_floor=0.0)
    assert strict["onset_step"][2] >= 0 and strict["onset_step"][1] == -1
