"""greedy_correction / correct_from_gram against a direct NumPy residual-form implementation of the same rule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from helpers import scaled_layer
from hypothesis import strategies as st
from numpy_greedy import greedy_residual

import optlab
from optlab.correction.greedy import GramStats, format_trace, gram_stats

N, D_IN, D_OUT = 40, 12, 7


def _layer(seed=0):
    return scaled_layer(seed, N, D_IN, D_OUT)


CASES = [
    dict(magnitude=0.1, fraction=0.5),
    dict(magnitude=0.5, fraction=1.0),  # large: stops early
    dict(magnitude=0.05, fraction=0.5, relative=False),
    dict(mode="optimal", fraction=0.5),
    dict(mode="optimal", fraction=0.75, max_relative=0.3),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_matches_numpy_residual_form(kwargs):
    x, w, w_pruned = _layer()
    with jax.enable_x64(True):
        res = optlab.greedy_correction(x, w, w_pruned, **kwargs)
        weights, trace, stopped = greedy_residual(x, w, w_pruned, **kwargs)
        np.testing.assert_allclose(res.weights, weights, rtol=1e-10, atol=1e-12)
        for name in ("position", "channels", "applied"):
            np.testing.assert_array_equal(getattr(res.trace, name), trace[name], err_msg=name)
        for name in ("improvement", "linear", "quad", "error"):
            np.testing.assert_allclose(getattr(res.trace, name), trace[name], rtol=1e-9, atol=1e-13, err_msg=name)
        assert bool(res.stopped_early) == stopped
        assert int(res.n_applied) == int(trace["applied"].sum())
        np.testing.assert_allclose(res.final_error, np.sum((x @ (weights - w)) ** 2) / (N * D_OUT), rtol=1e-10)


def test_large_magnitude_stops_early_and_is_recorded():
    x, w, w_pruned = _layer()
    with jax.enable_x64(True):
        res = optlab.greedy_correction(x, w, w_pruned, magnitude=0.5, fraction=1.0)
    applied = np.asarray(res.trace.applied)
    assert bool(res.stopped_early) and 0 < int(res.n_applied) < D_IN
    assert applied[: int(res.n_applied)].all() and not applied[int(res.n_applied):].any()  # stopped steps: no-ops
    assert (np.asarray(res.trace.position)[~applied] == -1).all()
    assert (np.asarray(res.trace.channels)[~applied] == 0).all()


def test_gram_form_from_batched_statistics_equals_one_shot():
    x, w, w_pruned = _layer(1)
    with jax.enable_x64(True):
        stats = jax.tree.map(jnp.add, gram_stats(x[:15], w, w_pruned), gram_stats(x[15:], w, w_pruned))
        assert isinstance(stats, GramStats)
        from_gram = optlab.correct_from_gram(stats.gram, stats.cross, w_pruned, n=stats.n, r_sq=stats.r_sq,
                                             magnitude=0.1, fraction=0.5)
        direct = optlab.greedy_correction(x, w, w_pruned, magnitude=0.1, fraction=0.5)
        _, trace, _ = greedy_residual(x, w, w_pruned, magnitude=0.1, fraction=0.5)
    chex.assert_trees_all_close(from_gram, direct, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(from_gram.trace.error, trace["error"], rtol=1e-9)


def test_mask_is_preserved_and_explicit_mask_is_respected():
    x, w, w_pruned = _layer(2)
    res = optlab.greedy_correction(x, w, w_pruned, mode="optimal", fraction=1.0)
    assert np.all(np.asarray(res.weights)[w_pruned == 0] == 0)
    # A mask that freezes half of the kept weights too: those must not move either.
    mask = (w_pruned != 0) & (np.arange(D_OUT) % 2 == 0)[None, :]
    res = optlab.greedy_correction(x, w, w_pruned, mode="optimal", fraction=1.0, mask=mask)
    np.testing.assert_array_equal(np.asarray(res.weights)[~mask], w_pruned[~mask].astype(np.float32))
    assert int(res.n_applied) > 0


def test_stops_at_once_when_no_position_improves():
    x, w, _ = _layer(3)
    res = optlab.greedy_correction(x, w, w, magnitude=0.01, fraction=0.5)  # nothing pruned: zero residual
    assert bool(res.stopped_early) and int(res.n_applied) == 0
    assert (np.asarray(res.trace.position) == -1).all()
    np.testing.assert_array_equal(res.weights, w.astype(np.float32))


def test_k_from_fraction_and_prefix_property():
    x, w, w_pruned = _layer(4)
    short = optlab.greedy_correction(x, w, w_pruned, magnitude=0.05, fraction=0.25)
    long = optlab.greedy_correction(x, w, w_pruned, magnitude=0.05, fraction=0.5, max_steps=D_IN)
    assert short.trace.position.shape == (round(0.25 * D_IN),)
    assert long.trace.position.shape == (D_IN,)
    assert int(long.n_applied) <= round(0.5 * D_IN)
    assert not np.asarray(long.trace.applied)[round(0.5 * D_IN):].any()  # steps beyond K are no-ops
    k = round(0.25 * D_IN)
    chex.assert_trees_all_close(short.trace, jax.tree.map(lambda a: a[:k], long.trace))


def test_vmapped_grid_equals_loop():
    x, w, w_pruned = _layer(5)
    mags, fracs = jnp.array([0.02, 0.1, 0.4]), jnp.array([0.25, 0.5, 1.0])
    run = lambda m, f: optlab.greedy_correction(x, w, w_pruned, magnitude=m, fraction=f, max_steps=D_IN)
    batched = jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))(mags, fracs)
    for a, m in enumerate(mags):
        for b, f in enumerate(fracs):
            single = run(float(m), float(f))
            chex.assert_trees_all_close(jax.tree.map(lambda t: t[a, b], batched), single, rtol=1e-5, atol=1e-6)


def test_optimal_mode_clips_and_otherwise_takes_the_exact_minimiser():
    x, w, w_pruned = _layer(6)
    with jax.enable_x64(True):
        res = optlab.greedy_correction(x, w, w_pruned, mode="optimal", fraction=1.0, max_relative=0.2)
        change = np.abs(np.asarray(res.weights) - w_pruned)
        assert np.all(change <= 0.2 * np.abs(w_pruned) * (1 + 1e-12))
        assert change.max() > 0.19 * np.abs(w_pruned[change > 0]).min()  # the bound is active somewhere
        free = optlab.greedy_correction(x, w, w_pruned, mode="optimal", fraction=1 / D_IN)
        j = int(free.trace.position[0])
        p = x[:, j] @ (x @ (w_pruned - w))
        expected = np.where(w_pruned[j] != 0, -p / np.sum(x[:, j] ** 2), 0.0)
        np.testing.assert_allclose(np.asarray(free.weights)[j] - w_pruned[j], expected, rtol=1e-10, atol=1e-14)


@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 10_000), magnitude=st.floats(0.01, 1.0))
def test_error_never_increases_and_matches_the_weights(seed, magnitude):
    x, w, w_pruned = _layer(seed)
    res = optlab.greedy_correction(x, w, w_pruned, magnitude=magnitude, fraction=0.5)
    errors = np.concatenate([[float(res.initial_error)], np.asarray(res.trace.error)])
    assert np.all(np.diff(errors) <= 1e-6 * errors[0])
    assert np.all(np.asarray(res.trace.improvement) >= 0)
    scale = float(np.abs(res.trace.linear).max())  # float32: improvement = -(linear + quad) up to cancellation
    np.testing.assert_allclose(res.trace.improvement, -(res.trace.linear + res.trace.quad), atol=1e-6 * scale)
    true_final = np.sum((x @ (np.asarray(res.weights, np.float64) - w)) ** 2) / (N * D_OUT)
    np.testing.assert_allclose(float(res.final_error), true_final, rtol=1e-4)
    assert np.all(np.asarray(res.weights)[w_pruned == 0] == 0)


def test_diminishing_ratio_is_second_half_over_first_half():
    x, w, w_pruned = _layer(7)
    res = optlab.greedy_correction(x, w, w_pruned, magnitude=0.05, fraction=0.5)
    imp = np.asarray(res.trace.improvement)[np.asarray(res.trace.applied)]
    h = len(imp) // 2
    np.testing.assert_allclose(res.diminishing_ratio, imp[h:].mean() / imp[:h].mean(), rtol=1e-5)


def test_format_trace_gives_the_note_lines_for_applied_steps():
    x, w, w_pruned = _layer(8)
    res = optlab.greedy_correction(x, w, w_pruned, magnitude=0.5, fraction=0.5, max_steps=D_IN)
    lines = format_trace(res)
    n = int(res.n_applied)
    assert len(lines) == n + 2 + (float(res.diminishing_ratio) < 0.5)
    first = int(res.trace.position[0])
    assert lines[0].startswith(f"Position 1/6: j={first}, channels={int(res.trace.channels[0])}, improvement=")
    assert f"error={float(res.trace.error[n - 1]):.3e}" in lines[n - 1]
    assert lines[n] == f"Applied {n}/6 positions"  # K = round(0.5 · 12), not the scan length max_steps
    assert lines[n + 1] == f"Diminishing returns: 2nd half avg / 1st half avg = {float(res.diminishing_ratio):.3f}"


def test_format_trace_rejects_a_vmapped_result_and_verbose_is_refused():
    x, w, w_pruned = _layer(8)
    batched = jax.vmap(lambda m: optlab.greedy_correction(x, w, w_pruned, magnitude=m, fraction=0.5))(
        jnp.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="one correction"):
        format_trace(batched)
    with pytest.raises(TypeError, match="format_trace"):
        optlab.greedy_correction(x, w, w_pruned, verbose=True)


BAD = [
    (dict(x=np.ones((5, 3))), "w_dense"),
    (dict(w_pruned=np.ones((D_IN, D_OUT + 1))), "w_pruned"),
    (dict(x=np.ones(4)), "x must be 2-D"),
    (dict(magnitude=0.0), "magnitude"),
    (dict(magnitude=-1.0), "magnitude"),
    (dict(fraction=0.0), "fraction"),
    (dict(fraction=1.5), "fraction"),
    (dict(fraction=0.04), r"fraction · d_in rounds to 0 positions \(fraction=0.04, d_in=12\)"),
    (dict(mode="best"), "mode"),
    (dict(mode="optimal", max_relative=0.0), "max_relative"),
    (dict(x=np.full((N, D_IN), np.nan)), "x must be finite"),
    (dict(max_steps=D_IN + 1), "max_steps"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_raise(change, message):
    x, w, w_pruned = _layer()
    args = {"x": x, "w_dense": w, "w_pruned": w_pruned, **change}
    with pytest.raises(ValueError, match=message):
        optlab.greedy_correction(**args)


def test_correct_from_gram_checks_shapes():
    x, w, w_pruned = _layer()
    stats = gram_stats(x, w, w_pruned)
    with pytest.raises(ValueError, match="gram"):
        optlab.correct_from_gram(stats.gram[:-1], stats.cross, w_pruned, n=N, r_sq=stats.r_sq)
    with pytest.raises(ValueError, match="cross"):
        optlab.correct_from_gram(stats.gram, stats.cross.T, w_pruned, n=N, r_sq=stats.r_sq)
    with pytest.raises(ValueError, match="n must be"):
        optlab.correct_from_gram(stats.gram, stats.cross, w_pruned, n=0, r_sq=stats.r_sq)


def test_correct_from_gram_rejects_statistics_no_rows_can_give():
    x, w, w_pruned = _layer()
    stats = gram_stats(x, w, w_pruned)
    call = lambda **kw: optlab.correct_from_gram(**{"gram": stats.gram, "cross": stats.cross, "w_pruned": w_pruned,
                                                    "n": N, "r_sq": stats.r_sq, **kw})
    assert int(call().n_applied) > 0  # the true statistics pass
    with pytest.raises(ValueError, match="r_sq must be a scalar >= 0"):
        call(r_sq=-1.0)
    with pytest.raises(ValueError, match="cross is inconsistent with gram and r_sq"):
        call(r_sq=0.01 * stats.r_sq)  # too small an error for these cross terms (Cauchy-Schwarz)
    with pytest.raises(ValueError, match="cross is inconsistent"):
        call(cross=stats.cross * 100.0)
    with pytest.raises(ValueError, match="diagonal >= 0"):
        call(gram=-stats.gram)
    with pytest.raises(ValueError, match="fraction · d_in rounds to 0"):
        call(fraction=0.01)
