"""Properties every optlab optimizer must have, run over one list of optimizers (as optax's alias_test).

Rows: each optimizer under test; dtype rows float16 / bfloat16 / float32 (and complex64 where the
property is defined for complex parameters).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.optimizers import newton_root, newton_root_adam, newton_root_hutchinson

# (name, factory(learning_rate, **kw), fixed kwargs, static_args for optax.inject_hyperparams)
OPTIMIZERS_UNDER_TEST = [
    ("newton_root/global", newton_root, {}, ()),
    ("newton_root/per_leaf", newton_root, {"scaling": "per_leaf"}, ()),
    ("newton_root/per_layer", newton_root, {"scaling": "per_layer"}, ()),
    ("newton_root_adam", newton_root_adam, {}, ()),
    ("newton_root_hutchinson", newton_root_hutchinson, {}, ("n_probes",)),
]
NAMES = [row[0] for row in OPTIMIZERS_UNDER_TEST]
ROWS = {row[0]: row for row in OPTIMIZERS_UNDER_TEST}
HALF_AND_SINGLE = ["float16", "bfloat16", "float32"]

TARGET = {
    "layer": {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(3.0)},
    "out": {"w": jnp.array([0.5, -0.5]), "b": jnp.array(-1.0)},
}
# Every leaf (so every layer too) starts at squared error 9: per-group steps with share="equal"
# then halve every error at once; unequal groups would zig-zag (the lab-note subject, not tested here).
P0 = {
    "layer": {"w": jnp.array([3.0, 0.0, 1.5]), "b": jnp.array(0.0)},
    "out": {"w": jnp.array([3.5, -0.5]), "b": jnp.array(2.0)},
}
P0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), P0)  # strongly typed, so jit does not retrace


def make(name, learning_rate=1.0, **kwargs):
    _, factory, fixed, _ = ROWS[name]
    return factory(learning_rate, **fixed, **kwargs)


def parabola(p):
    """sum |p - target|^2 (complex parameters allowed)."""
    terms = jax.tree.map(lambda x, t: jnp.sum(jnp.abs(x - t.astype(x.dtype)) ** 2), p, TARGET)
    return optax.tree.sum(terms)


def cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def step_fn(opt, loss_fn):
    """One optimizer step; complex gradients are conjugated (JAX's grad is conj of the descent direction)."""

    def step(p, state):
        value, grads = jax.value_and_grad(loss_fn)(p)
        grads = jax.tree.map(jnp.conj, grads)
        updates, state = opt.update(grads, state, p, value=value, value_fn=loss_fn)
        return optax.apply_updates(p, updates), state, value, updates

    return step


def run(opt, loss_fn, params, steps):
    step = step_fn(opt, loss_fn)

    def body(carry, _):
        p, state = carry
        p, state, value, _ = step(p, state)
        return (p, state), value

    (params, state), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return params, state, losses


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_parabola(name, dtype):
    opt = make(name, 0.5)
    params, state, losses = jax.jit(run, static_argnums=(0, 1, 3))(opt, parabola, cast(P0, dtype), 40)
    assert float(parabola(params)) < 1e-3 * float(losses[0])
    chex.assert_trees_all_equal_dtypes(params, cast(P0, dtype))  # complex stays complex
    chex.assert_trees_all_equal_shapes_and_dtypes(state, opt.init(cast(P0, dtype)))
    assert int(state[0].skipped) == 0


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_matches_the_plain_optimizer_and_does_not_recompile(name):
    _, factory, fixed, static = ROWS[name]
    injected = optax.inject_hyperparams(factory, static_args=static)(learning_rate=0.5, **fixed)
    chex.clear_trace_counter()  # other tests trace the same step function
    step = jax.jit(chex.assert_max_traces(step_fn(injected, parabola), n=1))
    params, state, _, _ = step(P0, injected.init(P0))
    want, _, _, _ = jax.jit(step_fn(make(name, 0.5), parabola))(P0, make(name, 0.5).init(P0))
    chex.assert_trees_all_close(params, want, rtol=1e-5)
    state.hyperparams["learning_rate"] = state.hyperparams["learning_rate"] * 0.5
    step(params, state)  # a new learning rate is a new value, not a new program


# --- Half precision: never NaN, skips counted --------------------------------------------------

# Magnitudes that break naive half precision: exact zeros, tiny (||g||² underflows), huge (overflows).
EXPONENTS = [None, -7, -5, -3, 0, 1, 3, 5, 30]


@st.composite
def extreme_trees(draw, positive=False):
    def element():
        exponent = draw(st.sampled_from(EXPONENTS))
        if exponent is None:
            return 0.0
        sign = 1.0 if positive else draw(st.sampled_from([-1.0, 1.0]))
        return sign * draw(st.floats(1.0, 9.99)) * 10.0**exponent

    return jax.tree.map(lambda leaf: np.reshape([element() for _ in range(leaf.size)], leaf.shape), P0)


def _all(predicate, tree):
    return jnp.all(jnp.stack([jnp.all(predicate(x)) for x in jax.tree.leaves(tree)]))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e30 -> inf in float16, on purpose
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE)
@pytest.mark.parametrize("name", NAMES)
def test_extreme_gradients_give_finite_updates_or_counted_skips(name, dtype):
    opt = make(name)

    @jax.jit
    def two_steps(params, grads, values, curvature):
        # The Hessian (Hutchinson) sees the same extremes: loss sum c·p².
        value_fn = lambda p: optax.tree.sum(jax.tree.map(lambda c, x: jnp.sum(c * x * x), curvature, p))
        init = opt.init(params)

        def body(carry, inputs):
            p, state = carry
            g, v = inputs
            updates, new_state = opt.update(g, state, p, value=v, value_fn=value_fn)
            p = optax.apply_updates(p, updates)
            skipped = new_state[0].skipped - state[0].skipped
            # Per step: a counted skip with an exactly zero update, or a finite update; never a NaN parameter.
            ok = jnp.where(skipped == 1, _all(lambda u: u == 0, updates), _all(jnp.isfinite, updates))
            ok &= (skipped >= 0) & (skipped <= 1) & _all(lambda x: ~jnp.isnan(x), p)
            return (p, new_state), (ok, updates)

        (_, state), (ok, updates) = jax.lax.scan(body, (params, init), (grads, values))
        # The state is never poisoned: every floating leaf stays finite.
        floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(ok) & _all(jnp.isfinite, floats), updates, state, init

    @settings(deadline=None, max_examples=20, derandomize=True)
    @given(
        params=extreme_trees(),
        grads=st.tuples(extreme_trees(), extreme_trees()),
        values=st.tuples(*[st.sampled_from([0.0, 1e-6, 0.5, 3.0, 1e4, 1e30])] * 2),
        curvature=extreme_trees(positive=True),
    )
    def check(params, grads, values, curvature):
        # Parameters start finite and moderate; extremes are in gradients, losses and curvature.
        params = cast(jax.tree.map(lambda p: np.clip(p, -100.0, 100.0), params), dtype)
        grads = cast(jax.tree.map(lambda *g: np.stack(g), *grads), dtype)
        ok, updates, state, init = two_steps(params, grads, jnp.asarray(values, dtype), cast(curvature, dtype))
        assert bool(ok), (updates, state)
        chex.assert_trees_all_equal_dtypes(jax.tree.map(lambda u: u[0], updates), params)
        chex.assert_trees_all_equal_shapes_and_dtypes(state, init)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_float16_small_gradients_step_and_overflowing_updates_are_counted(name):
    # ||g||² = 2e-8 underflows in float16, and one gradient entry is exactly 0 (Adam: 0/0 before).
    params = cast(P0, "float16")
    grads = cast(jax.tree.map(lambda p: jnp.full(p.shape, 1e-4), P0), "float16")
    grads["layer"]["w"] = grads["layer"]["w"].at[1].set(0.0)
    opt = make(name)
    curvature = lambda p: optax.tree.sum(jax.tree.map(lambda x: jnp.sum(x * x), p))
    update = jax.jit(lambda v: opt.update(grads, opt.init(params), params, value=v, value_fn=curvature))
    updates, state = update(jnp.float16(1e-3))
    assert int(state[0].skipped) == 0 and int(state[0].count) == 1
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    assert float(updates["layer"]["w"][1]) == 0.0  # a zero gradient entry does not move
    assert float(jnp.abs(updates["layer"]["w"][0])) > 0  # the others do
    # A loss of 1e4 makes the update ~1e4 / 1e-4 = 1e8, beyond float16's 65504: skipped and counted.
    updates, state = update(jnp.float16(1e4))
    assert int(state[0].skipped) == 1 and int(state[0].count) == 0
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))


