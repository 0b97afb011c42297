"""2-D Gaussians and their two rasterisers (lab note 004, GaussianImage ECCV 2024), in pure JAX.

Each Gaussian ``i`` has a position ``μ_i = (tanh(xy_i) + 1)/2 · (W, H)`` (pixels; tanh keeps it in the image, as
GaussianImage does), a lower-triangular Cholesky factor ``L_i = [[l11 + δ, 0], [l21, l22 + δ]]`` (pixels, with the
small positive offset ``δ`` on the diagonal that GaussianImage adds), a colour ``c_i`` and an opacity ``o_i`` (1
unless ``learn_opacity``; then ``sigmoid(raw)``). At the pixel centre ``p``:

.. math::

    \\sigma_i(p) = \\tfrac12 (p - \\mu_i)^\\top (L_i L_i^\\top)^{-1} (p - \\mu_i) = \\tfrac12 \\lVert L_i^{-1}(p-\\mu_i)
    \\rVert^2

Two rasterisers (``RASTERISERS``):

- ``"sum"``: GaussianImage's accumulated sum, ``I(p) = clip(Σ_i c_i w_i, 0, 1)`` with ``w_i = min(1, o_i e^{-σ_i})``
  and ``w_i`` set to 0 below 1/255 (no depth order, no transmittance).
- ``"normalized"``: a weighted average ``I(p) = Σ_i w_i c_i / max(Σ_i w_i, ε)`` with ``w_i = o_i e^{-σ_i}`` cut to 0
  beyond 3.5 standard deviations (``2σ_i > 3.5²``); uncovered pixels are black.

Pixels are evaluated in chunks (``chunk`` pixels at a time), so memory is ``O(chunk · N)`` plus the image, not
``O(H · W · N)``, for the loss and for its gradient: the gradient is a hand-written VJP that recomputes each chunk's
weights and forms every parameter's partial sum in the same pass (:func:`_chunk_vjp`). Under ``vmap`` (a grid of
configs) the rasteriser loops over the configs rather than widening its (pixel, Gaussian) arrays by the grid width,
so they stay in cache (see ``_one_config_at_a_time``); each config then computes the same bits as a run alone.
The image, losses and clamps built on these live in :mod:`optlab.problems.gaussian_image`.

Example:
  >>> import jax
  >>> params = init_params(jax.random.key(0), 8, (16, 16))
  >>> render(params, (16, 16), rasteriser="normalized").shape
  (16, 16, 3)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching, lax

RASTERISERS = ("sum", "normalized")
ALPHA_MIN = 1.0 / 255.0  # GaussianImage skips contributions below one 8-bit level
CUTOFF_SIGMAS = 3.5  # the normalised renderer's hard cut-off radius, in standard deviations
NORM_EPS = 1e-8  # floor of the weight sum of the normalised renderer (uncovered pixels stay black)
CHOL_OFFSET = 0.5  # pixels added to the Cholesky diagonal (GaussianImage's cholesky_bound [0.5, 0, 0.5])
DEFAULT_CHUNK = 1024  # pixels per evaluation chunk


# ------------------------------------------------------------------------------------------------ checks


def _check_count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n (number of Gaussians) must be an int > 0, got {n!r}")
    return int(n)


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width) of two ints >= 1, got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"shape must be (height, width) of two ints >= 1, got {shape!r}")
    return h, w


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------ parameters


def init_params(key: jax.Array, n: int, shape: Any, *, init_std: float | None = None) -> dict[str, jax.Array]:
    """N random Gaussians for an image of ``shape`` (H, W): GaussianImage's initialisation, scaled to N.

    Positions uniform in the image (``xy = atanh(u)``, ``u ~ U(-1, 1)``), Cholesky entries ``init_std · U(0, 1)``
    (GaussianImage draws ``U(0, 1)`` pixels for tens of thousands of points; with tens of points each must cover
    more, so the default ``init_std`` is ``max(H, W) / (2 √N)``), colours ``U(0, 1)``, raw opacity 0.

    Returns ``{"xy": (N, 2), "chol": (N, 3) raw (l11, l21, l22), "color": (N, 3), "opacity": (N,)}``.
    Example: ``init_params(jax.random.key(0), 50, (64, 64))["chol"].shape == (50, 3)``.
    """
    n = _check_count(n)
    h, w = _check_shape(shape)
    if init_std is None:
        init_std = max(h, w) / (2.0 * math.sqrt(n))
    k_xy, k_chol, k_col = jax.random.split(key, 3)
    u = jax.random.uniform(k_xy, (n, 2), jnp.float32, -0.95, 0.95)
    return {"xy": jnp.arctanh(u), "chol": init_std * jax.random.uniform(k_chol, (n, 3), jnp.float32),
            "color": jax.random.uniform(k_col, (n, 3), jnp.float32), "opacity": jnp.zeros((n,), jnp.float32)}


def positions(params: dict, shape: Any) -> jax.Array:
    """(N, 2) centres ``(x, y)`` in pixels: ``(tanh(xy) + 1)/2 · (W, H)``."""
    h, w = shape
    return 0.5 * (jnp.tanh(params["xy"]) + 1.0) * jnp.asarray([w, h], jnp.float32)


def cholesky(params: dict, offset: float = CHOL_OFFSET) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(a, b, c)``: ``L = [[a, 0], [b, c]]`` per Gaussian, with ``offset`` added to the diagonal (pixels)."""
    chol = params["chol"]
    return chol[:, 0] + offset, chol[:, 1], chol[:, 2] + offset


