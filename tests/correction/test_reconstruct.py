"""Reconstructions with a fixed mask: the exact ceiling against NumPy least squares, and the ordering of methods."""

import jax
import numpy as np
import pytest

import optlab
from optlab.correction.pruning import prune
from optlab.correction.reconstruct import (
    admm_update,
    masked_least_squares,
    reconstructions,
    sparsegpt_update,
)


def _layer(seed=0, n=120, d_in=24, d_out=10):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in)) @ rng.normal(size=(d_in, d_in)) * 0.3 + rng.standard_t(4, size=(n, d_in))
    w = rng.normal(size=(d_in, d_out))
    return x, w


def _error(x, w, w_dense):
    return float(np.sum((x @ (np.asarray(w, np.float64) - w_dense)) ** 2) / (x.shape[0] * w_dense.shape[1]))


def test_masked_least_squares_matches_numpy_lstsq_per_column():
    x, w = _layer()
    with jax.enable_x64(True):
        _, mask = prune(w, sparsity=0.5)
        mask = np.asarray(mask)
        got = np.asarray(masked_least_squares(x.T @ x, w, mask, batch_size=4))
    expected = np.zeros_like(w)
    for i in range(w.shape[1]):
        keep = mask[:, i]
        expected[keep, i] = np.linalg.lstsq(x[:, keep], x @ w[:, i], rcond=None)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


def test_ceiling_beats_every_method_and_masks_hold():
    x, w = _layer(1)
    with jax.enable_x64(True):
        w_pruned, mask = prune(w, sparsity=0.5)
        found = reconstructions(x.T @ x, w, mask)
        fixed = optlab.greedy_correction(x, w, w_pruned, magnitude=0.05, fraction=0.5).weights
        optimal = optlab.greedy_correction(x, w, w_pruned, mode="optimal", fraction=1.0).weights
    errors = {name: _error(x, v, w) for name, v in {**found, "pruned": w_pruned, "fixed": fixed,
                                                     "optimal": optimal}.items()}
    ceiling = errors.pop("least_squares")
    assert all(ceiling <= e * (1 + 1e-9) for e in errors.values()), errors
    assert errors["sparsegpt"] < errors["pruned"] and errors["admm"] < errors["pruned"]
    assert errors["admm"] <= ceiling * 1.01  # 20 ADMM iterations get within 1 % of the ceiling
    for name, v in found.items():
        assert np.all(np.asarray(v)[~np.asarray(mask)] == 0), name


def test_sparsegpt_equals_least_squares_when_only_the_first_row_is_pruned():
    # OBS: removing the first visited weight of a column with the full inverse-Hessian update is exact.
    x, w = _layer(2)
    mask = np.ones_like(w, bool)
    mask[0] = False
    with jax.enable_x64(True):
        sgpt = sparsegpt_update(x.T @ x, w, mask, damping=0.0)
        exact = masked_least_squares(x.T @ x, w, mask)
    np.testing.assert_allclose(sgpt, exact, rtol=1e-7, atol=1e-9)


def test_admm_converges_to_the_ceiling():
    x, w = _layer(3)
    _, mask = prune(w, sparsity=0.5)
    with jax.enable_x64(True):
        exact = masked_least_squares(x.T @ x, w, mask)
        admm = admm_update(x.T @ x, w, mask, iterations=400)
    np.testing.assert_allclose(_error(x, admm, w), _error(x, exact, w), rtol=1e-6)


def test_shape_checks():
    x, w = _layer()
    with pytest.raises(ValueError, match="gram"):
        masked_least_squares(np.eye(3), w, np.ones_like(w, bool))
    with pytest.raises(ValueError, match="mask"):
        sparsegpt_update(x.T @ x, w, np.ones((2, 2), bool))
