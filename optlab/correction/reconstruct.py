"""Layer reconstruction with a fixed pruning mask, on the Gram matrix ``H = xᵀx``: the exact ceiling and two
methods in common use.

All three minimise (exactly or approximately) the layer-output error with the mask fixed:

.. math:: \\min_{w:\\ w_{ji} = 0 \\text{ where pruned}} \\| x w - x w_d \\|_F^2
    = \\sum_i (w_i - w_{d,i})^\\top H (w_i - w_{d,i})

- :func:`masked_least_squares`: the exact minimiser, per output column ``i`` with kept rows ``M_i``:
  ``H[M, M] w[M] = (H w_d)[M]``. No correction that keeps the mask can do better (the ceiling).
- :func:`sparsegpt_update`: OBS-style column-by-column compensation (SparseGPT with the mask given).
- :func:`admm_update`: ADMM on the masked least-squares problem (Boža, 2024).

Orientation: weights are (d_in, d_out) like the rest of optlab, so SparseGPT's input "columns" are rows here.

Every LAPACK call here (Cholesky factorisation and the triangular solves) goes through a wrapper that stays
unbatched under ``jax.vmap``: a batch of factorisations runs as a loop of single ones. jax 0.10's CPU LAPACK
kernels block a thread of the intra-op pool while their *batch* runs on the same pool, so several independent
batched factorisations in one program (e.g. all three methods under one ``vmap``, as in a grid cell) can leave
every thread asleep on a machine with few cores; single factorisations run on the calling thread and cannot. So
any mix of these functions, vmapped or not, is safe to put in one jitted program on every supported JAX.
:func:`reconstructions` returns all three at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


# Why a loop and not a data dependency: a dependency orders the calls inside one function, but the hang comes
# from *independent* calls the user (or a grid) puts side by side, which no single function can order.
@jax.custom_batching.sequential_vmap
def _cholesky(a):
    """Lower Cholesky factor of one SPD matrix (NaN where it is not SPD); a loop of single calls under vmap."""
    return lax.linalg.cholesky(a, symmetrize_input=False)  # as jax.scipy's cho_factor: callers pass symmetric H


@jax.custom_batching.sequential_vmap
def _cho_solve(lower, rhs):
    """``(L Lᵀ)⁻¹ rhs`` for one lower factor ``L``; a loop of single calls under vmap."""
    half = lax.linalg.triangular_solve(lower, rhs, left_side=True, lower=True)
    return lax.linalg.triangular_solve(lower, half, left_side=True, lower=True, transpose_a=True)


def _check(gram, w_dense, mask):
    gram, w_dense, mask = jnp.asarray(gram), jnp.asarray(w_dense), jnp.asarray(mask, bool)
    if w_dense.ndim != 2:
        raise ValueError(f"w_dense must be 2-D (d_in, d_out), got shape {w_dense.shape}")
    d_in = w_dense.shape[0]
    if gram.shape != (d_in, d_in):
        raise ValueError(f"gram must have shape (d_in, d_in) = {(d_in, d_in)} for w_dense {w_dense.shape}, "
                         f"got {gram.shape}")
    if mask.shape != w_dense.shape:
        raise ValueError(f"mask must have the shape of w_dense {w_dense.shape}, got {mask.shape}")
    return gram, w_dense, mask


def _damped(gram, damping):
    """H + λ·mean(diag H)·I, with dead inputs (zero diagonal) given a unit diagonal so H stays invertible."""
    diag = jnp.diagonal(gram)
    dead = diag <= 0
    gram = gram + jnp.diag(jnp.where(dead, 1.0, 0.0).astype(gram.dtype))
    return gram + damping * jnp.mean(diag) * jnp.eye(gram.shape[0], dtype=gram.dtype)


def masked_least_squares(gram, w_dense, mask, *, damping: float = 0.0, batch_size: int = 32) -> jax.Array:
    """Exact masked least squares, one output column at a time (the best any correction with this mask can do).

    .. math:: (M H M + (I - M))\\, w_i = M H w_{d,i}, \\qquad M = \\operatorname{diag}(\\text{mask}_{:, i})

    Pruned rows get the identity, so the system is SPD whenever ``H[M, M]`` is, and their solution is 0.

    Args:
      gram: (d_in, d_in) ``H = xᵀx``.
      w_dense: (d_in, d_out) dense weights.
      mask: bool (d_in, d_out), True = kept.
      damping: optional λ: solves with ``H + λ·mean(diag H)·I`` (0 = exact; use > 0 when n < d_in).
      batch_size: columns solved together (bounds memory at ``batch_size · d_in²``).

    Returns:
      (d_in, d_out) weights, zero where pruned.

    Example::

        w_best = masked_least_squares(x.T @ x, w, mask)
    """
    gram, w_dense, mask = _check(gram, w_dense, mask)
    target = gram @ w_dense
    gram = _damped(gram, damping)

    def column(args):
        keep, rhs = args
        k = keep.astype(gram.dtype)
        system = gram * k[:, None] * k[None, :] + jnp.diag(1.0 - k)
        return _cho_solve(_cholesky(system), rhs * k) * k

    columns = lax.map(column, (mask.T, target.T), batch_size=min(batch_size, w_dense.shape[1]))
    return columns.T


def sparsegpt_update(gram, w_dense, mask, *, damping: float = 0.01) -> jax.Array:
    """SparseGPT-style optimal-brain-surgeon compensation with a fixed mask, one input row at a time.

    With ``U`` the upper Cholesky factor of ``(H + λ·mean(diag H)·I)⁻¹`` (``H⁻¹ = UᵀU``), for ``j = 0 … d_in-1``:

    .. math:: e = (w_j - m_j \\odot w_j) / U_{jj}, \\qquad w_{k} \\leftarrow w_{k} - U_{jk}\\, e \\quad (k \\ge j)

    Row ``j`` becomes its masked value and the error is spread over the rows not yet visited.

    Args:
      gram: (d_in, d_in) ``H = xᵀx``.
      w_dense: (d_in, d_out) dense weights.
      mask: bool (d_in, d_out), True = kept.
      damping: λ, relative to the mean diagonal (SparseGPT uses 0.01).

    Returns:
      (d_in, d_out) weights, zero where pruned.

    References:
      Frantar & Alistarh, SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot, 2023,
      https://arxiv.org/abs/2301.00774

    Example::

        w_sgpt = sparsegpt_update(x.T @ x, w, mask)
    """
    gram, w_dense, mask = _check(gram, w_dense, mask)
    dead = jnp.diagonal(gram) <= 0
    damped = _damped(gram, damping)
    inverse = _cho_solve(_cholesky(damped), jnp.eye(gram.shape[0], dtype=gram.dtype))
    upper = _cholesky(0.5 * (inverse + inverse.T)).T  # H⁻¹ = UᵀU, U upper triangular
    weights = jnp.where(dead[:, None], 0.0, w_dense)  # dead inputs never reach the output

    def visit(j, w):
        row = w[j]
        err = jnp.where(mask[j], 0.0, row) / upper[j, j]
        return w - upper[j][:, None] * err[None, :]  # upper[j, :j] = 0: visited rows stay

    weights = lax.fori_loop(0, gram.shape[0], visit, weights)
    return jnp.where(mask, weights, 0.0)


def admm_update(gram, w_dense, mask, *, rho: float = 1.0, iterations: int = 20) -> jax.Array:
    """ADMM for masked least squares (Boža, 2024), on the diagonally normalised Gram matrix.

    With ``D = diag(H)^{1/2}``, ``Ĥ = D⁻¹HD⁻¹`` (unit diagonal) and weights in the scaled frame ``ŵ = D w``:

    .. math::

        W &= (Ĥ + ρI)^{-1}(Ĥ Ŵ_0 + ρ(Z - U)) \\\\
        Z &= \\text{mask} \\odot (W + U), \\qquad U \\leftarrow U + W - Z

    ``(Ĥ + ρI)`` is factorised once. Returns ``Z`` (exactly masked) mapped back with ``D⁻¹``.

    Args:
      gram: (d_in, d_in) ``H = xᵀx``.
      w_dense: (d_in, d_out) dense weights.
      mask: bool (d_in, d_out), True = kept.
      rho: penalty, relative to the unit diagonal of ``Ĥ``.
      iterations: ADMM iterations (the paper uses about 20 for a fixed mask).

    Returns:
      (d_in, d_out) weights, zero where pruned.

    References:
      Boža, Fast and Effective Weight Update for Pruned Large Language Models, 2024,
      https://arxiv.org/abs/2401.02938

    Example::

        w_admm = admm_update(x.T @ x, w, mask, iterations=20)
    """
    gram, w_dense, mask = _check(gram, w_dense, mask)
    diag = jnp.diagonal(gram)
    scale = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    normed = gram / scale[:, None] / scale[None, :]
    w0 = w_dense * scale[:, None]
    factor = _cholesky(normed + rho * jnp.eye(gram.shape[0], dtype=gram.dtype))
    target = normed @ w0
    keep = mask.astype(gram.dtype)

    def iterate(_, state):
        z, u = state
        w = _cho_solve(factor, target + rho * (z - u))
        z_new = keep * (w + u)
        return z_new, u + w - z_new

    z, _ = lax.fori_loop(0, iterations, iterate, (keep * w0, jnp.zeros_like(w0)))
    return z / scale[:, None]


def reconstructions(gram, w_dense, mask, *, damping: float = 0.01, rho: float = 1.0,
                    iterations: int = 20) -> dict[str, jax.Array]:
    """All three reconstructions of one layer: ``{"least_squares", "sparsegpt", "admm"}``.

    Jittable and vmappable; safe in one program on jax 0.10 because every factorisation stays unbatched
    (see the module docstring), so no ordering between the methods is needed.

    Example::

        ws = reconstructions(x.T @ x, w, mask)
        errors = {k: layer_error(x, v, w) for k, v in ws.items()}
    """
    least_squares = masked_least_squares(gram, w_dense, mask)
    sparsegpt = sparsegpt_update(gram, w_dense, mask, damping=damping)
    admm = admm_update(gram, w_dense, mask, rho=rho, iterations=iterations)
    return {"least_squares": least_squares, "sparsegpt": sparsegpt, "admm": admm}
