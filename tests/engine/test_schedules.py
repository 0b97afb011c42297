"""Schedules against closed forms and optax's own schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab.engine import schedules

STEPS = np.arange(0, 131)


def _values(schedule, steps=STEPS):
    return np.asarray(jax.vmap(schedule)(jnp.asarray(steps)))


def test_constant():
    np.testing.assert_allclose(_values(schedules.constant(0.3)), 0.3, rtol=1e-7)


def test_cosine_annealing_matches_note_formula():
    lr_max, lr_min, total = 1e-3, 1e-4, 100
    progress = np.minimum(STEPS, total) / total
    expected = lr_min + 0.5 * (lr_max - lr_min) * (1 + np.cos(np.pi * progress))
    np.testing.assert_allclose(_values(schedules.cosine(total, lr_max=lr_max, lr_min=lr_min)), expected, rtol=1e-5)


def test_warmup_cosine_matches_optax_and_closed_form():
    warmup, total, peak, end, init = 10, 110, 0.01, 1e-4, 1e-3
    ours = _values(schedules.warmup_cosine(warmup, total, lr_max=peak, lr_min=end, lr_init=init))
    reference = _values(optax.warmup_cosine_decay_schedule(init, peak, warmup, total, end))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-9)
    t = STEPS
    closed = np.where(
        t < warmup,
        init + (peak - init) * t / warmup,
        end + 0.5 * (peak - end) * (1 + np.cos(np.pi * np.minimum(t - warmup, total - warmup) / (total - warmup))),
    )
    np.testing.assert_allclose(ours, closed, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_wsd_piecewise(decay):
    warmup, stable, decay_steps, peak, low = 10, 50, 40, 2.0, 0.2
    ours = _values(schedules.wsd(warmup, stable, decay_steps, lr_max=peak, lr_min=low, decay=decay))
    t = STEPS
    frac = np.clip((t - warmup - stable) / decay_steps, 0, 1)
    tail = peak + (low - peak) * frac if decay == "linear" else low + 0.5 * (peak - low) * (1 + np.cos(np.pi * frac))
    expected = np.where(t < warmup, peak * t / warmup, np.where(t < warmup + stable, peak, tail))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)


def test_wsd_without_warmup_or_stable_phase():
    np.testing.assert_allclose(_values(schedules.wsd(0, 0, 10, lr_min=0.0), np.arange(12)),
                               np.clip(1 - np.arange(12) / 10, 0, 1), atol=1e-6)


def test_step_decay():
    ours = _values(schedules.step_decay(25, factor=0.5, lr_max=0.8))
    np.testing.assert_allclose(ours, 0.8 * 0.5 ** (STEPS // 25), rtol=1e-6)


def test_values_may_be_traced():
    peaks = jnp.array([0.5, 1.0, 2.0])
    out = jax.vmap(lambda peak: schedules.warmup_cosine(5, 20, lr_max=peak, lr_min=0.1 * peak)(10))(peaks)
    single = np.array([float(schedules.warmup_cosine(5, 20, lr_max=p, lr_min=0.1 * p)(10)) for p in [0.5, 1.0, 2.0]])
    np.testing.assert_allclose(out, single, rtol=1e-6)


def test_make_schedule_dispatches_by_name():
    by_name = schedules.make_schedule("cosine", total_steps=50, lr_max=3.0, lr_min=1.0)
    direct = schedules.cosine(50, lr_max=3.0, lr_min=1.0)
    np.testing.assert_array_equal(_values(by_name), _values(direct))
    assert set(schedules.SCHEDULES) == {"constant", "warmup_cosine", "cosine", "wsd", "step"}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: schedules.make_schedule("exp"), ValueError, "name='exp'.*allowed"),
        (lambda: schedules.make_schedule("cosine", steps=10), TypeError, "cosine"),
        (lambda: schedules.cosine(0), ValueError, "total_steps"),
        (lambda: schedules.cosine(10.5), TypeError, "total_steps"),
        (lambda: schedules.warmup_cosine(10, 10), ValueError, "total_steps"),
        (lambda: schedules.wsd(1, 1, 1, decay="exp"), ValueError, "decay"),
        (lambda: schedules.step_decay(10, factor=0.0), ValueError, "factor"),
        (lambda: schedules.step_decay(0), ValueError, "every"),
    ],
)
def test_bad_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()
