"""The layer-by-layer pipeline: masks kept with exact counts, the ceiling bounds every method, one Gram per layer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.correction import network as nw
from optlab.correction.pruning import magnitude_mask, nm_mask
from optlab.correction.reconstruct import masked_least_squares
from optlab.problems import digits

CORRECTIONS = ("greedy_fixed", "greedy_optimal", "sparsegpt", "admm", "least_squares")


@pytest.fixture(scope="module")
def model_and_x():
    model = digits.mlp(jax.random.key(0), (64, 16, 10))  # two layers: each method compiles two layer programs
    x = jax.random.uniform(jax.random.key(1), (48, 64))
    return model, x


# One sparsity per test keeps compiles few (each (method, sparsity) is a program); tests/correction/test_pruning.py
# covers every sparsity and pattern of the masks themselves.
SPARSITY, OPTIONS = "2:4", {"magnitude": 0.1, "fraction": 0.5}


def test_every_method_keeps_the_magnitude_mask_with_exact_counts(model_and_x):
    model, x = model_and_x
    sparsity = SPARSITY
    for method in ("magnitude", *CORRECTIONS):
        out = nw.prune_network(model, x, method=method, sparsity=sparsity, **OPTIONS)
        for dense, layer, share in zip(model.layers, out.model.layers, out.stats.sparsity):
            w_dense, w = dense.weight.T, layer.weight.T
            mask = nm_mask(w_dense, sparsity) if isinstance(sparsity, str) else magnitude_mask(w_dense, sparsity)
            kept = nw.kept_per_output(w.shape[0], sparsity)
            np.testing.assert_array_equal(np.asarray(mask).sum(axis=0), kept)  # exact count per output
            assert not np.any(np.asarray(w)[~np.asarray(mask)]), method  # pruned weights stay exactly zero
            assert float(share) >= 1 - kept / w.shape[0] - 1e-6


@pytest.mark.parametrize("calibration", ["sequential", "one_shot"])
def test_masked_least_squares_is_never_worse_than_any_method_on_the_layer_objective(model_and_x, calibration):
    model, x = model_and_x
    for method in ("magnitude", *CORRECTIONS):  # not Wanda: its own mask has another ceiling
        stats = nw.prune_network(model, x, method=method, sparsity=SPARSITY, calibration=calibration,
                                 **OPTIONS).stats
        error, ceiling = np.asarray(stats.error), np.asarray(stats.error_ceiling)
        assert np.all(ceiling <= error * (1 + 1e-4) + 1e-7), (method, ceiling, error)
        assert np.all(np.asarray(stats.share) <= 1 + 1e-3), method


def test_reduced_ceiling_equals_the_padded_masked_least_squares():
    x = jax.random.normal(jax.random.key(2), (40, 24))
    w = jax.random.normal(jax.random.key(3), (24, 6))
    for sparsity in (0.5, "2:4"):
        mask = nm_mask(w, sparsity) if isinstance(sparsity, str) else magnitude_mask(w, sparsity)
        got = nw.ceiling_weights(x.T @ x, w, mask, nw.kept_per_output(24, sparsity))
        chex.assert_trees_all_close(got, masked_least_squares(x.T @ x, w, mask, damping=nw.CEILING_DAMPING),
                                    atol=1e-4, rtol=1e-4)


def test_methods_see_the_calibration_only_through_one_gram_and_all_move_with_it():
    x = jax.random.uniform(jax.random.key(4), (32, 16))
    w = jax.random.normal(jax.random.key(5), (16, 8))
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(6), (32, 32)))
    rotated, perturbed = q @ x, x.at[:4].multiply(3.0)  # same Gram; another Gram
    for method in ("wanda", *CORRECTIONS):
        run = lambda rows: nw.compress_layer(rows, w, method=method, sparsity=0.5, magnitude=0.1, fraction=0.5)
        base, same, other = run(x), run(rotated), run(perturbed)
        chex.assert_trees_all_close(same[0], base[0], atol=2e-4, rtol=2e-3)  # rows x → Qx leave H = xᵀx unchanged
        assert float(jnp.max(jnp.abs(other[0] - base[0]))) > 1e-3, method  # perturbed rows move every row


def test_dense_keeps_the_network_and_bad_options_are_refused(model_and_x):
    model, x = model_and_x
    out = nw.prune_network(model, x, method="dense", sparsity=0.5)
    chex.assert_trees_all_equal(out.model, model)
    for kwargs, match in (({"method": "prune"}, "method"), ({"sparsity": 1.0}, "sparsity"),
                          ({"sparsity": "2-4"}, "N:M"), ({"calibration": "dense"}, "calibration")):
        with pytest.raises(ValueError, match=match):
            nw.prune_network(model, x, **{"method": "magnitude", "sparsity": 0.5, **kwargs})


def test_calibration_samples_are_distinct_rows_of_the_pool_and_stable_in_seeds():
    pool = jnp.arange(30.0).reshape(10, 3)
    samples = nw.calibration_samples(jax.random.key(0), pool, 4, 3)
    assert samples.shape == (3, 4, 3)
    for sample in np.asarray(samples):
        assert len({tuple(r) for r in sample}) == 4
    chex.assert_trees_all_equal(nw.calibration_samples(jax.random.key(0), pool, 4, 5)[:3], samples)
    with pytest.raises(ValueError, match="n must"):
        nw.calibration_samples(jax.random.key(0), pool, 11, 2)