# --- Bad input -----------------------------------------------------------------------------------

COMMON_BAD = [
    ("learning_rate", -0.1),
    ("learning_rate", math.nan),
    ("max_scale", -1.0),
    ("f_min", math.nan),
]
SPECIFIC_BAD = {
    "newton_root/global": [("eps", -1e-3), ("eps", math.nan)],
    "newton_root_adam": [("b2", 1.0), ("b2", 1.5), ("b2", -0.1), ("eps", -1e-8), ("denominator_eps", -1.0)],
    "newton_root_hutchinson": [("damping", -1e-4), ("ema", 1.5), ("denominator_eps", -1.0)],
}
BAD_CASES = [(name, arg, value) for name in NAMES for arg, value in COMMON_BAD + SPECIFIC_BAD.get(name, [])]


@pytest.mark.parametrize(("name", "arg", "value"), BAD_CASES)
def test_bad_hyperparameters_raise_value_error_naming_the_argument(name, arg, value):
    kwargs = {arg: value}
    learning_rate = kwargs.pop("learning_rate", 1.0)
    with pytest.raises(ValueError, match=rf"^{arg}=.* is not allowed: must be"):
        make(name, learning_rate, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_traced_hyperparameters_are_not_validated(name):
    # Under vmap the learning rate is a tracer: no check, no error, one update per value.
    def first_update(learning_rate):
        opt = make(name, learning_rate)
        return opt.update(P0, opt.init(P0), P0, value=1.0, value_fn=parabola)[0]

    updates = jax.jit(jax.vmap(first_update))(jnp.array([0.5, 1.0]))
    chex.assert_trees_all_close(jax.tree.map(lambda u: u[1], updates), jax.tree.map(lambda u: 2 * u[0], updates))


@pytest.mark.parametrize("name", NAMES)
def test_non_scalar_value_raises_instead_of_broadcasting(name):
    opt = make(name)
    with pytest.raises(ValueError, match=r"value= must be the scalar loss \(shape \(\)\), got shape \(3,\)"):
        opt.update(P0, opt.init(P0), P0, value=jnp.ones(3), value_fn=parabola)


@pytest.mark.parametrize("name", NAMES)
def test_integer_leaves_are_left_untouched(name):
    params = {"w": jnp.array([3.0, -1.0]), "n": jnp.array([5, 7], jnp.int32)}
    loss_fn = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + 0.0 * jnp.sum(p["n"])
    opt = make(name)
    grads = {"w": jax.grad(lambda w: loss_fn({"w": w, "n": params["n"]}))(params["w"]), "n": jnp.array([2, 3], jnp.int32)}
    updates, state = opt.update(grads, opt.init(params), params, value=loss_fn(params), value_fn=loss_fn)
    new = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal(new["n"], params["n"])
    assert bool(jnp.all(updates["n"] == 0)) and int(state[0].skipped) == 0
    # The float leaf steps as if the integer leaf were absent.
    alone = {"w": params["w"]}
    want, _ = opt.update({"w": grads["w"]}, opt.init(alone), alone, value=loss_fn(params), value_fn=lambda p: loss_fn({**p, "n": params["n"]}))
    chex.assert_trees_all_close(updates["w"], want["w"], rtol=1e-6)
