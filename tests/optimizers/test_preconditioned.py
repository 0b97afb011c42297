"""Specification of the preconditioned Newton-root optimizers (Adam second moment, Hutchinson diagonal)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab.optimizers import (
    NewtonRootAdamState,
    NewtonRootHutchinsonState,
    hutchinson_diagonal,
    newton_root_adam,
    newton_root_hutchinson,
    scale_by_newton_root_adam,
    scale_by_newton_root_hutchinson,
)

CURVATURE = {"a": jnp.array([1.0, 10.0, 100.0]), "b": jnp.array(0.5)}
TARGET = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(3.0)}
P0 = {"a": jnp.array([4.0, 1.0, -1.0]), "b": jnp.array(0.0)}


def quadratic(p):
    """Diagonal quadratic sum_i c_i (p_i - t_i)^2: diag H = 2c."""
    terms = jax.tree.map(lambda c, x, t: jnp.sum(c * (x - t) ** 2), CURVATURE, p, TARGET)
    return optax.tree.sum(terms)


def run(opt, loss_fn, params, steps):
    """`steps` optimizer steps in one lax.scan; returns (loss before each step, params after each, final state)."""

    def body(carry, _):
        p, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = opt.update(grads, state, p, value=loss, value_fn=loss_fn)
        p = optax.apply_updates(p, updates)
        return (p, state), (loss, p)

    (_, state), (losses, trajectory) = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return losses, trajectory, state


def test_adam_direction_reduces_the_loss_on_a_quadratic():
    losses, _, state = run(newton_root_adam(0.5), quadratic, P0, 60)
    assert losses[-1] < 1e-3 * losses[0]
    assert isinstance(state[0], NewtonRootAdamState) and state[0].count == 60 and state[0].skipped == 0


@pytest.mark.parametrize("scaler", [scale_by_newton_root_adam(), scale_by_newton_root_hutchinson()])
def test_uncapped_step_is_the_root_of_the_linearised_loss(scaler):
    state = scaler.init(P0)
    params = P0
    update = jax.jit(lambda g, s, p, v: scaler.update(g, s, p, value=v, value_fn=quadratic))
    for _ in range(3):  # after a few steps too (Adam's moment has history)
        loss, grads = jax.value_and_grad(quadratic)(params)
        updates, state = update(grads, state, params, loss)
        # g^T (t d) = L - f_min
        np.testing.assert_allclose(optax.tree.vdot(grads, updates), loss, rtol=1e-5)
        params = optax.apply_updates(params, jax.tree.map(jnp.negative, updates))


def test_adam_first_step_matches_a_numpy_reference_and_the_cap():
    loss, grads = jax.value_and_grad(quadratic)(P0)
    g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)]).astype(np.float64)
    d = g / (np.abs(g) + 1e-8)  # first step: v_hat = g^2
    t = float(loss) / (g @ d)
    updates, state = scale_by_newton_root_adam().update(grads, scale_by_newton_root_adam().init(P0), value=loss)
    got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)])
    np.testing.assert_allclose(got, t * d, rtol=1e-5)
    np.testing.assert_allclose(state.step_scale, [t], rtol=1e-5)
    capped, state = scale_by_newton_root_adam(max_scale=0.1).update(
        grads, scale_by_newton_root_adam().init(P0), value=loss
    )
    np.testing.assert_allclose(state.step_scale, [0.1])
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree.leaves(capped)]), 0.1 * d, rtol=1e-5)


def test_hutchinson_diagonal_is_exact_for_a_diagonal_hessian():
    estimate = hutchinson_diagonal(quadratic, P0, jax.random.key(7), 2)
    chex.assert_trees_all_close(estimate, jax.tree.map(lambda c: 2 * c, CURVATURE), rtol=1e-6)


def test_hutchinson_diagonal_is_unbiased_for_a_coupled_hessian():
    hessian = jnp.array([[2.0, 1.0, -0.5], [1.0, 3.0, 0.2], [-0.5, 0.2, 1.0]])
    estimate = hutchinson_diagonal(lambda p: 0.5 * p @ hessian @ p, jnp.ones(3), jax.random.key(0), 4096)
    np.testing.assert_allclose(estimate, jnp.diag(hessian), atol=0.06)


def test_hutchinson_with_exact_diagonal_halves_every_coordinate():
    # d = g / diag H = p - target, g^T d = 2 L, so t = 1/2: every coordinate's error halves (no starvation).
    losses, trajectory, state = run(newton_root_hutchinson(1.0, damping=0.0), quadratic, P0, 10)
    want = jax.tree.map(lambda p, t: t + (p - t) / 2, P0, TARGET)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], trajectory), want, rtol=1e-6)
    np.testing.assert_allclose(state[0].step_scale, [0.5], rtol=1e-6)
    np.testing.assert_allclose(losses[1:] / losses[:-1], 0.25, rtol=1e-4)


def test_hutchinson_ema_of_the_estimate():
    quartic = lambda p: jnp.sum(p**4)  # diag H = 12 p^2, exact with Rademacher probes
    tx = scale_by_newton_root_hutchinson(ema=0.5, damping=0.0)
    p1, p2 = jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0])
    state = tx.init(p1)
    _, state = tx.update(jax.grad(quartic)(p1), state, p1, value=quartic(p1), value_fn=quartic)
    np.testing.assert_allclose(state.hess_diag, 12 * p1**2, rtol=1e-6)  # first step: no EMA bias
    _, state = tx.update(jax.grad(quartic)(p2), state, p2, value=quartic(p2), value_fn=quartic)
    np.testing.assert_allclose(state.hess_diag, 0.5 * 12 * p1**2 + 0.5 * 12 * p2**2, rtol=1e-6)


def test_hutchinson_key_advances_and_seed_is_reproducible():
    tx = scale_by_newton_root_hutchinson(seed=3)
    p = jnp.array([1.0, 2.0])
    state = tx.init(p)
    assert isinstance(state, NewtonRootHutchinsonState)
    _, new_state = tx.update(jax.grad(jnp.sum)(p), state, p, value=1.0, value_fn=lambda q: jnp.sum(q**3))
    assert not np.array_equal(state.key, new_state.key)
    chex.assert_trees_all_equal(state, scale_by_newton_root_hutchinson(seed=3).init(p))


@pytest.mark.parametrize("make", [newton_root_adam, newton_root_hutchinson])
def test_jit_and_vmap_over_learning_rate_and_f_min_equal_per_element(make):
    def final(lr, f_min):
        losses, trajectory, _ = run(make(lr, f_min=f_min), quadratic, P0, 4)
        return losses, jax.tree.map(lambda x: x[-1], trajectory)

    lrs, f_mins = jnp.array([0.3, 0.7]), jnp.array([0.0, -1.0])
    batched = jax.jit(jax.vmap(final))(lrs, f_mins)
    single = jax.jit(final)
    for i in range(2):
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), single(lrs[i], f_mins[i]), rtol=1e-5)


@pytest.mark.parametrize("make", [newton_root_adam, newton_root_hutchinson])
@pytest.mark.parametrize("bad", ["nan_value", "inf_value", "nan_grad"])
def test_non_finite_input_gives_zero_update_and_keeps_state(make, bad):
    opt = make(1.0)
    loss, grads = jax.value_and_grad(quadratic)(P0)
    state = opt.init(P0)
    if bad == "nan_value":
        loss = jnp.nan
    elif bad == "inf_value":
        loss = jnp.inf
    else:
        grads = {"a": grads["a"].at[1].set(jnp.nan), "b": grads["b"]}
    update = jax.jit(lambda g, s, p, v: opt.update(g, s, p, value=v, value_fn=quadratic))
    updates, new_state = update(grads, state, P0, loss)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, P0))
    assert new_state[0].skipped == 1 and new_state[0].count == 0
    moment = new_state[0].nu if make is newton_root_adam else new_state[0].hess_diag
    chex.assert_trees_all_equal(moment, jax.tree.map(jnp.zeros_like, P0))


def test_hutchinson_skips_a_non_finite_hessian_estimate():
    sqrt_loss = lambda p: jnp.sum(jnp.sqrt(p))  # d^2/dp^2 = -p^(-3/2)/4: inf at 0
    p = jnp.array([0.0, 1.0])
    tx = scale_by_newton_root_hutchinson()
    updates, state = tx.update(jnp.array([1.0, 1.0]), tx.init(p), p, value=1.0, value_fn=sqrt_loss)
    np.testing.assert_array_equal(updates, [0.0, 0.0])
    assert state.skipped == 1


def test_argument_errors():
    p = jnp.ones(2)
    with pytest.raises(ValueError, match=r"variant='x'.*'sps', 'sps\+'"):
        newton_root_adam(variant="x")
    with pytest.raises(ValueError, match="n_probes=0"):
        newton_root_hutchinson(n_probes=0)
    for opt in (newton_root_adam(), newton_root_hutchinson()):
        with pytest.raises(TypeError, match="value="):
            opt.update(p, opt.init(p), p, value_fn=jnp.sum)
    opt = newton_root_hutchinson()
    with pytest.raises(TypeError, match="value_fn="):
        opt.update(p, opt.init(p), p, value=1.0)


def test_learning_rate_is_linear_and_composes_with_optax_wrappers():
    loss, grads = jax.value_and_grad(quadratic)(P0)
    for make in (newton_root_adam, newton_root_hutchinson):
        one, _ = make(1.0).update(grads, make(1.0).init(P0), P0, value=loss, value_fn=quadratic)
        two, _ = make(2.0).update(grads, make(2.0).init(P0), P0, value=loss, value_fn=quadratic)
        chex.assert_trees_all_close(two, jax.tree.map(lambda u: 2 * u, one), rtol=1e-6)
        injected = optax.inject_hyperparams(make, static_args=("n_probes",) if make is newton_root_hutchinson else ())
        opt = injected(learning_rate=1.0)
        via_inject, _ = opt.update(grads, opt.init(P0), P0, value=loss, value_fn=quadratic)
        chex.assert_trees_all_close(via_inject, one, rtol=1e-6)
        opt = optax.MultiSteps(make(1.0), every_k_schedule=1)
        via_multi, _ = opt.update(grads, opt.init(P0), P0, value=loss, value_fn=quadratic)
        chex.assert_trees_all_close(via_multi, one, rtol=1e-6)
