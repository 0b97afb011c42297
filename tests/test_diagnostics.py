"""Diagnostics on synthetic traces with known answers, NumPy references, and vmap == per-trace."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab import diagnostics as dg

# Jitted once per shape: eager dispatch compiles every small op separately, which is slow on a loaded CPU.
divergence = jax.jit(dg.divergence, static_argnames=("rel_tol", "tail", "floor", "window", "noise", "rel_floor"))
zigzag_score = jax.jit(dg.zigzag_score)
convergence_rate = jax.jit(dg.convergence_rate, static_argnames=("start", "stop"))
diminishing_returns = jax.jit(dg.diminishing_returns)
starvation = jax.jit(dg.starvation)


def halving_trace(n=30, x0=10.0, a=3.0):
    """x_n = a + (x0 - a) / 2^n: the Newton-root iterates on (x - a)^2 (note 001, experiment 1)."""
    x = a + (x0 - a) / 2.0 ** np.arange(n)
    return x, (x - a) ** 2


def onset_reference(loss, rel_tol, window, noise=dg.DIVERGENCE_NOISE):
    """Plain-Python reading of the documented onset rule (floor 0, rel_floor 0)."""
    n = len(loss)
    ranked = [float(v) if np.isfinite(v) else np.inf for v in loss]
    best = int(np.argmin(ranked))
    level = ranked[best] + rel_tol * abs(ranked[best])
    above = [v > level for v in ranked]

    def held(s):  # the full window starting at s (or the last full one) is mostly above the level
        s = min(s, n - window)
        return sum(above[s:s + window]) >= (1 - noise) * window

    for c in range(best + 1, n - window + 1):
        if above[c] and all(held(s) for s in range(c, n)):
            hover = np.quantile(ranked[best:c], dg.HOVER_QUANTILE)
            return best, 1 + max(s for s in range(best, c) if ranked[s] <= hover)
    return best, -1


def test_geometric_trace_is_monotone_and_rate_is_exact():
    with jax.enable_x64(True):
        x, loss = halving_trace()
        zz = zigzag_score(loss)
        assert float(zz.up_fraction) == 0.0 and float(zz.up_over_drop) == 0.0
        np.testing.assert_allclose(convergence_rate(loss), 0.25, rtol=1e-12)
        np.testing.assert_allclose(convergence_rate(np.abs(x - 3.0)), 0.5, rtol=1e-12)
        np.testing.assert_allclose(convergence_rate(loss, start=5, stop=12), 0.25, rtol=1e-12)


def test_convergence_rate_skips_zeros_and_needs_two_points():
    values = jnp.array([1.0, 0.5, 0.0, 0.125, jnp.nan, 0.03125])
    np.testing.assert_allclose(convergence_rate(values), 0.5, rtol=1e-6)
    assert np.isnan(convergence_rate(jnp.array([1.0, 0.0, 0.0])))
    with pytest.raises(ValueError, match="at least 2"):
        convergence_rate(values, start=5)
    with pytest.raises(TypeError, match="static"):
        dg.convergence_rate(values, start=jnp.array(1))


def test_alternating_trace_zigzags_half_the_time():
    loss = jnp.tile(jnp.array([2.0, 1.0]), 50)
    zz = zigzag_score(loss)
    np.testing.assert_allclose(zz.up_fraction, 49 / 99, rtol=1e-6)
    np.testing.assert_allclose(zz.up_over_drop, 49 / 50, rtol=1e-6)


def test_zigzag_ignores_steps_touching_nan():
    zz = zigzag_score(jnp.array([4.0, 2.0, jnp.nan, 3.0, 1.0]))
    np.testing.assert_allclose(zz.up_fraction, 0.0)
    assert np.isnan(zigzag_score(jnp.array([1.0])).up_fraction)


def test_v_shaped_trace_has_onset_and_diverges():
    loss = jnp.concatenate([jnp.linspace(1.0, 0.2, 41), jnp.linspace(0.21, 0.6, 40)])
    d = dg.divergence(loss)  # eager
    assert int(d.best_step) == 40
    np.testing.assert_allclose(d.best_loss, 0.2, rtol=1e-6)
    crossing = 41 + int(np.argmax(np.asarray(loss[41:]) > 0.2 * (1 + dg.DIVERGENCE_REL_TOL)))
    assert 40 < int(d.onset_step) < crossing  # the rise starts between the best and the level crossing
    np.testing.assert_allclose(d.final_best_ratio, 3.0, rtol=1e-5)
    assert dg.verdict_name(d.verdict) == "diverged"


def test_zigzag_that_ends_low_is_not_diverged():
    # Newton-root experiment 5, global step: descends, then oscillates between the best level and spikes 3-100x
    # above it; its lows keep coming back, so it never left its best level for good.
    rng = np.random.default_rng(0)
    descent = np.geomspace(1.0, 1e-4, 100)
    lows = 1e-4 * (1 + 0.3 * rng.random(400))
    spikes = np.where(rng.random(400) < 0.5, rng.uniform(3, 100, 400), 1.0)
    loss = np.concatenate([descent, lows * spikes]).astype(np.float32)
    d = divergence(loss)
    assert int(d.onset_step) == -1
    assert dg.verdict_name(d.verdict) == "plateaued"


def test_slow_blow_up_gets_its_onset_at_the_start_of_the_rise():
    # An Adam-like trace: converges, hovers noisily near its best for 1000 steps, then grows 1 % per step from 1200.
    rng = np.random.default_rng(1)
    hover = 0.1 * (1 + 0.2 * rng.random(1100))
    loss = np.concatenate([np.geomspace(1.0, 0.1, 100), hover, 0.1 * 1.01 ** np.arange(1, 301)]).astype(np.float32)
    d = divergence(loss)
    assert dg.verdict_name(d.verdict) == "diverged"
    assert 1197 <= int(d.onset_step) <= 1206, int(d.onset_step)  # noise ±10 % hides ~5 steps of 1 % growth
    noisy = loss * np.float32(1 + 0.05 * rng.standard_normal(loss.size))  # a few dips below the level in the rise
    assert abs(int(divergence(noisy).onset_step) - 1200) <= 10


def test_run_at_float_noise_is_converged_without_a_floor():
    # Reaches 1e-14 of its start, then rattles at float noise 1e-14 ... 1e-13: done, not diverged nor stuck.
    rng = np.random.default_rng(2)
    loss = np.concatenate([np.geomspace(1.0, 1e-14, 60), 1e-14 * (1 + 9 * rng.random(40))]).astype(np.float32)
    d = divergence(loss)
    assert int(d.onset_step) == -1 and dg.verdict_name(d.verdict) == "converged"
    assert dg.verdict_name(divergence(loss, rel_floor=0.0).verdict) == "diverged"  # the bare rule reads noise


def test_single_dip_at_the_end_does_not_cancel_a_divergence():
    loss = jnp.concatenate([jnp.linspace(1.0, 0.1, 40), jnp.full(59, 1.0), jnp.array([0.1])])
    d = divergence(loss, window=10)
    assert dg.verdict_name(d.verdict) == "diverged" and int(d.onset_step) == 40


def test_spike_that_comes_back_is_not_an_onset():
    loss = jnp.array([1.0, 0.5, 0.3, 0.9, 0.31, 0.29, 0.2, 0.1, 0.05, 0.01])
    d = divergence(loss)
    assert int(d.onset_step) == -1
    assert dg.verdict_name(d.verdict) == "converged"


def test_nan_trace_is_nan_and_best_ignores_nan():
    loss = jnp.array([1.0, 0.5, 0.25, jnp.nan, jnp.nan])
    d = divergence(loss)
    assert dg.verdict_name(d.verdict) == "nan"
    assert int(d.best_step) == 2 and float(d.best_loss) == 0.25
    assert int(d.onset_step) == 3  # non-finite counts as above the level
    assert np.isnan(d.final_best_ratio)
    all_nan = divergence(jnp.full(4, jnp.nan))
    assert np.isnan(all_nan.best_loss) and int(all_nan.onset_step) == -1 and dg.verdict_name(all_nan.verdict) == "nan"


def test_plateau_versus_converged_and_floor():
    stuck = jnp.concatenate([jnp.linspace(1.0, 0.5, 10), jnp.full(90, 0.5)])
    assert dg.verdict_name(divergence(stuck).verdict) == "plateaued"
    assert dg.verdict_name(divergence(stuck, floor=0.5).verdict) == "converged"
    slow = 0.999 ** jnp.arange(100.0)  # the last 10% improves by ~1%
    assert dg.verdict_name(divergence(slow).verdict) == "plateaued"
    assert dg.verdict_name(divergence(slow, plateau_tol=0.005).verdict) == "converged"
    _, still_improving = halving_trace(n=20)
    assert dg.verdict_name(divergence(still_improving).verdict) == "converged"


@settings(deadline=None, max_examples=25)
@given(
    st.lists(st.floats(0.0, 10.0, width=32, allow_subnormal=False), min_size=16, max_size=16),  # XLA flushes subnormals
    st.sampled_from([0.0, 0.05, 0.5]),
    st.sampled_from([1, 3]),
)
def test_divergence_matches_reference(values, rel_tol, window):
    loss = np.asarray(values, np.float32)
    d = divergence(loss, rel_tol=rel_tol, window=window, rel_floor=0.0)
    best, onset = onset_reference(loss, np.float32(rel_tol), window)
    assert (int(d.best_step), int(d.onset_step)) == (best, onset)
    zz = zigzag_score(loss)
    diffs = np.diff(loss)
    np.testing.assert_allclose(zz.up_fraction, np.mean(diffs > 0), rtol=1e-6)


def test_starvation_on_asymmetric_quadratic():
    # f(x, y) = (x-1)^2 + 100 (y-2)^2 under the shared Newton-root step L / ||g||^2 (note 001, experiment 3).
    def step(p, _):
        x, y = p
        loss = (x - 1) ** 2 + 100 * (y - 2) ** 2
        g = jnp.array([2 * (x - 1), 200 * (y - 2)])
        new = p - loss / jnp.sum(g**2) * g
        return new, (jnp.abs(g), jnp.abs(p - jnp.array([1.0, 2.0])))

    _, (norms, errors) = jax.lax.scan(step, jnp.array([10.0, 10.0]), None, length=150)
    s = starvation(norms, errors, threshold=1e-2)
    np.testing.assert_allclose(s.min_max_ratio[0], 18 / 1600, rtol=1e-5)
    np.testing.assert_allclose(s.min_max_ratio, np.min(norms, 1) / np.max(norms, 1), rtol=1e-6)
    below = np.asarray(errors) < 1e-2
    reference = [next(t for t in range(150) if below[t:, g].all()) for g in range(2)]
    np.testing.assert_array_equal(s.settle_step, reference)
    assert reference[1] < reference[0]  # y settles first, x is starved


def test_starvation_ratio_and_settle_by_hand():
    norms = jnp.array([[1.0, 0.001], [0.5, 0.0005], [0.0, 0.0], [1e-4, 1e-5]])
    s = starvation(norms, threshold=1e-3)
    chex.assert_trees_all_close(s.min_max_ratio, jnp.array([0.001, 0.001, 1.0, 0.1]))
    np.testing.assert_array_equal(s.settle_step, [2, 1])
    s = starvation(norms, threshold=1e-9)
    np.testing.assert_array_equal(s.settle_step, [-1, -1])


def test_diminishing_returns_halves_and_mask():
    assert float(diminishing_returns(jnp.array([4.0, 4.0, 1.0, 1.0]))) == 0.25
    np.testing.assert_allclose(diminishing_returns(jnp.array([3.0, 2.0, 1.0])), 1.5 / 3.0)
    mask = jnp.array([True, False, True, True, False])
    np.testing.assert_allclose(diminishing_returns(jnp.array([2.0, 99.0, 1.0, 3.0, 99.0]), mask), 2.0 / 2.0)
    assert np.isnan(diminishing_returns(jnp.array([1.0, 2.0]), jnp.array([True, False])))
    assert np.isnan(diminishing_returns(jnp.array([1.0, jnp.nan, 2.0, 2.0])))


def test_vmap_and_jit_equal_per_trace():
    key = jax.random.key(0)
    walks = jnp.exp(jnp.cumsum(0.1 * jax.random.normal(key, (5, 40)), axis=1))
    walks = walks.at[2, 30].set(jnp.nan)

    def all_diagnostics(w):
        return {
            "divergence": dg.divergence(w),
            "zigzag": dg.zigzag_score(w),
            "rate": dg.convergence_rate(w, start=3, stop=30),
            "diminishing": dg.diminishing_returns(w),
            "starvation": dg.starvation(w.reshape(20, 2)),
        }

    batched = jax.jit(jax.vmap(all_diagnostics))(walks)
    per_trace = jax.jit(all_diagnostics)
    for i in range(5):
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), per_trace(walks[i]), rtol=1e-5)


def test_verdict_names():
    assert dg.VERDICTS == ("converged", "plateaued", "diverged", "nan")
    assert dg.verdict_name(jnp.int32(3)) == "nan"
    assert list(dg.verdict_name(np.array([0, 2]))) == ["converged", "diverged"]
    with pytest.raises(ValueError, match="verdict code"):
        dg.verdict_name(4)
    with pytest.raises(ValueError, match="loss must be a 1-D"):
        divergence(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="window must be"):
        dg.divergence(jnp.ones(3), window=0)
    with pytest.raises(ValueError, match="noise must be"):
        dg.divergence(jnp.ones(3), noise=1.0)
