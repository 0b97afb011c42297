"""How a params pytree splits into groups that share one Newton-root step.

A *group* is a set of leaves that receives one scalar step. Three splits are built in:

* ``"global"``: every leaf in one group (the plain Polyak / Newton-root step).
* ``"per_leaf"``: one group per array.
* ``"per_layer"``: one group per parent path, i.e. leaves whose key paths differ only in the last
  entry (equinox ``layers[0].weight`` and ``layers[0].bias``; ``{"dense1": {"w", "b"}}``), or
  one group per distinct label when ``layer_labels`` is given (a pytree of labels, or a callable
  ``params -> labels``, as :func:`optax.partition` takes).

Membership is decided from the tree structure only (static under ``jit``), so the per-group
squared norms are one fused computation: per-leaf sums of squares stacked into a vector and
reduced with :func:`jax.ops.segment_sum` over static segment ids. This module is the one place
that decides the split; the training engine uses :func:`group_ids` and :func:`group_sq_norms`
for its per-group gradient norms too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

SCALINGS = ("global", "per_leaf", "per_layer")

_ROOT_NAME = "<root>"


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Raises ValueError naming the argument, the bad value and the allowed values."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")


def _path_name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".") or _ROOT_NAME


def _first_seen_ids(keys: Sequence[Any]) -> tuple[tuple[int, ...], list[Any]]:
    # Group order is the order in which a group is first met in flattening order, so ids are
    # deterministic and sorted for path-based splits.
    index: dict[Any, int] = {}
    for key in keys:
        index.setdefault(key, len(index))
    return tuple(index[key] for key in keys), list(index)


def _label_leaves(params: Any, layer_labels: Any) -> list[Any]:
    labels = layer_labels(params) if callable(layer_labels) else layer_labels
    try:
        # Labels may be a prefix of params (one label for a whole sub-tree), like optax.partition.
        broadcast = jax.tree.map(lambda label, sub: jax.tree.map(lambda _: label, sub), labels, params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "layer_labels must be a pytree with the structure of params (or a prefix of it), "
            f"or a callable params -> such a pytree; got {labels!r}"
        ) from err
    leaves = jax.tree.leaves(broadcast)
    if len(leaves) != len(jax.tree.leaves(params)):
        raise ValueError(f"layer_labels gives {len(leaves)} labels for {len(jax.tree.leaves(params))} param leaves")
    return leaves


def group_ids(
    params: Any,
    scaling: str,
    layer_labels: Any | Callable[[Any], Any] | None = None,
) -> tuple[tuple[int, ...], int, tuple[str, ...]]:
    """Splits a pytree's leaves into groups.

    Args:
      params: a pytree of arrays (e.g. ``eqx.filter(model, eqx.is_array)``); only its structure is
        read, so it may hold tracers or ``jax.ShapeDtypeStruct``.
      scaling: ``"global"``, ``"per_leaf"`` or ``"per_layer"``.
      layer_labels: only for ``"per_layer"``: a pytree of hashable labels with the structure of
        ``params`` (or a prefix of it), or a callable ``params -> labels``. Leaves with the same
        label form one group. ``None`` groups by parent path.

    Returns:
      ``(ids, n_groups, names)``: ``ids[i]`` is the group of the ``i``-th leaf of
      ``jax.tree.leaves(params)``; ``names[k]`` names group ``k`` (``"global"``, the leaf path
      ``"layers.0.weight"``, the parent path ``"layers.0"``, or ``str(label)``).

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"dense1": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "dense2": {"w": jnp.ones(2)}}
      >>> group_ids(params, "per_layer")
      ((0, 0, 1), 2, ('dense1', 'dense2'))
    """
    check_choice("scaling", scaling, SCALINGS)
    if layer_labels is not None and scaling != "per_layer":
        raise ValueError(f"layer_labels is only used with scaling='per_layer'; got scaling={scaling!r}")
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if scaling == "global":
        return (0,) * len(paths), 1, ("global",)
    if scaling == "per_leaf":
        return tuple(range(len(paths))), len(paths), tuple(_path_name(path) for path in paths)
    if layer_labels is not None:
        ids, keys = _first_seen_ids(_label_leaves(params, layer_labels))
        return ids, len(keys), tuple(str(key) for key in keys)
    ids, keys = _first_seen_ids([tuple(path[:-1]) for path in paths])
    return ids, len(keys), tuple(_path_name(key) for key in keys)


def norm_dtype(tree: Any) -> jnp.dtype:
    """Dtype of squared norms of ``tree``: at least float32, so half-precision sums do not overflow.

    Only floating and complex leaves count; integer leaves are not trained.
    """
    dtypes = [jnp.promote_types(jnp.result_type(leaf), jnp.float32) for leaf in jax.tree.leaves(tree) if _inexact(leaf)]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.dtype(jnp.float32)
    # Complex gradients have real squared norms.
    return jnp.finfo(dtype).dtype


def _inexact(leaf: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def _sum_of_squares(leaf: jax.Array, dtype: jnp.dtype) -> jax.Array:
    if not _inexact(leaf):
        return jnp.zeros((), dtype)  # integer leaves are not trained: they add nothing to a norm
    leaf = jnp.asarray(leaf)
    if jnp.iscomplexobj(leaf):
        return jnp.sum(jnp.square(leaf.real.astype(dtype))) + jnp.sum(jnp.square(leaf.imag.astype(dtype)))
    return jnp.sum(jnp.square(leaf.astype(dtype)))


def group_sq_norms(tree: Any, ids: Sequence[int], n_groups: int) -> jax.Array:
    """Per-group squared Euclidean norms, one fused reduction.

    .. math::
      n_k = \\sum_{i : \\mathrm{ids}_i = k} \\lVert x_i \\rVert_2^2

    Args:
      tree: pytree of arrays (e.g. gradients).
      ids: static group id per leaf, from :func:`group_ids`.
      n_groups: number of groups.

    Returns:
      Array of shape ``(n_groups,)`` in :func:`norm_dtype` (at least float32).

    Example:
      >>> import jax.numpy as jnp
      >>> g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([1.0])}
      >>> group_sq_norms(g, (0, 1), 2)
      Array([25.,  1.], dtype=float32)
    """
    leaves = jax.tree.leaves(tree)
    if len(leaves) != len(ids):
        raise ValueError(f"ids has {len(ids)} entries for a tree of {len(leaves)} leaves")
    dtype = norm_dtype(tree)
    if not leaves:
        return jnp.zeros((n_groups,), dtype)
    per_leaf = jnp.stack([_sum_of_squares(leaf, dtype) for leaf in leaves])
    if n_groups == 1:
        return jnp.sum(per_leaf, keepdims=True)
    return jax.ops.segment_sum(
        per_leaf,
        jnp.asarray(ids, jnp.int32),
        num_segments=n_groups,
        indices_are_sorted=all(a <= b for a, b in zip(ids, ids[1:])),
    )


def scale_groups(tree: Any, scales: jax.Array, ids: Sequence[int], *, zero: jax.Array | bool = False) -> Any:
    """Multiplies each leaf by its group's scale, keeping leaf dtypes.

    The product is formed in at least float32 and then cast back, so a half-precision leaf times a
    large step is not rounded (or overflowed) twice. Integer leaves get a zero update.

    Args:
      tree: pytree of arrays.
      scales: shape ``(n_groups,)``.
      ids: static group id per leaf, from :func:`group_ids`.
      zero: boolean scalar; where true the result is exactly zero (even for NaN/inf leaves).

    Returns:
      A pytree like ``tree`` with leaf ``i`` equal to ``scales[ids[i]] * leaf_i``.

    Example:
      >>> import jax.numpy as jnp
      >>> scale_groups({"a": jnp.ones(2, jnp.float16), "n": jnp.array([3])}, jnp.array([0.5]), (0, 0))
      {'a': Array([0.5, 0.5], dtype=float16), 'n': Array([0], dtype=int32)}
    """
    leaves, treedef = jax.tree.flatten(tree)

    def scale(leaf: Any, k: int) -> Any:
        if not _inexact(leaf):
            return leaf if jnp.result_type(leaf) == jax.dtypes.float0 else jnp.zeros_like(leaf)
        wide = jnp.promote_types(jnp.result_type(leaf), scales.dtype)
        product = (jnp.asarray(leaf, wide) * scales[k].astype(wide)).astype(jnp.result_type(leaf))
        return jnp.where(zero, jnp.zeros_like(product), product)

    return jax.tree.unflatten(treedef, [scale(leaf, k) for leaf, k in zip(leaves, ids, strict=True)])
