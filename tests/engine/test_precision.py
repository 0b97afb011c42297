"""Precision arms of fit: pure float16, float32 master weights with float16 compute, DeepSpeed-style dynamic loss
scaling (against a plain-Python transcription of DeepSpeed's rule), ulp diagnostics, vmap and resume."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.engine import DynamicLossScale, LossScaleState, fit, load_state, start_state, ulp_ratio
from optlab.engine.precision import all_finite

N_STEPS = 24


class ReferenceScaler:
    """DeepSpeed's DynamicLossScaler.update_scale rule, one Python step at a time (iteration counters, no modulo
    state), the reference the jitted scaler must match."""

    def __init__(self, initial, window, hysteresis, minimum, consecutive):
        self.scale, self.window, self.full, self.minimum = float(initial), window, hysteresis, float(minimum)
        self.left, self.consecutive = hysteresis, consecutive
        self.iteration, self.last_overflow = 0, -1

    def update(self, overflow):
        if overflow:
            if self.full == 1 or self.left == 1:
                self.scale = max(self.scale / 2, self.minimum)
            else:
                self.left -= 1
            self.last_overflow = self.iteration
        else:
            if self.consecutive:
                self.left = self.full
            if (self.iteration - self.last_overflow) % self.window == 0:
                if not self.consecutive:
                    self.left = self.full
                self.scale *= 2
        self.iteration += 1


def reference_scales(overflows, **kwargs):
    """The scale each step uses (before its own update)."""
    scaler, used = ReferenceScaler(**kwargs), []
    for overflow in overflows:
        used.append(scaler.scale)
        scaler.update(bool(overflow))
    return np.asarray(used)


@jax.jit
def scanned_scales(overflows, initial, window, hysteresis, minimum, consecutive):
    scaler = DynamicLossScale(initial, window, hysteresis, minimum, consecutive_hysteresis=consecutive)

    def step(state, overflow):
        return scaler.adjust(state, ~overflow), state.scale

    return jax.lax.scan(step, scaler.init(), overflows)[1]


@settings(max_examples=40, deadline=None)
@given(overflows=st.lists(st.booleans(), min_size=N_STEPS, max_size=N_STEPS), window=st.integers(1, 5),
       hysteresis=st.integers(1, 3), minimum=st.sampled_from([1.0, 4.0]), consecutive=st.booleans())
def test_scaler_matches_deepspeed_rule(overflows, window, hysteresis, minimum, consecutive):
    # Traced hyperparameters: one compiled program for every example (and proof that a grid can vmap over them).
    got = scanned_scales(jnp.asarray(overflows), 16.0, window, hysteresis, minimum, consecutive)
    want = reference_scales(overflows, initial=16.0, window=window, hysteresis=hysteresis, minimum=minimum,
                            consecutive=consecutive)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_scaler_halves_after_hysteresis_doubles_after_window_and_stops_at_minimum():
    scaler = DynamicLossScale(initial=4.0, window=3, hysteresis=2, minimum=1.0)
    overflow, good = jnp.asarray(False), jnp.asarray(True)
    state = scaler.adjust(scaler.init(), overflow)
    assert float(state.scale) == 4.0 and int(state.hysteresis) == 1  # the first overflow is absorbed
    for expected in (2.0, 1.0, 1.0):  # then every overflow halves, never below the minimum
        state = scaler.adjust(state, overflow)
        assert float(state.scale) == expected
    for _ in range(2):
        state = scaler.adjust(state, good)
    assert float(state.scale) == 1.0 and int(state.good_steps) == 2
    state = scaler.adjust(state, good)  # the window's third good step doubles and refills the hysteresis
    assert float(state.scale) == 2.0 and int(state.hysteresis) == 2 and int(state.good_steps) == 0


def test_scaler_defaults_are_deepspeeds():
    state = DynamicLossScale().init()
    assert DynamicLossScale()[:4] == (2.0**16, 1000, 2, 1.0)
    chex.assert_trees_all_equal(state, LossScaleState(jnp.float32(65536.0), jnp.int32(0), jnp.int32(2)))
    assert state.scale.dtype == jnp.float32


# An injected overflow: step t reads example t (batch_size 1, fixed order); a poisoned example has an inf gradient.
def poisoned_loss(params, batch):
    return 0.5 * jnp.sum((params["w"] - 1.0) ** 2) + params["w"][0] * batch["poison"][0]


PARAMS = {"w": jnp.zeros(2)}
SCALER = DynamicLossScale(initial=8.0, window=2, hysteresis=2)


def poisoned_fit(poison, **kwargs):
    kwargs = {"loss_scale": SCALER, "batch_size": 1, "shuffle": False, **kwargs}
    return fit(poisoned_loss, PARAMS, optax.sgd(0.1), data={"poison": poison},
               metrics_fn=lambda p: {"w0": p["w"][0]}, **kwargs)


PATTERNS = np.array([[0, 1, 1, 1, 0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 1, 1, 0, 0, 0]], bool)


def test_injected_overflows_skip_and_rescale_under_vmap():
    poison = jnp.where(jnp.asarray(PATTERNS), jnp.inf, 0.0)
    runs = jax.vmap(lambda p: poisoned_fit(p, steps=10))(poison)
    for cell, overflows in enumerate(PATTERNS):
        want = reference_scales(overflows, initial=8.0, window=2, hysteresis=2, minimum=1.0, consecutive=False)
        np.testing.assert_array_equal(np.asarray(runs.trace["loss_scale"][cell]), want)
        np.testing.assert_array_equal(np.asarray(runs.trace["skipped"][cell]), overflows)
        w0 = np.asarray(runs.trace["metrics/w0"][cell])
        for t in np.flatnonzero(overflows[:-1]):  # a skipped step leaves the parameters as they were
            assert w0[t + 1] == w0[t]
        assert int(runs.skipped_steps[cell]) == overflows.sum()
        assert np.all(np.isfinite(np.asarray(runs.params["w"][cell])))
    assert not np.array_equal(*np.asarray(runs.trace["loss_scale"]))  # the two cells really differ


def test_dynamic_scaling_resume_is_bit_identical(tmp_path):
    poison = jnp.where(jnp.asarray(PATTERNS[0]), jnp.inf, 0.0)[:8]
    whole = poisoned_fit(poison, steps=8)
    poisoned_fit(poison, steps=8, checkpoint_every=4, checkpoint_dir=tmp_path)
    resumed = poisoned_fit(poison, steps=8, resume_from=tmp_path / "checkpoint_000004.eqx")
    chex.assert_trees_all_equal(resumed.params, whole.params)
    chex.assert_trees_all_equal(resumed.state.loss_scale, whole.state.loss_scale)
    chex.assert_trees_all_equal(resumed.trace, whole.trace)
    # The scaler's state is part of the checkpoint, and start= continues it.
    loaded = load_state(tmp_path / "checkpoint_000004.eqx", PARAMS, optax.sgd(0.1), loss_scale=SCALER)
    assert float(loaded.loss_scale.scale) != SCALER.initial
    continued = poisoned_fit(poison, steps=4, start=loaded)
    chex.assert_trees_all_equal(continued.state.loss_scale, whole.state.loss_scale)
    chex.assert_trees_all_equal(continued.params, whole.params)


def test_start_state_fills_the_scaler_and_refuses_a_stray_one():
    poison = jnp.zeros(4)
    run = poisoned_fit(poison, steps=4, start=start_state())
    assert float(run.trace["loss_scale"][0]) == SCALER.initial
    with pytest.raises(ValueError, match="loss_scale"):
        poisoned_fit(poison, steps=4, loss_scale=None, start=start_state(loss_scale=SCALER.init()))


def tiny_gradient_loss(params, batch):
    del batch
    return 1e-4 * jnp.sum(params["w"])  # gradient 1e-4: its square (1e-8) underflows to 0 in float16


def test_pure_float16_adam_has_float16_moments_and_zero_eps():
    assert float(jnp.asarray(1e-8, jnp.float16)) == 0.0  # optax.adam's eps, as a float16 moment sees it
    run = fit(tiny_gradient_loss, PARAMS, optax.adam(1e-2), steps=5, dtype="float16")
    adam = run.opt_state[0]
    assert adam.mu["w"].dtype == adam.nu["w"].dtype == run.params["w"].dtype == jnp.float16
    # nu = 0 and eps = 0: m / (sqrt(nu) + eps) is inf, so every step is skipped and the parameters freeze.
    assert int(run.skipped_steps) == 5
    chex.assert_trees_all_equal(run.params, jax.tree.map(lambda x: x.astype(jnp.float16), PARAMS))
    moved = fit(tiny_gradient_loss, PARAMS, optax.adam(1e-2, eps=1e-3), steps=5, dtype="float16")
    assert int(moved.skipped_steps) == 0 and float(moved.params["w"][0]) < 0  # a float16-sized eps unfreezes it


def test_mixed_precision_keeps_float32_master_weights_and_moments():
    seen = []

    def loss(params, batch):
        seen.append((params["w"].dtype, batch["x"].dtype))
        return tiny_gradient_loss(params, None) * jnp.mean(batch["x"])

    run = fit(loss, PARAMS, optax.adam(1e-2), steps=5, data={"x": jnp.ones(3)}, dtype="float32",
              compute_dtype="float16", trace_updates=True)
    assert set(seen) == {(jnp.dtype("float16"), jnp.dtype("float16"))}  # the loss is computed in float16
    adam = run.opt_state[0]
    assert run.params["w"].dtype == adam.mu["w"].dtype == adam.nu["w"].dtype == jnp.float32
    assert int(run.skipped_steps) == 0
    np.testing.assert_allclose(run.params["w"], -0.05, rtol=1e-3)  # Adam's lr-sized steps: 5 x -1e-2
    assert bool(jnp.all(run.trace["opt_state_finite"]))


def test_update_ulp_ratio_tells_a_frozen_float16_parameter():
    ones = {"w": jnp.ones(2)}
    linear = lambda p, batch: jnp.sum(p["w"])  # noqa: E731 - gradient 1
    frozen = fit(linear, ones, optax.sgd(1e-4), steps=3, dtype="float16", trace_updates=True)
    moving = fit(linear, ones, optax.sgd(1e-3), steps=3, dtype="float16", trace_updates=True)
    # ulp(1) = 2^-10 in float16: an update of 1e-4 is 0.2 half-ulps and rounds away; 1e-3 is 2 half-ulps.
    np.testing.assert_allclose(frozen.trace["update_ulp_ratio"], 0.2048, rtol=1e-3)
    chex.assert_trees_all_equal(frozen.params, jax.tree.map(lambda x: x.astype(jnp.float16), ones))
    assert bool(jnp.all(moving.trace["update_ulp_ratio"] > 1)) and float(moving.params["w"][0]) < 1
    plain = fit(linear, ones, optax.sgd(1e-3), steps=3, dtype="float16")
    assert "update_ulp_ratio" not in plain.trace and "opt_state_finite" not in plain.trace
    assert "loss_scale" not in plain.trace
    chex.assert_trees_all_equal(plain.params, moving.params)  # tracing changes no number


def test_opt_state_finite_flags_an_overflowed_float16_moment():
    steep = lambda p, batch: 300.0 * jnp.sum(p["w"])  # noqa: E731 - g^2 = 9e4 > 65504: nu is inf in float16
    run = fit(steep, PARAMS, optax.adam(1e-2), steps=2, dtype="float16", trace_updates=True)
    # m / sqrt(inf) = 0 is finite, so the step is applied and the inf moment stays in the state.
    assert int(run.skipped_steps) == 0 and not bool(jnp.any(run.trace["opt_state_finite"]))
    assert not bool(all_finite(run.opt_state))


def test_ulp_ratio_is_finite_at_zero_and_splits_complex_parts():
    assert float(ulp_ratio({"a": jnp.zeros(3)}, {"a": jnp.zeros(3)})) == 0.0
    assert np.isfinite(float(ulp_ratio(jnp.asarray(1e-30), jnp.asarray(0.0))))
    complex_ratio = ulp_ratio(jnp.asarray(1e-9 + 1e-6j, jnp.complex64), jnp.asarray(1.0 + 1.0j, jnp.complex64))
    np.testing.assert_allclose(complex_ratio, 1e-6 / 2**-24, rtol=1e-5)  # the imaginary part dominates


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"loss_scale": DynamicLossScale(window=0)}, ValueError, "window"),
    ({"loss_scale": DynamicLossScale(hysteresis=1.5)}, TypeError, "hysteresis"),
    ({"loss_scale": DynamicLossScale(initial=-1.0)}, ValueError, "initial"),
    ({"loss_scale": DynamicLossScale(factor=1.0)}, ValueError, "factor"),
    ({"loss_scale": DynamicLossScale(initial=0.5, minimum=1.0)}, ValueError, "minimum"),
    ({"compute_dtype": "int8"}, ValueError, "int8"),
    ({"trace_updates": "yes"}, TypeError, "trace_updates"),
])
def test_bad_precision_arguments_fail_before_any_work(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(tiny_gradient_loss, PARAMS, optax.sgd(0.1), steps=2, **kwargs)
