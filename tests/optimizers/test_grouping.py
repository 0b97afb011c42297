"""Specification of how a params pytree splits into Newton-root groups."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.optimizers.grouping import group_ids, group_sq_norms, norm_dtype, scale_groups


def nested_dict():
    return {
        "dense1": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
        "dense2": {"w": jnp.ones((2, 1)), "b": jnp.ones(1)},
    }


def mlp_params():
    # Shapes via eval_shape (an eager equinox init compiles many small ops), filled with ones.
    shapes = eqx.filter_eval_shape(eqx.nn.MLP, 3, 2, 4, 2, key=jax.random.key(0))
    model = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, shapes)
    return eqx.filter(model, eqx.is_array)


def test_global_is_one_group():
    ids, n, names = group_ids(nested_dict(), "global")
    assert ids == (0, 0, 0, 0) and n == 1 and names == ("global",)


def test_per_leaf_is_one_group_per_array_named_by_path():
    ids, n, names = group_ids(nested_dict(), "per_leaf")
    assert ids == (0, 1, 2, 3) and n == 4
    # Dict keys flatten sorted: b before w.
    assert names == ("dense1.b", "dense1.w", "dense2.b", "dense2.w")


def test_per_layer_groups_nested_dict_by_parent_path():
    ids, n, names = group_ids(nested_dict(), "per_layer")
    assert ids == (0, 0, 1, 1) and n == 2 and names == ("dense1", "dense2")


def test_per_layer_groups_equinox_mlp_weight_and_bias_of_each_linear():
    params = mlp_params()
    ids, n, names = group_ids(params, "per_layer")
    assert n == 3 and names == ("layers.0", "layers.1", "layers.2")
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, _), k in zip(leaves, ids, strict=True):
        assert path[1].idx == k  # layers[k].weight and layers[k].bias share group k


def test_flat_leaves_at_the_root_are_one_layer():
    assert group_ids({"w": jnp.ones(2), "b": jnp.ones(1)}, "per_layer") == ((0, 0), 1, ("<root>",))
    assert group_ids(jnp.ones(3), "per_leaf") == ((0,), 1, ("<root>",))


def test_layer_labels_pytree_prefix_and_callable_agree():
    params = nested_dict()
    full = {"dense1": {"w": "a", "b": "a"}, "dense2": {"w": "b", "b": "a"}}
    by_tree = group_ids(params, "per_layer", full)
    by_fn = group_ids(params, "per_layer", lambda p: full)
    assert by_tree == by_fn == ((0, 0, 0, 1), 2, ("a", "b"))
    # A label per sub-tree (prefix of params), as optax.partition accepts.
    prefix = group_ids(params, "per_layer", {"dense1": "x", "dense2": "y"})
    assert prefix == ((0, 0, 1, 1), 2, ("x", "y"))


def test_layer_labels_must_match_params():
    with pytest.raises(ValueError, match="layer_labels"):
        group_ids(nested_dict(), "per_layer", {"dense1": "x"})
    with pytest.raises(ValueError, match="layer_labels is only used with scaling='per_layer'"):
        group_ids(nested_dict(), "per_leaf", {"dense1": "x", "dense2": "y"})


def test_bad_scaling_lists_allowed_values():
    with pytest.raises(ValueError, match=r"scaling='layer'.*'global', 'per_leaf', 'per_layer'"):
        group_ids(nested_dict(), "layer")


def test_group_sq_norms_match_numpy():
    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(3, 4)), "b": {"c": rng.normal(size=5), "d": rng.normal(size=())}}
    tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    ids = (1, 0, 1)  # leaves a, b.c, b.d; unsorted ids on purpose
    got = group_sq_norms(tree, ids, 2)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    want = [np.sum(leaves[1] ** 2), np.sum(leaves[0] ** 2) + np.sum(leaves[2] ** 2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_group_sq_norms_jit_and_vmap_equal_per_element():
    params = mlp_params()
    ids, n, _ = group_ids(params, "per_layer")
    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x, -3 * x]), params)
    batched = jax.jit(jax.vmap(lambda t: group_sq_norms(t, ids, n)))(batch)
    chex.assert_shape(batched, (3, n))
    for i, factor in enumerate([1.0, 4.0, 9.0]):
        np.testing.assert_allclose(batched[i], factor * group_sq_norms(params, ids, n), rtol=1e-5)


def test_half_precision_norms_are_summed_in_float32():
    # 4096 entries of 8 in float16: the squared norm 262144 overflows float16 (max 65504).
    tree = {"w": jnp.full((4096,), 8.0, jnp.float16)}
    assert norm_dtype(tree) == jnp.float32
    np.testing.assert_allclose(group_sq_norms(tree, (0,), 1), [4096 * 64.0])


def test_scale_groups_keeps_dtype_and_zeroes_non_finite():
    tree = {"a": jnp.array([1.0, jnp.nan], jnp.bfloat16), "b": jnp.array([2.0])}
    out = scale_groups(tree, jnp.array([2.0, 3.0]), (0, 1))
    assert out["a"].dtype == jnp.bfloat16
    np.testing.assert_allclose(out["b"], [6.0])
    zeroed = scale_groups(tree, jnp.array([2.0, 3.0]), (0, 1), zero=jnp.array(True))
    chex.assert_trees_all_equal(zeroed, jax.tree.map(jnp.zeros_like, tree))