def opacities(params: dict, learn_opacity: Any = False) -> jax.Array:
    """(N,) opacities: 1, or ``sigmoid(2 + raw)`` when ``learn_opacity`` (may be traced; starts at 0.88)."""
    return jnp.where(jnp.asarray(learn_opacity) > 0.5, jax.nn.sigmoid(2.0 + params["opacity"]),
                     jnp.ones_like(params["opacity"]))


def covariance_stats(params: dict, offset: float = CHOL_OFFSET) -> dict[str, jax.Array]:
    """Degeneracy diagnostics of the covariances ``Σ = L Lᵀ`` (pixels²).

    Returns ``min_eig`` (smallest eigenvalue over all Gaussians), ``min_abs_det`` (smallest ``|det Σ|``) and
    ``n_subpixel`` (Gaussians whose smaller standard deviation ``√λ_min`` is below half a pixel, i.e. narrower than
    one pixel at ±1σ). Example: ``covariance_stats(params)["min_eig"]``.
    """
    a, b, c = cholesky(params, offset)
    s11, s12, s22 = a * a, a * b, b * b + c * c
    half_trace, det = 0.5 * (s11 + s22), s11 * s22 - s12 * s12
    lam_min = half_trace - jnp.sqrt(jnp.maximum(half_trace * half_trace - det, 0.0))
    lam_min = jnp.maximum(lam_min, 0.0)  # rounding can push a near-singular λ_min just below 0
    return {"min_eig": jnp.min(lam_min), "min_abs_det": jnp.min(jnp.abs(det)),
            "n_subpixel": jnp.sum(jnp.sqrt(lam_min) < 0.5).astype(jnp.float32)}


# ------------------------------------------------------------------------------------------------ rendering


def _weights(pixels: jax.Array, centres: jax.Array, a, b, c, opacity, rasteriser: str) -> jax.Array:
    """(P, N) weights of N Gaussians at P pixel centres."""
    dx = pixels[:, None, 0] - centres[None, :, 0]
    dy = pixels[:, None, 1] - centres[None, :, 1]
    z1 = dx / a  # L⁻¹ d by forward substitution: no explicit inverse of Σ
    z2 = (dy - b * z1) / c
    sigma = 0.5 * (z1 * z1 + z2 * z2)
    gauss = opacity * jnp.exp(-sigma)
    if rasteriser == "sum":
        alpha = jnp.minimum(1.0, gauss)
        return jnp.where(alpha >= ALPHA_MIN, alpha, 0.0)
    return jnp.where(2.0 * sigma <= CUTOFF_SIGMAS ** 2, gauss, 0.0)


def _render_chunk(pixels, centres, a, b, c, opacity, colors, rasteriser: str):
    """(P, 3) image, (P,) weight sum and (P, 3) unclipped / unnormalised mix ``Σ w c`` of one pixel chunk."""
    weights = _weights(pixels, centres, a, b, c, opacity, rasteriser)
    total = jnp.sum(weights, axis=1)
    mixed = weights @ colors
    if rasteriser == "sum":
        return jnp.clip(mixed, 0.0, 1.0), total, mixed
    return mixed / jnp.maximum(total, NORM_EPS)[:, None], total, mixed


def _tie_slope(x, bound, above: bool):
    # d max(x, bound)/dx (above) or d min(x, bound)/dx as JAX defines them: 1 on the free side, ½ at a tie, else 0
    free = x > bound if above else x < bound
    return jnp.where(free, 1.0, jnp.where(x == bound, 0.5, 0.0))


