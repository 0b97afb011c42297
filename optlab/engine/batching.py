"""Mini-batches for :func:`optlab.fit`: fixed order or one permutation per epoch, a function of ``(key, step)`` only.

An epoch is ``per_epoch = n // batch_size`` steps (the last partial batch is dropped). Step ``t`` uses batch
``t % per_epoch`` of epoch ``e = t // per_epoch``:

.. math::
  B_t = \\mathrm{data}[\\pi_e[s : s + b]], \\quad s = (t \\bmod \\mathrm{per\\_epoch}) \\, b, \\quad
  \\pi_e = \\mathrm{permutation}(\\mathrm{fold\\_in}(\\mathrm{key}, e), n)

when shuffling, and :math:`\\pi_e = 0, \\dots, n - 1` otherwise. Since :math:`B_t` depends on ``(key, t)`` only,
chunked and resumed runs see the same batches as an uninterrupted one.

Drawing :math:`\\pi_e` (a sort of ``n`` random keys) costs far more than a step on small models, so the training
scan draws it once per epoch: it carries an :class:`Order` and :func:`next_batch` redraws it under ``lax.cond``
only when the step enters a new epoch. The step counter is the same for every cell of a ``jax.vmap``-ed grid (it
is never batched), so the ``cond`` predicate is unbatched and vmap keeps it a real branch; a batched predicate
would turn it into a select that draws a permutation every step.

Example:
  >>> data = jnp.arange(10.0)
  >>> order = init_order(data, 0, jax.random.key(0), batch_size=3, shuffle=True)
  >>> batch, order = next_batch(data, 0, jax.random.key(0), order, batch_size=3, shuffle=True)
  >>> bool(jnp.all(batch == batch_at(data, 0, jax.random.key(0), 3, True)))
  True
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class Order(NamedTuple):
    """The example order of the current epoch, carried through the training scan."""

    epoch: jax.Array  # () int32: the epoch that ``index`` belongs to
    index: jax.Array  # (n,) int32: ``permutation(fold_in(key, epoch), n)``


def n_examples(data: Any) -> int:
    """The shared leading (example) axis length of the ``data`` leaves; ValueError when they disagree."""
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(data)}
    if not sizes or None in sizes or len(sizes) != 1:
        raise ValueError(f"data leaves must share one leading (example) axis to draw batches; leading sizes {sizes}")
    return sizes.pop()


def epoch_permutation(key: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """:math:`\\pi_e`, the example order of epoch ``epoch`` when shuffling."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def _slice(data: Any, step: jax.Array, index: jax.Array | None, batch_size: int, per_epoch: int) -> Any:
    start = (step % per_epoch) * batch_size
    if index is None:
        return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, batch_size), data)
    rows = lax.dynamic_slice_in_dim(index, start, batch_size)
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), data)


def batch_at(data: Any, step: jax.Array, key: jax.Array, batch_size: int | None, shuffle: bool) -> Any:
    """:math:`B_t`, drawing the epoch's permutation afresh (use :func:`next_batch` inside a loop over steps).

    ``data`` itself when ``data`` or ``batch_size`` is None (full batch).
    """
    if data is None or batch_size is None:
        return data
    n = n_examples(data)
    per_epoch = n // batch_size
    index = epoch_permutation(key, step // per_epoch, n) if shuffle else None
    return _slice(data, step, index, batch_size, per_epoch)


def init_order(data: Any, step: jax.Array, key: jax.Array, batch_size: int | None, shuffle: bool) -> Order | None:
    """The :class:`Order` of the epoch containing ``step``; None when batches are not shuffled mini-batches."""
    if data is None or batch_size is None or not shuffle:
        return None
    n = n_examples(data)
    epoch = jnp.asarray(step, jnp.int32) // (n // batch_size)
    return Order(epoch, epoch_permutation(key, epoch, n))


def next_batch(
    data: Any, step: jax.Array, key: jax.Array, order: Order | None, batch_size: int | None, shuffle: bool
) -> tuple[Any, Order | None]:
    """``(B_step, order)``: the batch of ``step`` and the order, redrawn only when ``step`` is in another epoch.

    Equal to ``batch_at(data, step, key, ...)`` for any ``order`` from :func:`init_order` or a previous call.
    """
    if order is None:
        return batch_at(data, step, key, batch_size, shuffle), None
    n = n_examples(data)
    per_epoch = n // batch_size
    epoch = jnp.asarray(step, order.epoch.dtype) // per_epoch
    index = lax.cond(
        epoch == order.epoch,
        lambda: order.index,
        lambda: epoch_permutation(key, epoch, n).astype(order.index.dtype),
    )
    return _slice(data, step, index, batch_size, per_epoch), Order(epoch, index)
