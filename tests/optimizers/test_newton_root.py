"""Specification of scale_by_newton_root / newton_root."""

import math

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.optimizers import NewtonRootState, newton_root, scale_by_newton_root


def run(opt, loss_fn, params, steps):
    """Runs `steps` optimizer steps in one lax.scan; returns (params after each step, final state)."""

    def body(carry, _):
        p, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = opt.update(grads, state, p, value=loss)
        p = optax.apply_updates(p, updates)
        return (p, state), p

    (_, state), trajectory = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return trajectory, state


def one_update(opt, grads, value, params=None):
    state = opt.init(grads if params is None else params)
    return opt.update(grads, state, params, value=value)


SHAPES = [(), (3,), (2, 2)]


@st.composite
def pytrees(draw):
    n_leaves = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    magnitude = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    return {
        f"leaf{i}": jnp.asarray(magnitude * rng.normal(size=draw(st.sampled_from(SHAPES))), jnp.float32)
        for i in range(n_leaves)
    }


@settings(deadline=None, max_examples=20)
@given(
    grads=pytrees(),
    value=st.floats(-2.0, 5.0),
    f_min=st.sampled_from([0.0, 0.5]),
    eps=st.sampled_from([0.0, 1e-3, 1.0]),
    max_scale=st.sampled_from([math.inf, 0.05, 10.0]),
    variant=st.sampled_from(["sps", "sps+"]),
)
def test_global_step_matches_optax_polyak(grads, value, f_min, eps, max_scale, variant):
    ours, state = one_update(
        scale_by_newton_root("global", f_min=f_min, max_scale=max_scale, eps=eps, variant=variant), grads, value
    )
    polyak = optax.scale_by_polyak(f_min=f_min, max_learning_rate=max_scale, eps=eps, variant=variant)
    theirs, _ = one_update(polyak, grads, value)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-7)
    chex.assert_shape([state.step_scale, state.grad_sq_norms], (1,))
    np.testing.assert_allclose(state.grad_sq_norms[0], optax.tree.norm(grads, squared=True), rtol=1e-6)


def test_sps_plus_clips_a_negative_gap_to_zero_step():
    grads = {"w": jnp.array([1.0, 2.0])}
    sps, _ = one_update(scale_by_newton_root(f_min=1.0), grads, 0.5)
    plus, state = one_update(scale_by_newton_root(f_min=1.0, variant="sps+"), grads, 0.5)
    np.testing.assert_allclose(sps["w"], -0.1 * grads["w"])  # gap -0.5 over |g|^2 = 5
    chex.assert_trees_all_equal(plus, {"w": jnp.zeros(2)})
    assert state.skipped == 0


def test_per_leaf_on_one_leaf_tree_equals_global():
    grads = {"only": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    for share in ("equal", "full"):
        leaf, leaf_state = one_update(scale_by_newton_root("per_leaf", share=share), grads, 2.0)
        glob, glob_state = one_update(scale_by_newton_root("global"), grads, 2.0)
        chex.assert_trees_all_close(leaf, glob)
        chex.assert_trees_all_close(leaf_state, glob_state)


def test_per_layer_equinox_mlp_one_step_per_linear():
    # Shapes via eval_shape and NumPy values: an eager equinox init compiles many small ops.
    rng = np.random.default_rng(1)
    full_model = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s,
        eqx.filter_eval_shape(eqx.nn.MLP, 3, 2, 5, 2, key=jax.random.key(1)),
    )
    model = eqx.filter(full_model, eqx.is_array)
    x = jnp.asarray(rng.normal(size=3), jnp.float32)
    loss_fn = lambda p: jnp.sum(eqx.combine(p, full_model)(x) ** 2) + 0.1
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(model)
    for share, gap in (("equal", loss / 3), ("full", loss)):
        updates, state = jax.jit(one_update, static_argnums=0)(scale_by_newton_root("per_layer", share=share), grads, loss)
        for k, (layer, update) in enumerate(zip(grads.layers, updates.layers, strict=True)):
            sq = float(jnp.sum(layer.weight**2) + jnp.sum(layer.bias**2))
            np.testing.assert_allclose(state.grad_sq_norms[k], sq, rtol=1e-5)
            np.testing.assert_allclose(state.step_scale[k], gap / sq, rtol=1e-5)
            chex.assert_trees_all_close(update, jax.tree.map(lambda g: gap / sq * g, layer), rtol=1e-5)


