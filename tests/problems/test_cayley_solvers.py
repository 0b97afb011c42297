"""The LAPACK-backed Cayley solves run one matrix at a time under vmap and keep the exact gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.problems import cayley_solvers as solvers


def _loss(solve):
    def loss(p):
        us = jax.vmap(lambda q: solve(solvers.generator(q, True)))(p)
        return jnp.sum(jnp.abs(us[:, 0, :] * jnp.arange(1.0, 6.0)) ** 2)
    return loss


@pytest.mark.parametrize("solver", ["exact", "gmres"])
def test_implicit_gradient_equals_the_gradient_of_the_lapack_solve(solver):
    key_r, key_i = jax.random.split(jax.random.key(0))
    p = 0.3 * (jax.random.normal(key_r, (3, 5, 5)) + 1j * jax.random.normal(key_i, (3, 5, 5)))

    def reference(g):
        eye = jnp.eye(5, dtype=g.dtype)
        return jnp.linalg.solve(eye - 0.5 * g, eye + 0.5 * g)

    ours = jax.jit(jax.grad(_loss(lambda g: solvers.cayley(g, solver=solver, iters=25, tol=1e-7)[0])))(p)
    np.testing.assert_allclose(ours, jax.grad(_loss(reference))(p), atol=1e-5)


def test_spectral_radius_of_a_batch_is_each_matrix_s():
    us = jnp.stack([jnp.eye(3) * s for s in (0.5, 2.0)])
    np.testing.assert_allclose(jax.vmap(solvers.spectral_radius)(us), [0.5, 2.0], rtol=1e-6)
