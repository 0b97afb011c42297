"""The Cayley SSM of lab note 003: unitarity, the solvers, the tasks, the schedule and complex Adam."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.engine import loop
from optlab.problems import cayley_ssm as cs

TINY = cs.SSMSpec(layers=2, width=8, state=4, task="copy", delay=4, copy_len=2, n_examples=16)


def random_p(seed, n=5, scale=1.0):
    return cs._normal(jax.random.key(seed), (n, n), scale / math.sqrt(n), True)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 3.0))
def test_cayley_of_hermitian_is_unitary(seed, scale):
    u, info = cs.cayley(cs.generator(random_p(seed, scale=scale), hermitian=True))
    assert float(cs.unitary_deviation(u)) < 1e-4
    assert abs(float(cs.spectral_radius(u)) - 1.0) < 1e-4
    assert float(info.residual) < 1e-5


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_cayley_of_non_hermitian_is_not_unitary_and_penalised(seed):
    params = cs.init_params(jax.random.key(seed), TINY._replace(hermitian=False))
    _, aux = cs.apply(params, jnp.zeros((1, 3), jnp.int32), TINY._replace(hermitian=False))
    assert np.all(np.asarray(aux["unitary_dev"]) > 1e-3)
    assert np.all(np.asarray(aux["penalty"]) > 0)


def test_real_twin_cayley_of_skew_is_orthogonal():
    p = jax.random.normal(jax.random.key(0), (6, 6))
    u, _ = cs.cayley(cs.generator(p, hermitian=True))
    assert u.dtype == jnp.float32 and float(cs.unitary_deviation(u)) < 1e-5


@pytest.mark.parametrize("solver", ["cg_normal", "bicgstab", "gmres"])
@pytest.mark.parametrize("hermitian", [True, False])
def test_iterative_solvers_converge_to_the_exact_solve(solver, hermitian):
    # cg_normal: CG on the HPD normal equations; BiCGStab / GMRES: any nonsingular system; n^2 = 25 unknowns
    g = cs.generator(random_p(1), hermitian)
    exact, _ = cs.cayley(g)
    u, info = cs.cayley(g, solver=solver, iters=25, tol=1e-7)
    np.testing.assert_allclose(u, exact, atol=5e-5)
    assert float(info.residual) < 1e-5


def test_cg_converges_on_a_hermitian_positive_definite_system_and_counts_iterations():
    m = jax.random.normal(jax.random.key(2), (6, 6))
    a = m @ m.T + 6.0 * jnp.eye(6)
    b = jnp.arange(6.0)
    x, used = cs.conjugate_gradient(lambda v: a @ v, b, iters=30, tol=1e-6)
    np.testing.assert_allclose(x, jnp.linalg.solve(a, b), rtol=1e-4, atol=1e-5)
    assert 1 <= int(used) <= 6  # exact in n steps, up to rounding


def test_cg_on_the_system_as_written_reports_its_residual():
    # A = I - iH/2 is not Hermitian: whatever CG returns, the logged residual is the true one
    g = cs.generator(random_p(3, scale=2.0), True)
    u, info = cs.cayley(g, solver="cg", iters=5, tol=1e-7)
    a, rhs = jnp.eye(5) - 0.5 * g, jnp.eye(5) + 0.5 * g
    np.testing.assert_allclose(info.residual, jnp.linalg.norm(a @ u - rhs) / jnp.linalg.norm(rhs), rtol=1e-4)
    assert float(info.iterations) == 5.0  # not converged within 5 iterations: all were used


def test_associative_scan_matches_scan():
    params = cs.init_params(jax.random.key(0), TINY)
    tokens = cs.make_data(jax.random.key(1), TINY)["tokens"][:3]
    a, _ = cs.apply(params, tokens, TINY)
    b, _ = cs.apply(params, tokens, TINY._replace(recurrence="associative"))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_copy_task_layout_and_memoryless_baseline():
    data = cs.copy_data(jax.random.key(0), 4, delay=5, copy_len=3)
    chex.assert_shape([data["tokens"], data["targets"]], (4, 11))
    np.testing.assert_array_equal(data["targets"][:, -3:], data["tokens"][:, :3])
    assert np.all(np.asarray(data["tokens"][:, 7]) == cs.COPY_ALPHABET + 1)  # the delimiter
    assert cs.memoryless_ce(5, 3) == pytest.approx(3 * math.log(8) / 11)


def test_char_lm_text_is_the_pydoc_help_and_windows_shift_by_one():
    assert "Python" in cs.char_lm_text()
    data = cs.char_lm_data(jax.random.key(0), 3, 10)
    np.testing.assert_array_equal(data["tokens"][:, 1:], data["targets"][:, :-1])


def test_lr_multiplier_warmup_longer_than_run_never_reaches_one():
    steps = jnp.arange(100)
    cosine = jax.vmap(lambda s: cs.lr_multiplier(s, kind=1, warmup=200, horizon=100))(steps)
    assert float(cosine.max()) == pytest.approx(0.5)  # step 99 of a 200-step ramp
    wsd = jax.vmap(lambda s: cs.lr_multiplier(s, kind=0, warmup=10, horizon=100))(steps)
    assert float(wsd[50]) == 1.0 and float(wsd[95]) == pytest.approx(0.5)
    const = jax.vmap(lambda s: cs.lr_multiplier(s, kind=2, warmup=0, horizon=100))(steps)
    assert np.all(np.asarray(const) == 1.0)


def test_complex_gradient_convention_and_an_adam_step_decreases_the_loss():
    problem = cs.make_problem(TINY, jax.random.key(0), unitary_lambda=0.01)
    params = problem.init(jax.random.key(1))
    p = params["layers"]["P"]
    assert jnp.iscomplexobj(p)
    # jax.grad of a real loss w.r.t. complex z is d/dRe - i d/dIm: check on one entry by finite differences
    value = lambda z: problem.value({**params, "layers": {**params["layers"], "P": z}})
    g = jax.grad(value)(p)
    e = jnp.zeros_like(p).at[0, 0, 1].set(1.0)
    h = 1e-2
    d_re = (value(p + h * e) - value(p - h * e)) / (2 * h)
    d_im = (value(p + 1j * h * e) - value(p - 1j * h * e)) / (2 * h)
    np.testing.assert_allclose(g[0, 0, 1], d_re - 1j * d_im, rtol=5e-2, atol=1e-3)
    # fit conjugates it, so Adam descends; params stay complex
    res = loop.fit(problem.loss, params, cs.optimizer(1e-2, 0.01), steps=5, data=problem.data)
    assert jnp.iscomplexobj(res.params["layers"]["P"])
    assert float(problem.value(res.params)) < float(problem.value(params))


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="solver must be one of"):
        cs.make_problem(TINY._replace(solver="lu"), jax.random.key(0))
    with pytest.raises(ValueError, match="iters must be"):
        cs.cayley(jnp.eye(2), iters=0)


def test_real_twin_has_about_the_same_parameter_count():
    spec = cs.SSMSpec(layers=2, width=8, state=8)
    twin = spec._replace(complex_valued=False, state=cs.twin_state(spec))
    a = cs.real_parameter_count(cs.init_params(jax.random.key(0), spec)["layers"])
    b = cs.real_parameter_count(cs.init_params(jax.random.key(0), twin)["layers"])
    assert abs(a - b) / a < 0.1


@pytest.mark.parametrize("solver", ["cg", "cg_normal", "bicgstab"])
def test_traced_iteration_limit_equals_a_static_budget(solver):
    # one scan of 8 steps with a traced limit of 3 is the same solve as a static budget of 3
    g = cs.generator(random_p(3), True)
    static, _ = cs.cayley(g, solver=solver, iters=3, tol=1e-9)
    traced, _ = jax.jit(lambda lim: cs.cayley(g, solver=solver, iters=8, tol=1e-9, limit=lim))(jnp.asarray(3))
    np.testing.assert_allclose(traced, static, atol=1e-6)


def test_cayley_switch_picks_the_indexed_solver_under_vmap():
    g = cs.generator(random_p(4), True)
    choices = ("exact", "cg")
    us, info = jax.vmap(lambda i: cs.cayley_switch(g, i, choices, iters=4))(jnp.arange(2))
    for i, solver in enumerate(choices):
        u, ref = cs.cayley(g, solver=solver, iters=4)
        np.testing.assert_allclose(us[i], u, atol=1e-6)
        np.testing.assert_allclose(info.residual[i], ref.residual, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="solvers"):
        cs.cayley_switch(g, 0, ("exact", "lu"))