def _chunk_vjp(pixels, centres, a, b, c, opacity, colors, mixed, total, g_image, g_total, rasteriser: str):
    """Cotangents of ``(centres, a, b, c, opacity, colors)`` for one chunk, the (P, N) weights recomputed.

    Hand-written so that each (pixel, Gaussian) pair is visited in one fused pass (forward recomputation and every
    parameter's partial sum together) instead of the dozen (P, N) arrays autodiff of ``_render_chunk`` under
    ``jax.checkpoint`` materialises; same maths, sums in another order (last-bit differences).
    """
    dx = pixels[:, None, 0] - centres[None, :, 0]
    dy = pixels[:, None, 1] - centres[None, :, 1]
    z1 = dx / a
    z2 = (dy - b * z1) / c
    sigma = 0.5 * (z1 * z1 + z2 * z2)
    decay = jnp.exp(-sigma)
    gauss = opacity * decay
    if rasteriser == "sum":
        alpha = jnp.minimum(1.0, gauss)
        keep = alpha >= ALPHA_MIN
        weights = jnp.where(keep, alpha, 0.0)
        g_mixed = g_image * _tie_slope(mixed, 0.0, True) * _tie_slope(mixed, 1.0, False)
        d_total = g_total
        slope = jnp.where(keep, _tie_slope(gauss, 1.0, False), 0.0)  # d min(1, gauss) / d gauss, cut below 1/255
    else:
        keep = 2.0 * sigma <= CUTOFF_SIGMAS ** 2
        weights = jnp.where(keep, gauss, 0.0)
        denom = jnp.maximum(total, NORM_EPS)
        g_mixed = g_image / denom[:, None]
        d_denom = -jnp.sum(g_image * mixed, axis=1) / (denom * denom)
        d_total = g_total + d_denom * _tie_slope(total, NORM_EPS, True)
        slope = keep.astype(gauss.dtype)
    # d loss / d w[p, n] = Σ_k g_mixed[p, k] c[n, k] + d_total[p], written out (3 channels) so it fuses
    d_weights = (g_mixed[:, None, 0] * colors[None, :, 0] + g_mixed[:, None, 1] * colors[None, :, 1]
                 + g_mixed[:, None, 2] * colors[None, :, 2] + d_total[:, None])
    d_gauss = d_weights * slope
    d_sigma = -d_gauss * gauss
    d_z2 = d_sigma * z2 / c
    d_z1 = (d_sigma * z1 - d_z2 * b) / a  # z1's own term plus its share through z2 = (dy − b z1) / c
    d_centres = -jnp.stack([jnp.sum(d_z1, axis=0), jnp.sum(d_z2, axis=0)], axis=-1)
    return (d_centres, -jnp.sum(d_z1 * z1, axis=0), -jnp.sum(d_z2 * z1, axis=0), -jnp.sum(d_z2 * z2, axis=0),
            jnp.sum(d_gauss * decay, axis=0), jnp.einsum("pn,pk->nk", weights, g_mixed))


def _one_config_at_a_time(fn):
    """``fn`` that, under ``vmap``, loops over the mapped configs (``lax.map``) instead of batching them.

    Batching widens every (pixel, Gaussian) array of a chunk by the vmap width: at width 64 one such array is
    64 × 1024 × 50 floats, far past the cache, and a grid cell became slower than a run alone. The rasteriser is
    already vectorised over pixels × Gaussians, so one config at a time loses nothing there, and the rest of the
    step (SSIM, the optimizer, the per-op dispatch) stays batched. Each config also runs the very ops of a run
    alone. Nested vmaps nest the loops.
    """
    looped = custom_batching.custom_vmap(fn)

    @looped.def_vmap
    def rule(axis_size, in_batched, *args):
        args = tuple(jax.tree.map(lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))), arg,
                                  batched) for arg, batched in zip(args, in_batched))
        out = lax.map(lambda one: looped(*one), args)
        return out, jax.tree.map(lambda _: True, out)

    return looped


def _forward(rasteriser: str, blocks, centres, a, b, c, opacity, colors):
    # image, weight sum and the unclipped / unnormalised mix of every chunk; the (P, N) weights are not kept
    return lax.map(lambda block: _render_chunk(block, centres, a, b, c, opacity, colors, rasteriser), blocks)


