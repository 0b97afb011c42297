"""Pruning masks: exact counts, deterministic ties, the Wanda score, and argument checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from optlab.correction.pruning import lowest_mask, magnitude_mask, nm_mask, prune, wanda_mask


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_per_output_magnitude_mask_prunes_exactly_and_the_smallest(sparsity):
    w = np.random.default_rng(0).normal(size=(20, 6))
    mask = np.asarray(magnitude_mask(w, sparsity))
    n_pruned = round(sparsity * 20)
    np.testing.assert_array_equal((~mask).sum(axis=0), n_pruned)
    for i in range(6):  # every pruned |w| is <= every kept |w| of its column
        if 0 < n_pruned < 20:
            assert np.abs(w[~mask[:, i], i]).max() <= np.abs(w[mask[:, i], i]).min()


def test_global_mask_prunes_exactly_over_the_matrix():
    w = np.random.default_rng(1).normal(size=(10, 7))
    mask = np.asarray(magnitude_mask(w, 0.4, scope="global"))
    assert (~mask).sum() == round(0.4 * 70)
    assert np.abs(w[~mask]).max() <= np.abs(w[mask]).min()


def test_ties_prune_the_lowest_index_first():
    mask = np.asarray(lowest_mask(jnp.ones((6, 2)), 0.5))
    np.testing.assert_array_equal(mask[:, 0], [False, False, False, True, True, True])
    flat = np.asarray(lowest_mask(jnp.ones((2, 3)), 0.5, scope="global"))
    np.testing.assert_array_equal(flat.ravel(), [False, False, False, True, True, True])


def test_wanda_scores_weights_by_input_feature_norms():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(8, 3))
    x = rng.normal(size=(30, 8)) * np.array([10, 1, 1, 1, 1, 1, 1, 0.01])
    mask = np.asarray(wanda_mask(w, x, 0.5))
    score = np.abs(w) * np.linalg.norm(x, axis=0)[:, None]
    expected = np.zeros_like(mask)
    for i in range(3):
        expected[np.argsort(score[:, i], kind="stable")[4:], i] = True
    np.testing.assert_array_equal(mask, expected)


def test_prune_zeroes_exactly_the_masked_weights():
    rng = np.random.default_rng(3)
    w, x = rng.normal(size=(8, 4)), rng.normal(size=(16, 8))
    for method in ("magnitude", "magnitude_global", "wanda"):
        w_pruned, mask = prune(w, x, sparsity=0.5, method=method)
        np.testing.assert_array_equal(np.asarray(w_pruned) == 0, ~np.asarray(mask))
        assert (~np.asarray(mask)).sum() == 16


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"), (dict(method="random"), "method"),
    (dict(method="wanda", x=None), "needs the calibration inputs"),
])
def test_bad_arguments_raise(kwargs, message):
    w = np.ones((4, 4))
    args = {"x": np.ones((3, 4)), **kwargs}
    with pytest.raises(ValueError, match=message):
        prune(w, args.pop("x"), **args)


def test_bad_scope_and_shapes_raise():
    with pytest.raises(ValueError, match="scope"):
        magnitude_mask(np.ones((4, 4)), 0.5, scope="rows")
    with pytest.raises(ValueError, match="x must have shape"):
        wanda_mask(np.ones((4, 4)), np.ones((3, 5)), 0.5)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "0:2", "3:3"])
@pytest.mark.parametrize("wanda", [False, True])
def test_nm_mask_keeps_exactly_n_of_every_group_and_the_largest(pattern, wanda):
    keep, group = (int(p) for p in pattern.split(":"))
    rng = np.random.default_rng(3)
    w = rng.normal(size=(24, 5))
    x = rng.normal(size=(16, 24)) * rng.uniform(0.1, 10, size=24) if wanda else None
    mask = np.asarray(nm_mask(w, pattern, x=x))
    grouped = mask.reshape(24 // group, group, 5)
    np.testing.assert_array_equal(grouped.sum(axis=1), keep)  # every group of every output keeps exactly N
    score = np.abs(w) * (np.linalg.norm(x, axis=0)[:, None] if wanda else 1.0)
    score = score.reshape(24 // group, group, 5)
    if 0 < keep < group:  # within a group every pruned score is <= every kept one
        pruned_max = np.where(~grouped, score, -np.inf).max(axis=1)
        kept_min = np.where(grouped, score, np.inf).min(axis=1)
        assert np.all(pruned_max <= kept_min)


def test_nm_ties_prune_the_lowest_index_and_prune_accepts_patterns():
    mask = np.asarray(nm_mask(jnp.ones((8, 1)), "2:4"))
    np.testing.assert_array_equal(mask[:, 0], [False, False, True, True] * 2)
    w = np.random.default_rng(4).normal(size=(16, 3))
    w_pruned, mask = prune(w, sparsity="4:8")
    assert float(np.mean(~np.asarray(mask))) == 0.5
    np.testing.assert_array_equal(np.asarray(w_pruned) != 0, np.asarray(mask))


@pytest.mark.parametrize("pattern, match", [("2-4", "N:M"), ("5:4", "N <= M"), (2, "N:M")])
def test_bad_patterns_are_refused(pattern, match):
    with pytest.raises(ValueError, match=match):
        nm_mask(np.ones((8, 2)), pattern)


def test_nm_needs_d_in_divisible_by_m_and_a_per_output_method():
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(np.ones((6, 2)), "2:4")
    with pytest.raises(ValueError, match="per group"):
        prune(np.ones((8, 2)), sparsity="2:4", method="magnitude_global")