def test_per_layer_nested_dict_and_layer_labels():
    grads = {
        "dense1": {"w": jnp.array([[3.0, 0.0]]), "b": jnp.array([4.0])},
        "dense2": {"w": jnp.array([[1.0]]), "b": jnp.array([0.0])},
    }
    _, by_path = one_update(scale_by_newton_root("per_layer", share="full"), grads, 5.0)
    np.testing.assert_allclose(by_path.grad_sq_norms, [25.0, 1.0])
    np.testing.assert_allclose(by_path.step_scale, [5.0 / 25.0, 5.0])
    # Labels that regroup the weights together and the biases together.
    labels = {"dense1": {"w": "w", "b": "b"}, "dense2": {"w": "w", "b": "b"}}
    for layer_labels in (labels, lambda params: jax.tree.map(lambda _, lab: lab, params, labels)):
        _, state = one_update(scale_by_newton_root("per_layer", share="full", layer_labels=layer_labels), grads, 5.0)
        # Flattening order meets dense1.b first: group 0 = biases (16), group 1 = weights (10).
        np.testing.assert_allclose(state.grad_sq_norms, [16.0, 10.0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scalar_quadratic_halves_the_error_each_step(dtype):
    with jax.enable_x64(dtype == "float64"):
        x0 = jnp.asarray(10.0, dtype)
        trajectory, state = run(newton_root(1.0), lambda x: (x - 3.0) ** 2, x0, 30)
        assert trajectory.dtype == jnp.dtype(dtype)
        want = 3.0 + 7.0 / 2.0 ** np.arange(1, 31)
        if dtype == "float64":
            np.testing.assert_array_equal(trajectory, want)  # every operation is exact here
        else:
            np.testing.assert_allclose(trajectory, want, rtol=0, atol=4e-7)
        assert np.all(np.diff(np.asarray(trajectory)) <= 0)  # monotone, no zig-zag


def asymmetric(p):
    return (p["x"] - 1.0) ** 2 + 100.0 * (p["y"] - 2.0) ** 2


def test_global_step_starves_the_flat_coordinate():
    p0 = {"x": jnp.array(10.0), "y": jnp.array(10.0)}
    trajectory, _ = run(newton_root(1.0), asymmetric, p0, 3)
    ex = np.concatenate([[9.0], np.asarray(trajectory["x"]) - 1.0])
    ey = np.concatenate([[8.0], np.asarray(trajectory["y"]) - 2.0])
    # Exactly: x contracts by 1 - 2 L / |g|^2 with the shared step L / |g|^2 ...
    shared = (ex**2 + 100 * ey**2) / (4 * ex**2 + 4e4 * ey**2)
    np.testing.assert_allclose(ex[1:] / ex[:-1], 1.0 - 2 * shared[:-1], rtol=1e-5)
    # ... which, while 100(y-2)^2 dominates the loss, is ~1/(4c): x contracts by ~1 - 1/(2c).
    np.testing.assert_allclose(ex[1:3] / ex[:2], 1.0 - 1.0 / 200.0, atol=4e-4)
    # ... and y roughly halves (it settles first).
    np.testing.assert_allclose(ey[1:3] / ey[:2], 0.5, atol=0.04)


@pytest.mark.parametrize("share", ["full", "equal"])
def test_per_leaf_asymmetric_step_closed_form(share):
    # Each leaf gets Δ / |g_k|^2 with Δ = L (full) or L / 2 (equal). On this separable quadratic:
    # e_x' = e_x - Δ / (2 e_x),  e_y' = e_y - Δ / (200 e_y). With the whole loss as gap ("full"),
    # only a leaf whose own term is the whole loss contracts by exactly 1/2.
    ex, ey = 9.0, 8.0
    loss = ex**2 + 100 * ey**2
    gap = loss if share == "full" else loss / 2
    trajectory, state = run(newton_root(1.0, "per_leaf", share=share), asymmetric, {"x": 10.0, "y": 10.0}, 1)
    np.testing.assert_allclose(trajectory["x"][0] - 1.0, ex - gap / (2 * ex), rtol=1e-5)
    np.testing.assert_allclose(trajectory["y"][0] - 2.0, ey - gap / (200 * ey), rtol=1e-5)
    np.testing.assert_allclose(state[0].step_scale, [gap / (4 * ex**2), gap / (4e4 * ey**2)], rtol=1e-5)
    # Once y sits at its target, x alone carries the loss and full sharing halves it.
    if share == "full":
        trajectory, _ = run(newton_root(1.0, "per_leaf", share=share), asymmetric, {"x": 10.0, "y": 2.0}, 1)
        np.testing.assert_allclose(trajectory["x"][0] - 1.0, 4.5, rtol=1e-6)


def test_share_equal_is_half_of_full_with_two_groups():
    grads = {"a": {"w": jnp.array([1.0, 2.0])}, "b": {"w": jnp.array([0.5])}}
    full, full_state = one_update(scale_by_newton_root("per_layer", share="full"), grads, 3.0)
    equal, equal_state = one_update(scale_by_newton_root("per_layer", share="equal"), grads, 3.0)
    np.testing.assert_allclose(equal_state.step_scale, full_state.step_scale / 2, rtol=1e-6)
    chex.assert_trees_all_close(equal, jax.tree.map(lambda u: u / 2, full))
    # "equal": the linearised drop sum_k s_k |g_k|^2 of the whole update is the gap.
    np.testing.assert_allclose(optax.tree.vdot(grads, equal), 3.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("value", "grads"),
    [
        (jnp.nan, {"w": jnp.array([1.0, 2.0])}),
        (jnp.inf, {"w": jnp.array([1.0, 2.0])}),
        (1.0, {"w": jnp.array([jnp.nan, 2.0])}),
        (1.0, {"w": jnp.array([jnp.inf, 2.0])}),
    ],
)
@pytest.mark.parametrize("scaling", ["global", "per_leaf"])
def test_non_finite_loss_or_gradient_gives_zero_update_and_counts_skip(value, grads, scaling):
    opt = jax.jit(newton_root(1.0, scaling).update)
    tx = newton_root(1.0, scaling)
    state = tx.init(grads)
    updates, state = opt(grads, state, value=value)
    chex.assert_trees_all_equal(updates, {"w": jnp.zeros(2)})
    assert state[0].skipped == 1 and state[0].count == 0
    np.testing.assert_array_equal(state[0].step_scale, 0.0)
    updates, state = opt({"w": jnp.array([1.0, 2.0])}, state, value=5.0)
    chex.assert_trees_all_close(updates, {"w": -jnp.array([1.0, 2.0])})  # gap 5 / |g|^2 5
    assert state[0].skipped == 1 and state[0].count == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"scaling": "layer"}, r"scaling='layer'.*'global', 'per_leaf', 'per_layer'"),
        ({"variant": "polyak"}, r"variant='polyak'.*'sps', 'sps\+'"),
        ({"share": "half"}, r"share='half'.*'equal', 'full'"),
        ({"layer_labels": {"a": 0}}, r"layer_labels is only used with scaling='per_layer'"),
    ],
)
def test_bad_arguments_raise_value_error_listing_allowed_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        scale_by_newton_root(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        newton_root(0.1, **kwargs)


def test_missing_value_raises_type_error_naming_value():
    opt = newton_root(1.0)
    params = jnp.ones(2)
    with pytest.raises(TypeError, match=r"value="):
        opt.update(params, opt.init(params), params)


def test_clip_before_the_step_lengthens_it_clip_after_or_max_scale_bounds_it():
    grads = {"w": jnp.array([3.0, 4.0])}  # norm 5
    for c in (1.0, 0.1, 0.01):
        # The trap: the scale gap / ||clipped g||² = gap / c² times a direction of norm c: norm gap / c.
        before, _ = one_update(optax.chain(optax.clip_by_global_norm(c), newton_root(0.5)), grads, 2.0)
        np.testing.assert_allclose(optax.tree.norm(before), 0.5 * 2.0 / c, rtol=1e-5)
        chex.assert_trees_all_close(before, {"w": -0.5 * 2.0 / c * jnp.array([0.6, 0.8])}, rtol=1e-5)
        # Clipping the update after the step bounds it by c.
        after, _ = one_update(optax.chain(newton_root(0.5), optax.clip_by_global_norm(c)), grads, 2.0)
        np.testing.assert_allclose(optax.tree.norm(after), min(c, 0.5 * 2.0 / 5.0), rtol=1e-5)
    # On L = x² from x = 10 with c = 1: x <- x - x²/c diverges; the safe compositions converge.
    square = lambda x: x**2
    x0 = jnp.array(10.0)
    trap, _ = run(optax.chain(optax.clip_by_global_norm(1.0), newton_root(1.0)), square, x0, 6)
    assert not np.isfinite(square(trap[-1])) or float(square(trap[-1])) > 1e30
    for safe in (
        optax.chain(newton_root(1.0), optax.clip_by_global_norm(1.0)),
        newton_root(1.0, max_scale=0.1),
    ):
        trajectory, _ = run(safe, square, x0, 60)
        assert float(square(trajectory[-1])) < 1e-6
        assert np.all(np.abs(np.diff(np.asarray(trajectory))) <= 2.0 + 1e-6)  # no step longer than its bound


def test_inject_hyperparams_and_schedules():
    grads, value = {"w": jnp.array([1.0, 1.0])}, 4.0
    injected = optax.inject_hyperparams(newton_root)(learning_rate=0.5, f_min=1.0)
    state = injected.init(grads)
    updates, state = injected.update(grads, state, value=value)
    chex.assert_trees_all_close(updates, {"w": -0.5 * 1.5 * jnp.ones(2)})
    state.hyperparams["learning_rate"] = jnp.asarray(0.25)
    updates, _ = injected.update(grads, state, value=value)
    chex.assert_trees_all_close(updates, {"w": -0.25 * 1.5 * jnp.ones(2)})
    # A schedule as learning rate: step k uses schedule(k).
    opt = newton_root(optax.linear_schedule(1.0, 0.0, 4))
    trajectory, _ = run(opt, lambda x: (x - 3.0) ** 2, jnp.array(11.0), 2)
    np.testing.assert_allclose(trajectory, [3.0 + 8.0 * 0.5, 3.0 + 4.0 * (1 - 0.75 * 0.5)], rtol=1e-6)


def test_multi_steps_uses_the_mean_gradient_and_last_value():
    opt = optax.MultiSteps(newton_root(1.0, "per_leaf"), every_k_schedule=2)
    g1, g2 = {"a": jnp.array([1.0, 3.0]), "b": jnp.array(2.0)}, {"a": jnp.array([3.0, 1.0]), "b": jnp.array(0.0)}
    state = opt.init(g1)
    first, state = opt.update(g1, state, value=1.0)
    chex.assert_trees_all_equal(first, jax.tree.map(jnp.zeros_like, g1))
    second, _ = opt.update(g2, state, value=2.0)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    want, _ = one_update(newton_root(1.0, "per_leaf"), mean, 2.0)
    chex.assert_trees_all_close(second, want)


def test_jit_and_vmap_over_learning_rate_and_f_min_equal_per_element_runs():
    loss_fn = lambda p: jnp.sum((p["w"] - jnp.array([1.0, -2.0])) ** 2) + (p["b"] - 0.5) ** 2 + 1.0
    p0 = {"w": jnp.array([4.0, 3.0]), "b": jnp.array(-1.0)}

    def final(lr, f_min):
        trajectory, state = run(newton_root(lr, "per_leaf", f_min=f_min, max_scale=5.0), loss_fn, p0, 6)
        return jax.tree.map(lambda t: t[-1], trajectory), state[0].step_scale

    lrs, f_mins = jnp.array([0.5, 1.0, 0.8]), jnp.array([0.0, 1.0, 0.5])
    batched, batched_steps = jax.jit(jax.vmap(final))(lrs, f_mins)
    single = jax.jit(final)
    for i in range(3):
        params, steps = single(lrs[i], f_mins[i])
        chex.assert_trees_all_close(jax.tree.map(lambda t: t[i], batched), params, rtol=1e-5)
        np.testing.assert_allclose(batched_steps[i], steps, rtol=1e-5)


def test_learning_rate_is_linear_unlike_polyak_sgd_scaling():
    grads, params, value = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.zeros(2)}, 3.0
    one, _ = one_update(newton_root(1.0), grads, value, params)
    two, _ = one_update(newton_root(2.0), grads, value, params)
    chex.assert_trees_all_close(two, jax.tree.map(lambda u: 2 * u, one))
    # optax 0.2.8 polyak_sgd scales the gradient before measuring its norm: step ∝ 1/scaling.
    polyak_one, _ = one_update(optax.polyak_sgd(max_learning_rate=math.inf, scaling=1.0), grads, value, params)
    polyak_two, _ = one_update(optax.polyak_sgd(max_learning_rate=math.inf, scaling=2.0), grads, value, params)
    chex.assert_trees_all_close(polyak_one, one)
    chex.assert_trees_all_close(polyak_two, jax.tree.map(lambda u: u / 2, one))


def test_state_and_update_dtypes_follow_params():
    params = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
    opt = newton_root(0.1, "per_leaf")
    state = opt.init(params)
    assert isinstance(state[0], NewtonRootState)
    chex.assert_shape([state[0].step_scale, state[0].grad_sq_norms], (2,))
    updates, new_state = opt.update(params, state, params, value=jnp.asarray(1.0, jnp.bfloat16))
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
