"""Lab note 004's problem: fit an RGB image with N 2-D Gaussians (GaussianImage, ECCV 2024), in pure JAX.

The Gaussians and the two rasterisers are :mod:`optlab.problems.gaussian_raster` (re-exported here); this module
holds the targets, the loss and its ``gradient_of`` switch, the metrics and the parameter clamps.

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

from optlab.problems.gaussian_raster import (ALPHA_MIN, CHOL_OFFSET, CUTOFF_SIGMAS, DEFAULT_CHUNK, NORM_EPS,
                                             RASTERISERS, _check_choice, _check_shape, cholesky, covariance_stats,
                                             init_params, opacities, pixel_centres, positions, render,
                                             render_with_weights)

GRADIENT_OF = ("logged_loss", "l2_only")
IMAGES = ("synthetic", "photo")
LOSS_WEIGHTS = (0.2, 0.8, 0.1)  # (L1, L2, 1 - SSIM): the note's fusion loss
SCALE_RANGE = (0.001, 0.5)  # clamp of the Cholesky diagonal, as fractions of the image size (the note's code)
POSITION_LIMIT = math.atanh(0.999)  # clamp of the pre-tanh position: keeps tanh out of its flat, gradient-free tail
PHOTO = "grace_hopper.jpg"  # matplotlib's bundled sample photograph (matplotlib/mpl-data/sample_data)


# ------------------------------------------------------------------------------------------------ checks


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
    "ALPHA_MIN", "CHOL_OFFSET", "CUTOFF_SIGMAS", "DEFAULT_CHUNK", "GRADIENT_OF", "IMAGES", "LOSS_WEIGHTS",
    "NORM_EPS", "RASTERISERS", "check_image", "cholesky", "clamp_after_step", "clamp_params", "covariance_stats",
    "init_params", "loss_terms", "make_loss", "make_metrics", "make_target", "opacities", "photo_target",
    "pixel_centres", "positions", "psnr", "render", "render_with_weights", "ssim", "synthetic_target",
]
