"""The Cayley propagator of lab note 003's SSM and the linear solves behind it, with their residuals.

``U = (I - G/2)^{-1} (I + G/2)`` is unitary exactly when ``G`` is anti-Hermitian *and* the solve is exact; this module
measures how far each solver is from that.

The solve ``(I - G/2) U = I + G/2`` is one linear system on the ``n × n`` unknown ``U`` (the operator ``X ↦ A X``,
i.e. ``I ⊗ A``, with the spectrum of ``A``), solved by:

- ``"exact"``: ``jnp.linalg.solve`` (LU).
- ``"cg"``: conjugate gradient on the system *as written*. CG assumes a Hermitian positive-definite matrix;
  ``A = I - iH/2`` is normal but not Hermitian (eigenvalues ``1 - iλ/2``), so what CG does here is measured, not
  assumed. Written here (a fixed-length ``lax.scan``) because ``jax.scipy.sparse.linalg.cg`` reports no iteration
  count, and the note's claim is "CG converges in < 10 iterations".
- ``"cg_normal"``: the same CG on the equivalent Hermitian positive-definite normal equations ``A^H A U = A^H B``
  (for Hermitian ``H``, ``A^H A = I + H^2/4``).
- ``"bicgstab"`` / ``"gmres"``: ``jax.scipy.sparse.linalg`` (BiCGStab, and GMRES with a Krylov space of ``iters``
  vectors and no restart), both for general non-Hermitian systems. Chosen over ``lineax`` because they already ship
  with JAX, take a traced ``tol``, differentiate implicitly (``custom_linear_solve``) and vmap over grid cells;
  ``lineax`` would add a dependency for the same Krylov methods. They report no iteration count (logged as NaN).

The LAPACK-backed pieces (the exact LU solve, GMRES's small Cholesky, the eigenvalues of the spectral radius) run
one matrix at a time under ``vmap`` and the two solves differentiate implicitly (``_one_at_a_time``): batched
LAPACK calls side by side in one program can deadlock jax 0.10 on a 2-core CPU.

Every iterative solve runs at most ``iters`` iterations (a static int) and stops at
``||A X - B||_F <= tol ||B||_F`` (``tol`` may be traced). Per layer the model logs the relative residual, the
iterations (CG only), ``||U^H U - I||_F``, the spectral radius of ``U`` and the largest state norm on a probe batch.

Example:
  >>> u, info = cayley(generator(jnp.ones((3, 3), jnp.complex64), True), solver="cg_normal", iters=9, tol=1e-6)
  >>> bool(info.residual < 1e-4), float(unitary_deviation(u)) < 1e-3
  (True, True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

SOLVERS = ("exact", "cg", "cg_normal", "bicgstab", "gmres")
TINY = 1e-30  # CG denominators at or below this stop the iteration instead of dividing by ~0


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


class SolveInfo(NamedTuple):
    """What a Cayley solve reports."""

    residual: jax.Array  # () relative residual ||A U - B||_F / ||B||_F
    iterations: jax.Array  # () iterations used (float; NaN where the solver does not report them)


def generator(p: jax.Array, hermitian: bool) -> jax.Array:
    """``G`` of the Cayley transform: ``i(P + P^H)/2`` / ``iP`` for complex ``P``, ``(P - P^T)/2`` / ``P`` for real.

    Example: ``generator(jnp.eye(2, dtype=jnp.complex64), True)`` is ``i I``.
    """
    if jnp.iscomplexobj(p):
        h = 0.5 * (p + jnp.conj(p).T) if hermitian else p
        return 1j * h
    return 0.5 * (p - p.T) if hermitian else p


def _inner(a, b):
    return jnp.vdot(a, b)  # conjugates a: the complex Euclidean inner product


def conjugate_gradient(matvec, b: jax.Array, *, iters: int, tol: Any, limit: Any = None) -> tuple[jax.Array, jax.Array]:
    """Plain CG from ``x = 0`` for ``iters`` steps at most, frozen once ``||r|| <= tol ||b||``.

    ``limit`` (may be traced, <= ``iters``) stops it earlier: one compiled scan of ``iters`` steps then serves
    every iteration budget of a sweep as a vmapped axis. Returns ``(x, iterations used)``. Valid (monotone, exact in ``n`` steps) for Hermitian positive-definite
    operators; on others it runs the same recurrences and its result is whatever they give.

    Example: ``x, k = conjugate_gradient(lambda v: 2.0 * v, jnp.ones(3), iters=5, tol=1e-6)`` gives ``x = 0.5``.
    """
    b_norm2 = jnp.real(_inner(b, b))
    target = jnp.square(tol) * b_norm2

    limit = iters if limit is None else limit

    def step(carry, k):
        x, r, p, rs, used = carry
        active = (rs > target) & (k < limit)
        ap = matvec(p)
        pap = _inner(p, ap)
        ok = active & (jnp.abs(pap) > TINY)
        alpha = jnp.where(ok, rs / jnp.where(ok, pap, 1.0), 0.0)
        x = x + alpha * p
        r_new = r - alpha * ap
        rs_new = jnp.real(_inner(r_new, r_new))
        beta = jnp.where(ok & (rs > TINY), rs_new / jnp.where(rs > TINY, rs, 1.0), 0.0)
        p = jnp.where(ok, r_new + beta * p, p)
        r = jnp.where(ok, r_new, r)
        rs = jnp.where(ok, rs_new, rs)
        return (x, r, p, rs, used + ok.astype(jnp.int32)), None

    x0 = jnp.zeros_like(b)
    (x, _, _, _, used), _ = jax.lax.scan(step, (x0, b, b, b_norm2, jnp.zeros((), jnp.int32)),
                                        jnp.arange(iters))
    return x, used


def _one_at_a_time(solve_one):
    """``solve_one(a, b, tol) -> x`` for one system, differentiated implicitly and looped (not batched) under vmap.

    Why: jax 0.10's CPU LAPACK kernels block a thread of the intra-op pool while their batch runs on the same pool,
    so several batched factorisations in one program (the forward and backward solves and the eigenvalues of a
    training step, under a grid's vmap) can leave every thread asleep on a 2-core machine (seen here: a hung
    ``--quick`` run, see also :mod:`optlab.correction.reconstruct`). Single calls run on the calling thread.
    ``sequential_vmap`` has no reverse mode, so the gradient is written out: for ``x = A^{-1} b``,
    ``b̄ = A^{-T} x̄`` and ``Ā = -b̄ x^T`` (JAX's VJP is the linear transpose, no conjugation), as
    ``lax.custom_linear_solve`` does for the Krylov solvers.
    """
    looped = jax.custom_batching.sequential_vmap(solve_one)

    @jax.custom_vjp
    def solve(a, b, tol):
        return looped(a, b, tol)

    def forward(a, b, tol):
        x = looped(a, b, tol)
        return x, (a, x, tol)

    def backward(saved, x_bar):
        a, x, tol = saved
        b_bar = looped(a.T, x_bar, tol)
        return -b_bar @ x.T, b_bar, jnp.zeros_like(tol)

    solve.defvjp(forward, backward)
    return solve


def _lu_one(a, b, tol):
    del tol  # exact
    return jnp.linalg.solve(a, b)


_lu_solve = _one_at_a_time(_lu_one)


def _gmres(iters: int):
    """GMRES with one cycle of ``iters`` Krylov vectors (``"batched"``: its small least squares is a Cholesky)."""
    def one(a, b, tol):
        x, _ = jax.scipy.sparse.linalg.gmres(lambda v: a @ v, b, tol=tol, atol=0.0,
                                             restart=min(iters, b.size), maxiter=1, solve_method="batched")
        return x

    return _one_at_a_time(one)


_eigvals = jax.custom_batching.sequential_vmap(jnp.linalg.eigvals)  # LAPACK too: one matrix at a time


def cayley(g: jax.Array, *, solver: str = "exact", iters: int = 20, tol: Any = 1e-6,
           limit: Any = None) -> tuple[jax.Array, SolveInfo]:
    """``U = (I - G/2)^{-1} (I + G/2)`` by ``solver`` (see the module docstring), with the solve's residual.

    Args:
      g: (n, n) generator (:func:`generator`).
      solver: one of ``SOLVERS``.
      iters: most iterations of an iterative solver (static int >= 1).
      tol: relative residual at which an iterative solver stops (may be traced).
      limit: most iterations actually run by CG / CG-normal / BiCGStab (may be traced, <= ``iters``; None for
        ``iters``); GMRES's Krylov dimension is a shape, so it always runs ``iters``.

    Returns:
      ``(U, SolveInfo)``.

    Example:
      >>> u, info = cayley(generator(jnp.ones((3, 3), jnp.complex64), True))
      >>> float(unitary_deviation(u)) < 1e-5
      True
    """
    _check_choice("solver", solver, SOLVERS)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    n = g.shape[-1]
    eye = jnp.eye(n, dtype=g.dtype)
    a, rhs = eye - 0.5 * g, eye + 0.5 * g
    nan = jnp.asarray(jnp.nan, jnp.float32)
    if solver == "exact":
        u, used = _lu_solve(a, rhs, jnp.asarray(0.0, jnp.float32)), nan
    elif solver == "cg":
        u, used = conjugate_gradient(lambda x: a @ x, rhs, iters=iters, tol=tol, limit=limit)
    elif solver == "cg_normal":
        ah = jnp.conj(a).T
        normal = ah @ a
        u, used = conjugate_gradient(lambda x: normal @ x, ah @ rhs, iters=iters, tol=tol, limit=limit)
    elif solver == "bicgstab":
        u, _ = jax.scipy.sparse.linalg.bicgstab(lambda x: a @ x, rhs, tol=tol, atol=0.0,
                                              maxiter=iters if limit is None else limit)
        used = nan
    else:  # one GMRES cycle of `iters` Krylov vectors: `iters` iterations in all, as for the others
        u, used = _gmres(iters)(a, rhs, jnp.asarray(tol, jnp.float32)), nan
    residual = jnp.linalg.norm(a @ u - rhs) / jnp.linalg.norm(rhs)
    return u, SolveInfo(residual.astype(jnp.float32), jnp.asarray(used, jnp.float32))


def cayley_switch(g: jax.Array, index: Any, solvers: tuple[str, ...], *, iters: int = 20,
                  tol: Any = 1e-6) -> tuple[jax.Array, SolveInfo]:
    """:func:`cayley` by ``solvers[index]`` with ``index`` traced: one compiled program for a grid's solver axis.

    Under ``vmap`` with a batched ``index``, ``lax.switch`` evaluates every branch and selects, so a program costs
    the sum of its solvers (cheap at these sizes) but compiles once instead of once per solver.

    Example: ``cayley_switch(g, jnp.asarray(1), ("exact", "cg"))`` equals ``cayley(g, solver="cg")``.
    """
    for s in solvers:
        _check_choice("solvers", s, SOLVERS)
    branches = [lambda g, s=s: cayley(g, solver=s, iters=iters, tol=tol) for s in solvers]
    return jax.lax.switch(jnp.asarray(index, jnp.int32), branches, g)


def unitary_deviation(u: jax.Array) -> jax.Array:
    """``||U^H U - I||_F``: 0 for a unitary (or real orthogonal) ``U``. Example: ``unitary_deviation(jnp.eye(3))`` is 0."""
    return jnp.linalg.norm(jnp.conj(u).T @ u - jnp.eye(u.shape[-1], dtype=u.dtype))


def spectral_radius(u: jax.Array) -> jax.Array:
    """Largest ``|eigenvalue|`` of ``U`` (not differentiated: a diagnostic). Example: 1 for a unitary ``U``."""
    return jnp.max(jnp.abs(_eigvals(jax.lax.stop_gradient(u))))


__all__ = ["SOLVERS", "SolveInfo", "cayley", "cayley_switch", "conjugate_gradient", "generator", "spectral_radius",
           "unitary_deviation"]
