"""Specification of the shared guards: argument checks and the one finiteness guard."""

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.optimizers import guards, skip_non_finite


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"minimum": 0.0}, -1.0, r"x=-1.0 is not allowed: must be a finite number >= 0.0"),
        ({"minimum": 0.0}, math.inf, r"x=inf is not allowed: must be a finite number >= 0.0"),
        ({"minimum": 0.0, "allow_inf": True}, math.nan, r"x=nan is not allowed: must be a number \(inf allowed\) >= 0.0"),
        ({"minimum": 0.0, "maximum": 1.0, "maximum_exclusive": True}, 1.0, r"must be a finite number in \[0.0, 1.0\)"),
        ({"minimum": 0.0}, np.array([0.5, -2.0]), r"x=\[0.5, -2.0\] is not allowed"),
        ({"minimum": 0.0}, jnp.asarray(-1.0), r"x=-1.0 is not allowed"),
    ],
)
def test_check_number_rejects_concrete_values_out_of_range(kwargs, value, message):
    with pytest.raises(ValueError, match=message):
        guards.check_number("x", value, **kwargs)


def test_check_number_lets_traced_values_and_schedules_pass():
    guards.check_number("x", 0.0, minimum=0.0)
    guards.check_number("x", math.inf, minimum=0.0, allow_inf=True)
    guards.check_number("x", optax.constant_schedule(-1.0), minimum=0.0)  # not evaluated
    # Traced: validated by nobody, so a grid may carry any value through jit / vmap.
    jax.jit(lambda v: guards.check_number("x", v, minimum=0.0) or v)(-1.0)
    jax.vmap(lambda v: guards.check_number("x", v, minimum=0.0) or v)(jnp.array([-1.0, 1.0]))


@settings(deadline=None, max_examples=40)
@given(
    numerator=st.sampled_from([0.0, -0.0, 1e-30, -2.0, 7.0]),
    denominator=st.sampled_from([0.0, 1e-30, 3.0, math.inf]),
)
def test_safe_divide_is_zero_exactly_where_the_numerator_is_zero(numerator, denominator):
    got = float(guards.safe_divide(jnp.float32(numerator), jnp.float32(denominator)))
    if numerator == 0:
        assert got == 0.0  # 0/0 is 0, not NaN
    else:
        with np.errstate(divide="ignore"):  # x / 0 = inf is the expected value here
            np.testing.assert_allclose(got, np.float32(numerator) / np.float32(denominator))


class _CounterState(NamedTuple):
    seen: jax.Array  # shape=(), float32: sum of the losses of applied steps.
    key: jax.Array  # shape=(), int32: advances on every call.
    step_scale: jax.Array  # shape=(1,), float32: last multiplier.
    skipped: jax.Array  # shape=(), int32: skipped steps.


def _times_value():
    """A guard-free transformation: update = value · g."""

    def init_fn(params):
        del params
        return _CounterState(jnp.zeros([]), jnp.zeros([], jnp.int32), jnp.zeros((1,)), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        new = _CounterState(state.seen + value, state.key + 1, jnp.full((1,), value), state.skipped)
        return jax.tree.map(lambda g: value * g, updates), new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def test_skip_non_finite_keeps_the_state_advances_named_fields_and_counts():
    tx = skip_non_finite(_times_value(), "times_value", always_advance=("key",))
    g = {"a": jnp.array([1.0, 2.0]), "n": jnp.array([1, 2])}
    state = tx.init(g)
    update = jax.jit(lambda g, s, v: tx.update(g, s, value=v))
    updates, state = update(g, state, 2.0)
    chex.assert_trees_all_equal(updates["a"], jnp.array([2.0, 4.0]))
    # An update that overflows float32 (1e30 · 1e30) is skipped: zero update, state kept, key advanced.
    updates, skipped_state = update({"a": jnp.array([1e30, 0.0]), "n": g["n"]}, state, 1e30)
    chex.assert_trees_all_equal(updates["a"], jnp.zeros(2))
    assert float(skipped_state.seen) == 2.0 and int(skipped_state.key) == 2 and int(skipped_state.skipped) == 1
    np.testing.assert_array_equal(skipped_state.step_scale, [0.0])
    # A NaN loss with a finite product is skipped too.
    _, nan_state = update(g, skipped_state, jnp.nan)
    assert int(nan_state.skipped) == 2 and float(nan_state.seen) == 2.0
    with pytest.raises(TypeError, match=r"times_value.update: .*value="):
        tx.update(g, state)
    with pytest.raises(ValueError, match=r"times_value.update: value= must be the scalar loss"):
        tx.update(g, state, value=jnp.ones(1))
