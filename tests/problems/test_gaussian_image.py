"""The 2-D Gaussian image problem (lab note 004): rasterisers, losses, clamping, the gradient_of switch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.problems import gaussian_image as gi

SHAPE = (12, 12)


def one_gaussian(x=6.0, y=6.0, a=1.5, b=0.3, c=1.2, color=(0.2, 0.5, 0.9)):
    """One Gaussian centred at pixel coordinates (x, y) with Cholesky (a, b, c) after the offset."""
    h, w = SHAPE
    xy = jnp.arctanh(jnp.asarray([[2 * x / w - 1, 2 * y / h - 1]], jnp.float32))
    chol = jnp.asarray([[a - gi.CHOL_OFFSET, b, c - gi.CHOL_OFFSET]], jnp.float32)
    return {"xy": xy, "chol": chol, "color": jnp.asarray([color], jnp.float32), "opacity": jnp.zeros((1,))}


@pytest.mark.parametrize("rasteriser", gi.RASTERISERS)
def test_one_gaussian_renders_its_colour_at_its_centre(rasteriser):
    # pixel (row 6, col 5) has centre (5.5, 6.5): put the Gaussian there, where sigma = 0 and the weight is 1
    image = gi.render(one_gaussian(5.5, 6.5), SHAPE, rasteriser=rasteriser)
    np.testing.assert_allclose(image[6, 5], [0.2, 0.5, 0.9], rtol=1e-5)


def test_sum_renderer_matches_closed_form_off_centre():
    a, b, c = 1.5, 0.3, 1.2
    image = gi.render(one_gaussian(5.5, 6.5, a, b, c, color=(1.0, 1.0, 1.0)), SHAPE, rasteriser="sum")
    cov = np.array([[a * a, a * b], [a * b, b * b + c * c]])
    d = np.array([1.0, 1.0])  # pixel (7, 6) is one pixel right and one down
    expected = np.exp(-0.5 * d @ np.linalg.solve(cov, d))
    np.testing.assert_allclose(image[7, 6, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("rasteriser", gi.RASTERISERS)
def test_axis_aligned_gaussian_is_symmetric(rasteriser):
    # centred on a pixel corner (6, 6) with a diagonal covariance: mirror images in x and in y
    image = np.asarray(gi.render(one_gaussian(6.0, 6.0, 2.0, 0.0, 1.3), SHAPE, rasteriser=rasteriser))
    np.testing.assert_allclose(image, image[::-1], atol=1e-6)
    np.testing.assert_allclose(image, image[:, ::-1], atol=1e-6)


def test_rasterisers_agree_on_one_isolated_gaussian():
    params = one_gaussian(5.5, 6.5, 1.4, -0.2, 1.1)
    summed, total = gi.render_with_weights(params, SHAPE, rasteriser="sum")
    normalised, _ = gi.render_with_weights(params, SHAPE, rasteriser="normalized")
    # where the weights sum to 1 (the centre) the images coincide
    np.testing.assert_allclose(summed[6, 5], normalised[6, 5], rtol=1e-6)
    # elsewhere: one Gaussian, so sum = w · c and normalised = c wherever both count the pixel
    both = (np.asarray(total) > 0)
    np.testing.assert_allclose(np.asarray(summed)[both], (np.asarray(total)[..., None] * normalised)[both],
                               rtol=1e-5, atol=1e-7)
    assert both.sum() > 9


def test_chunking_does_not_change_the_image():
    params = gi.init_params(jax.random.key(1), 7, SHAPE)
    for rasteriser in gi.RASTERISERS:
        whole = gi.render(params, SHAPE, rasteriser=rasteriser, chunk=144)
        chunked = gi.render(params, SHAPE, rasteriser=rasteriser, chunk=25)  # 144 = 5·25 + 19: padded last chunk
        chex.assert_trees_all_close(whole, chunked, atol=1e-6)


@pytest.mark.parametrize("rasteriser", gi.RASTERISERS)
def test_gradient_matches_finite_differences(rasteriser):
    with jax.enable_x64(True):
        target = jnp.asarray(gi.synthetic_target(12), jnp.float64)
        params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), gi.init_params(jax.random.key(3), 5, SHAPE))
        # the smooth part of the loss (no SSIM windows, no clip at 1): L2 of the render
        loss = jax.jit(lambda p: jnp.mean(jnp.square(gi.render(p, SHAPE, rasteriser=rasteriser, chunk=50) - target)))
        grads = jax.grad(loss)(params)
        rng = np.random.default_rng(0)
        for name in ("xy", "chol", "color"):
            for _ in range(3):
                index = tuple(rng.integers(0, s) for s in params[name].shape)
                h = 1e-6
                up = {**params, name: params[name].at[index].add(h)}
                down = {**params, name: params[name].at[index].add(-h)}
                numeric = (loss(up) - loss(down)) / (2 * h)
                np.testing.assert_allclose(grads[name][index], numeric, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("rasteriser", gi.RASTERISERS)
@pytest.mark.parametrize("learn_opacity", [False, True])
def test_hand_written_vjp_matches_autodiff_of_the_unchunked_render(rasteriser, learn_opacity):
    from optlab.problems import gaussian_raster as gr

    params = gi.init_params(jax.random.key(4), 6, SHAPE)
    # colours outside [0, 1] so the sum rasteriser's clip binds somewhere; opacities away from 1
    params = {**params, "color": 1.8 * params["color"] - 0.4, "opacity": jnp.linspace(-1.0, 1.0, 6)}
    target = gi.synthetic_target(12)
    pixels = gr.pixel_centres(SHAPE)

    def objective(image, total):
        return jnp.mean(jnp.square(image - target)) + 0.1 * gi.ssim(image, target) + 0.01 * jnp.mean(jnp.sin(total))

    def reference(p):  # plain autodiff through one chunk holding every pixel (no custom VJP, no padding)
        (a, b, c), opacity = gr.cholesky(p), gr.opacities(p, learn_opacity)
        image, total, _ = gr._render_chunk(pixels, gr.positions(p, SHAPE), a, b, c, opacity, p["color"], rasteriser)
        return objective(image.reshape(12, 12, 3), total.reshape(12, 12))

    def chunked(p):  # 144 pixels in chunks of 25: five full chunks and a padded one
        return objective(*gi.render_with_weights(p, SHAPE, rasteriser=rasteriser, chunk=25,
                                                 learn_opacity=learn_opacity))

    value, grads = jax.value_and_grad(chunked)(params)
    expected_value, expected = jax.value_and_grad(reference)(params)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    chex.assert_trees_all_close(grads, expected, rtol=2e-5, atol=1e-7)
    if learn_opacity:  # the opacity path is exercised, not trivially zero on both sides
        assert float(jnp.max(jnp.abs(grads["opacity"]))) > 0


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    x = gi.synthetic_target(32)
    assert float(gi.ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    noise = jax.random.normal(jax.random.key(0), x.shape)
    values = [float(gi.ssim(jnp.clip(x + s * noise, 0, 1), x)) for s in (0.02, 0.1, 0.3)]
    assert values[0] > values[1] > values[2]
    assert values[0] < 1.0


@settings(max_examples=10, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.001, 0.5))
def test_psnr_of_a_constant_error_is_its_closed_form(level, error):
    target = jnp.full((4, 4, 3), level, jnp.float32)
    image = jnp.clip(target + error, 0.0, 1.0)
    mse = float(jnp.mean((image - target) ** 2))
    if mse > 0:
        assert float(gi.psnr(image, target)) == pytest.approx(-10 * np.log10(mse), rel=1e-4)


def test_loss_terms_add_up_and_vanish_at_the_target():
    target = gi.synthetic_target(16)
    image = jnp.clip(target + 0.05, 0, 1)
    terms = gi.loss_terms(image, target)
    expected = 0.2 * terms["l1"] + 0.8 * terms["l2"] + 0.1 * (1 - terms["ssim"])
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(gi.loss_terms(target, target)["loss"]) == pytest.approx(0.0, abs=1e-6)


def test_l2_only_logs_the_fused_loss_but_follows_the_l2_gradient():
    target = gi.synthetic_target(12)
    params = gi.init_params(jax.random.key(0), 6, SHAPE)
    honest, l2_only = jax.jit(gi.make_loss(target)), jax.jit(gi.make_loss(target, gradient_of="l2_only"))
    assert float(l2_only(params)) == pytest.approx(float(honest(params)), rel=1e-6)
    l2 = gi.make_loss(target, weights=(0.0, 1.0, 0.0))
    chex.assert_trees_all_close(jax.grad(l2_only)(params), jax.grad(l2)(params), rtol=1e-5, atol=1e-9)


def test_clamp_after_step_keeps_params_in_the_box():
    params = gi.init_params(jax.random.key(0), 4, SHAPE)
    opt = optax.chain(optax.sgd(100.0), gi.clamp_after_step(SHAPE))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    moved = optax.apply_updates(params, updates)
    assert float(moved["color"].min()) >= 0.0 and float(moved["color"].max()) <= 1.0
    assert float(jnp.abs(moved["xy"]).max()) <= gi.POSITION_LIMIT + 1e-6
    diag = moved["chol"][:, [0, 2]] + gi.CHOL_OFFSET
    assert float(diag.min()) >= gi.SCALE_RANGE[0] * 12 - 1e-5
    off = optax.chain(optax.sgd(100.0), gi.clamp_after_step(SHAPE, enabled=0.0))
    free, _ = off.update(grads, off.init(params), params)
    chex.assert_trees_all_close(free, jax.tree.map(lambda g: -100.0 * g, grads))


def test_covariance_stats_see_a_degenerate_gaussian():
    params = one_gaussian(a=2.0, b=0.0, c=0.1)
    stats = gi.covariance_stats(params)
    assert float(stats["min_eig"]) == pytest.approx(0.01, rel=1e-4)
    assert float(stats["min_abs_det"]) == pytest.approx(4.0 * 0.01, rel=1e-4)
    assert float(stats["n_subpixel"]) == 1.0


def test_render_vmaps_and_jits_over_configs():
    keys = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(lambda k: gi.init_params(k, 5, SHAPE))(keys)
    images = jax.jit(jax.vmap(lambda p: gi.render(p, SHAPE)))(params)
    assert images.shape == (3, 12, 12, 3)
    # under vmap the rasteriser loops over configs, each running a lone run's ops: the same bits, image and gradient
    target = gi.synthetic_target(12)
    objective = lambda p: jnp.sum(gi.render(p, SHAPE, chunk=25) * target)  # noqa: E731
    grads = jax.jit(jax.vmap(jax.grad(objective)))(params)
    for i in range(3):
        one = jax.tree.map(lambda v: v[i], params)
        chex.assert_trees_all_equal(images[i], jax.jit(lambda p: gi.render(p, SHAPE))(one))
        chex.assert_trees_all_equal(jax.tree.map(lambda v: v[i], grads), jax.jit(jax.grad(objective))(one))


def test_targets_are_rgb_in_the_unit_interval():
    for kind in gi.IMAGES:
        image = np.asarray(gi.make_target(kind, 32))
        assert image.shape == (32, 32, 3) and image.min() >= 0 and image.max() <= 1 and image.std() > 0.05


@pytest.mark.parametrize("call, match", [
    (lambda: gi.init_params(jax.random.key(0), 0, SHAPE), "n .*> 0"),
    (lambda: gi.init_params(jax.random.key(0), -3, SHAPE), "n .*> 0"),
    (lambda: gi.make_loss(np.zeros((8, 8))), "H×W×3"),
    (lambda: gi.make_loss(np.full((8, 8, 3), 1.5)), r"\[0, 1\]"),
    (lambda: gi.render(one_gaussian(), SHAPE, rasteriser="splat"), "rasteriser must be one of"),
    (lambda: gi.make_loss(gi.synthetic_target(8), gradient_of="l1"), "gradient_of must be one of"),
    (lambda: gi.make_target("painting"), "image must be one of"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
