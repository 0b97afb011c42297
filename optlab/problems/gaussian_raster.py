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

Pixels are evaluated in chunks (``chunk`` pixels at a time, each chunk rematerialised in the backward pass), so
memory is ``O(chunk · N)`` plus the image, not ``O(H · W · N)``, for the loss and for its gradient. The image,
losses and clamps built on these live in :mod:`optlab.problems.gaussian_image`.

Example:
  >>> import jax
  >>> params = init_params(jax.random.key(0), 8, (16, 16))
  >>> render(params, (16, 16), rasteriser="normalized").shape
  (16, 16, 3)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
    weights = _weights(pixels, centres, a, b, c, opacity, rasteriser)
    total = jnp.sum(weights, axis=1)
    mixed = weights @ colors
    if rasteriser == "sum":
        return jnp.clip(mixed, 0.0, 1.0), total
    return mixed / jnp.maximum(total, NORM_EPS)[:, None], total


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

    # remat: the backward pass recomputes each chunk's (chunk, N) weights instead of storing all H·W·N of them
    @jax.checkpoint
    def body(block):
        return _render_chunk(block, centres, a, b, c, opacity, colors, rasteriser)

    image, total = lax.map(body, pixels.reshape(n_chunks, chunk, 2))
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