def _backward(rasteriser: str, blocks, centres, a, b, c, opacity, colors, mixed, total, g_image, g_total):
    def one(chunk):
        block, m, t, g_i, g_t = chunk
        return _chunk_vjp(block, centres, a, b, c, opacity, colors, m, t, g_i, g_t, rasteriser)

    return tuple(jnp.sum(part, axis=0) for part in lax.map(one, (blocks, mixed, total, g_image, g_total)))


_FORWARD = {r: _one_config_at_a_time(functools.partial(_forward, r)) for r in RASTERISERS}
_BACKWARD = {r: _one_config_at_a_time(functools.partial(_backward, r)) for r in RASTERISERS}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rasterise(rasteriser: str, blocks, centres, a, b, c, opacity, colors):
    """(chunks, P, 3) images and (chunks, P) weight sums of the pixel ``blocks`` (chunks, P, 2)."""
    return _rasterise_fwd(rasteriser, blocks, centres, a, b, c, opacity, colors)[0]


def _rasterise_fwd(rasteriser, blocks, centres, a, b, c, opacity, colors):
    image, total, mixed = _FORWARD[rasteriser](blocks, centres, a, b, c, opacity, colors)
    # residuals: the inputs and two per-pixel arrays; the (P, N) weights are recomputed chunk by chunk
    return (image, total), (blocks, centres, a, b, c, opacity, colors, mixed, total)


def _rasterise_bwd(rasteriser, residuals, cotangents):
    g_image, g_total = cotangents
    grads = _BACKWARD[rasteriser](*residuals, g_image, g_total)
    return (jnp.zeros_like(residuals[0]), *grads)


_rasterise.defvjp(_rasterise_fwd, _rasterise_bwd)


def pixel_centres(shape: Any) -> jax.Array:
    """(H·W, 2) pixel centres ``(x + 0.5, y + 0.5)`` in row-major order."""
    h, w = shape
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5, jnp.arange(w, dtype=jnp.float32) + 0.5,
                          indexing="ij")
    return jnp.stack([xs.ravel(), ys.ravel()], axis=-1)


def render_with_weights(params: dict, shape: Any, *, rasteriser: str = "sum", chunk: int = DEFAULT_CHUNK,
                        learn_opacity: Any = False, offset: float = CHOL_OFFSET) -> tuple[jax.Array, jax.Array]:
    """The (H, W, 3) image and the (H, W) weight sum ``Σ_i w_i`` per pixel (coverage), chunked over pixels.

    Example: ``image, coverage = render_with_weights(params, (64, 64), rasteriser="normalized")``.
    """
    _check_choice("rasteriser", rasteriser, RASTERISERS)
    h, w = _check_shape(shape)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    pixels = pixel_centres((h, w))
    n_pix = h * w
    chunk = min(chunk, n_pix)
    n_chunks = -(-n_pix // chunk)
    # pad with copies of the last pixel so every chunk has one shape (one compiled body); dropped below
    pixels = jnp.concatenate([pixels, jnp.repeat(pixels[-1:], n_chunks * chunk - n_pix, axis=0)])
    centres, (a, b, c) = positions(params, (h, w)), cholesky(params, offset)
    opacity, colors = opacities(params, learn_opacity), params["color"]

    # custom VJP (_rasterise): the backward pass recomputes each chunk's (chunk, N) weights instead of storing
    # all H·W·N of them, and fuses the recomputation with every parameter's partial sum
    image, total = _rasterise(rasteriser, pixels.reshape(n_chunks, chunk, 2), centres, a, b, c, opacity, colors)
    image = image.reshape(-1, 3)[:n_pix].reshape(h, w, 3)
    return image, total.reshape(-1)[:n_pix].reshape(h, w)


def render(params: dict, shape: Any, *, rasteriser: str = "sum", chunk: int = DEFAULT_CHUNK,
           learn_opacity: Any = False, offset: float = CHOL_OFFSET) -> jax.Array:
    """The (H, W, 3) image of the Gaussians ``params`` (see the module docstring for both rasterisers).

    Example: ``render(init_params(jax.random.key(0), 50, (64, 64)), (64, 64)).shape == (64, 64, 3)``.
    """
    return render_with_weights(params, shape, rasteriser=rasteriser, chunk=chunk, learn_opacity=learn_opacity,
                               offset=offset)[0]


__all__ = [
    "ALPHA_MIN", "CHOL_OFFSET", "CUTOFF_SIGMAS", "DEFAULT_CHUNK", "NORM_EPS", "RASTERISERS", "cholesky",
    "covariance_stats", "init_params", "opacities", "pixel_centres", "positions", "render", "render_with_weights",
]
