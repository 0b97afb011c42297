"""Lab note 004's problem: fit an RGB image with N 2-D Gaussians (GaussianImage, ECCV 2024), in pure JAX.

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
memory is ``O(chunk · N)`` plus the image, not ``O(H · W · N)``, for the loss and for its gradient.

The loss is ``0.2·L1 + 0.8·L2 + 0.1·(1 − SSIM)`` (weights are arguments; SSIM is ``dm_pix.ssim``, 11×11 Gaussian
window, σ 1.5). ``gradient_of="l2_only"`` returns that fused value with the gradient of the L2 term alone (the
note's source code is reported to optimise L2 while it logs and checkpoints the fused loss).

Example:
  >>> import jax
  >>> target = synthetic_target(16)
  >>> params = init_params(jax.random.key(0), 8, target.shape[:2])
  >>> render(params, target.shape[:2]).shape
  (16, 16, 3)
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

RASTERISERS = ("sum", "normalized")
GRADIENT_OF = ("logged_loss", "l2_only")
IMAGES = ("synthetic", "photo")
ALPHA_MIN = 1.0 / 255.0  # GaussianImage skips contributions below one 8-bit level
CUTOFF_SIGMAS = 3.5  # the normalised renderer's hard cut-off radius, in standard deviations
NORM_EPS = 1e-8  # floor of the weight sum of the normalised renderer (uncovered pixels stay black)
CHOL_OFFSET = 0.5  # pixels added to the Cholesky diagonal (GaussianImage's cholesky_bound [0.5, 0, 0.5])
DEFAULT_CHUNK = 1024  # pixels per evaluation chunk
LOSS_WEIGHTS = (0.2, 0.8, 0.1)  # (L1, L2, 1 - SSIM): the note's fusion loss
SCALE_RANGE = (0.001, 0.5)  # clamp of the Cholesky diagonal, as fractions of the image size (the note's code)
POSITION_LIMIT = math.atanh(0.999)  # clamp of the pre-tanh position: keeps tanh out of its flat, gradient-free tail
PHOTO = "grace_hopper.jpg"  # matplotlib's bundled sample photograph (matplotlib/mpl-data/sample_data)


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


def check_image(image: Any, name: str = "image") -> jax.Array:
    """``image`` as a float32 (H, W, 3) array after checking it is H×W×3 with values in [0, 1].

    Raises ValueError naming ``name`` otherwise (only concrete arrays are range-checked; traced ones pass).
    Example: ``check_image(np.zeros((4, 4, 3)))``.
    """
    if isinstance(image, jax.core.Tracer):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"{name} must be an H×W×3 RGB array, got shape {image.shape}")
        return image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"{name} must be an H×W×3 RGB array with values in [0, 1], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold finite numbers in [0, 1]")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(f"{name} values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return jnp.asarray(array, jnp.float32)


# ------------------------------------------------------------------------------------------------ targets


def synthetic_target(size: int = 64) -> jax.Array:
    """The note's kind of target: a ``size``×``size`` colour gradient with a checkerboard laid over it, in [0, 1].

    Red rises left → right, green top → bottom, blue is their mean; 8×8 checks (at least 2 pixels each) darken
    every other square by 40 %. Example: ``synthetic_target(64).shape == (64, 64, 3)``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    red, green = np.meshgrid(ramp, ramp)
    gradient = np.stack([red, green, 0.5 * (red + green)], axis=-1)
    check = max(size // 8, 2)
    rows, cols = np.indices((size, size)) // check
    board = np.where((rows + cols) % 2 == 0, 1.0, 0.6).astype(np.float32)
    return jnp.asarray(gradient * board[..., None])


def photo_target(size: int = 64) -> jax.Array:
    """matplotlib's sample photograph (Grace Hopper, 512×600 JPEG), centre-cropped square, box-downscaled to ``size``.

    Example: ``photo_target(32).shape == (32, 32, 3)``.
    """
    import matplotlib  # side-effect free: only to find the installed sample file
    import matplotlib.image

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    path = pathlib.Path(matplotlib.get_data_path()) / "sample_data" / PHOTO
    pixels = np.asarray(matplotlib.image.imread(path), np.float32)[..., :3]
    if pixels.max() > 1.0:
        pixels = pixels / 255.0
    side = min(pixels.shape[:2])
    top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
    square = pixels[top:top + side, left:left + side]
    if side < size:
        raise ValueError(f"size must be <= {side} (the photo's short side), got {size}")
    block = side // size  # box filter: average block×block patches (drops the remainder rows / columns)
    square = square[:block * size, :block * size]
    small = square.reshape(size, block, size, block, 3).mean(axis=(1, 3))
    return jnp.asarray(np.clip(small, 0.0, 1.0))


def make_target(kind: str = "synthetic", size: int = 64) -> jax.Array:
    """The target image ``kind`` (``IMAGES``) at ``size``×``size``. Example: ``make_target("photo", 32)``."""
    _check_choice("image", kind, IMAGES)
    return synthetic_target(size) if kind == "synthetic" else photo_target(size)


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


# ------------------------------------------------------------------------------------------------ losses


def ssim(image: jax.Array, target: jax.Array) -> jax.Array:
    """Mean SSIM of two (H, W, 3) images in [0, 1] (``dm_pix.ssim``: 11×11 Gaussian window, σ 1.5, max value 1)."""
    return dm_pix.ssim(image, target, max_val=1.0)


def psnr(image: jax.Array, target: jax.Array) -> jax.Array:
    """``10 log10(1 / MSE)`` in dB for images in [0, 1] (inf for identical images)."""
    return -10.0 * jnp.log10(jnp.mean(jnp.square(image - target)))


def loss_terms(image: jax.Array, target: jax.Array, weights: Any = LOSS_WEIGHTS) -> dict[str, jax.Array]:
    """``l1``, ``l2`` (means over pixels and channels), ``ssim``, ``psnr`` and the fused ``loss``.

    .. math:: \\mathrm{loss} = w_1 \\mathrm{L1} + w_2 \\mathrm{L2} + w_3 (1 - \\mathrm{SSIM})

    ``weights`` ``(w1, w2, w3)`` may be traced. Example: ``loss_terms(x, x)["loss"] == 0``.
    """
    w1, w2, w3 = weights
    diff = image - target
    l1, l2 = jnp.mean(jnp.abs(diff)), jnp.mean(jnp.square(diff))
    s = ssim(image, target)
    return {"loss": w1 * l1 + w2 * l2 + w3 * (1.0 - s), "l1": l1, "l2": l2, "ssim": s, "psnr": psnr(image, target)}


def make_loss(target: Any, *, rasteriser: str = "sum", gradient_of: Any = "logged_loss", weights: Any = LOSS_WEIGHTS,
              chunk: int = DEFAULT_CHUNK, learn_opacity: Any = False):
    """``loss(params, batch) -> scalar`` for ``optlab.fit``: the fused loss, differentiated per ``gradient_of``.

    ``gradient_of="logged_loss"``: value and gradient of the fused loss. ``"l2_only"``: the value is still the
    fused loss (what ``fit`` logs and picks the best checkpoint by) but the gradient is that of the L2 term
    (``l2 + stop_gradient(fused − l2)``). ``gradient_of`` may also be a traced 0/1 flag (1 = ``"l2_only"``) so a
    grid vmaps both. ``batch`` is ignored (the data is the one target).

    Example: ``fit(make_loss(target), params, optax.adam(1e-3), steps=100)``.
    """
    target = check_image(target, "target")
    shape = target.shape[:2]
    _check_choice("rasteriser", rasteriser, RASTERISERS)
    if isinstance(gradient_of, str):
        gradient_of = float(_check_choice("gradient_of", gradient_of, GRADIENT_OF) == "l2_only")

    def loss(params, batch=None):
        del batch  # one fixed target: no data set to batch
        terms = loss_terms(render(params, shape, rasteriser=rasteriser, chunk=chunk, learn_opacity=learn_opacity),
                           target, weights)
        l2_grad = terms["l2"] + lax.stop_gradient(terms["loss"] - terms["l2"])
        # where, not a blend: the honest branch returns the fused loss bit for bit
        return jnp.where(jnp.asarray(gradient_of) > 0.5, l2_grad, terms["loss"])

    return loss


def make_metrics(target: Any, *, rasteriser: str = "sum", weights: Any = LOSS_WEIGHTS, chunk: int = DEFAULT_CHUNK,
                 learn_opacity: Any = False):
    """``metrics(params) -> dict`` for ``fit(metrics_fn=...)``: every loss term, PSNR, covariance degeneracy
    (:func:`covariance_stats`) and ``coverage`` (share of pixels with weight sum ≥ 1/255).

    Example: ``fit(loss, params, opt, steps=100, metrics_fn=make_metrics(target), log_every=10)``.
    """
    target = check_image(target, "target")
    shape = target.shape[:2]

    def metrics(params):
        image, total = render_with_weights(params, shape, rasteriser=rasteriser, chunk=chunk,
                                           learn_opacity=learn_opacity)
        out = loss_terms(image, target, weights)
        out.update(covariance_stats(params))
        out["coverage"] = jnp.mean(total >= ALPHA_MIN)
        return out

    return metrics


# ------------------------------------------------------------------------------------------------ clamping


def clamp_params(params: dict, shape: Any, offset: float = CHOL_OFFSET) -> dict[str, jax.Array]:
    """The note's code's clamps: colour to [0, 1], position into the image (pre-tanh ``|xy| ≤ POSITION_LIMIT``),
    Cholesky diagonal ``l + offset`` to ``SCALE_RANGE`` × ``max(H, W)`` pixels (``l21`` and opacity free).

    Example: ``clamp_params(params, (64, 64))["color"].max() <= 1``.
    """
    size = float(max(shape))
    lo, hi = SCALE_RANGE[0] * size - offset, SCALE_RANGE[1] * size - offset
    chol = params["chol"]
    chol = chol.at[:, 0].set(jnp.clip(chol[:, 0], lo, hi)).at[:, 2].set(jnp.clip(chol[:, 2], lo, hi))
    return {**params, "xy": jnp.clip(params["xy"], -POSITION_LIMIT, POSITION_LIMIT), "chol": chol,
            "color": jnp.clip(params["color"], 0.0, 1.0)}


def clamp_after_step(shape: Any, enabled: Any = True) -> optax.GradientTransformation:
    """An optax transformation (last in a chain) whose update moves params to ``clamp_params(params + update)``.

    ``enabled`` may be a traced 0/1 flag (a grid vmaps clamped and free runs). Under ``fit(schedule=η)`` the update
    is scaled after this step, so params become ``(1 − η) θ + η · clamp(θ + u)``: a convex combination of points in
    the box, so params that start in the box stay in it (exactly the clamp when η = 1).

    Example: ``optax.chain(optax.adam(1e-3), clamp_after_step((64, 64)))``.
    """
    shape = _check_shape(shape)

    def init_fn(params):
        del params  # stateless
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clamp_after_step needs params: call update(updates, state, params)")
        moved = optax.apply_updates(params, updates)
        clamped = optax.tree.sub(clamp_params(moved, shape), params)
        on = jnp.asarray(enabled) > 0.5
        return jax.tree.map(lambda c, u: jnp.where(on, c, u), clamped, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


__all__ = [
    "GRADIENT_OF", "IMAGES", "RASTERISERS", "check_image", "clamp_after_step", "clamp_params", "covariance_stats",
    "init_params", "loss_terms", "make_loss", "make_metrics", "make_target", "photo_target", "psnr", "render",
    "render_with_weights", "ssim", "synthetic_target",
]
