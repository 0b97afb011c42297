"""The :class:`~optlab.engine.checkpoint.TrainState` a ``fit`` starts from: fresh, partial, or loaded.

``fit`` builds a fresh state (step 0, no best loss yet, ``optimizer.init(params)``); ``fit(start=...)`` takes a
partial one from :func:`start_state` or a stored one from :func:`load_state` and fills its None fields from the
fresh state, after checking that the given trees have the layout of fit's own. A checkpoint's trace also records
the mini-batching it was written with (``"fit/batching"``), so a resume that would silently change the batch order
is refused.

Example:
  >>> partial = start_state(step=100)  # continue at global step 100 from fit's params and a fresh optimizer state
  >>> partial.step, partial.params is None
  (100, True)
"""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.engine import checkpoint as ckpt
from optlab.engine import precision
from optlab.engine.casting import _cast, _resolve_dtype
from optlab.engine.checkpoint import TrainState
from optlab.engine.precision import DynamicLossScale

_BATCHING = "fit/batching"  # stored-trace entry [batch_size (-1: full batch), shuffle]: checked on resume


class StopBlock(NamedTuple):
    """Block early stopping's state (``EarlyStop(every=k > 1)``), in ``TrainState.stop_block``.

    Blocks are the absolute steps ``[j*k, (j+1)*k)``; keeping the running sum in the state makes a run resumed
    mid-block bit-identical to an uninterrupted one.
    """

    loss_sum: jax.Array  # () float: sum of the current block's recorded losses so far (0 at a block start)
    best_mean: jax.Array  # () float: lowest block-mean loss seen (inf before the first finite one)


def _block_every(early_stop: Any) -> int:
    """The early-stopping block length: 1 (per-step test) without early stopping."""
    return 1 if early_stop is None else early_stop.every


def _batching_pair(batch_size: int | None, shuffle: bool) -> tuple[int, int]:
    # how a checkpoint records fit's mini-batching: [batch_size (-1: full batch), shuffle]
    return (-1 if batch_size is None else batch_size, int(shuffle))


def _batching_tag(batch_size: int | None, shuffle: bool) -> dict[str, jax.Array]:
    return {_BATCHING: jnp.asarray(_batching_pair(batch_size, shuffle), jnp.int32)}


def _check_batching(path: Any, stored: dict, batch_size: int | None, shuffle: bool) -> dict:
    """Refuses a resume whose mini-batches differ from the checkpoint's (the batch order would silently change)."""
    tag = stored.pop(_BATCHING, None)
    if tag is None:  # written before fit recorded its batching
        return stored
    stored_size, stored_shuffle = (int(v) for v in np.asarray(tag))
    stored_size = None if stored_size < 0 else stored_size
    if stored_size != batch_size:
        raise ValueError(
            f"resume_from={str(path)!r} was written with batch_size={stored_size}, got batch_size={batch_size}: "
            "the batch order would change; resume with the same batch_size (or start a new run with start=)"
        )
    if bool(stored_shuffle) != shuffle:
        warnings.warn(f"{path}: written with shuffle={bool(stored_shuffle)}, resumed with shuffle={shuffle}: the "
                      "batch order changes from here on", stacklevel=3)
    return stored


def _fresh_state(trainable: Any, opt: optax.GradientTransformation, key: jax.Array, record_dtype: Any,
                 loss_scale: Any = None, early_stop: Any = None) -> TrainState:
    # Only block early stopping carries a StopBlock: every=1 runs keep their leaves (and checkpoint layout).
    block = None if _block_every(early_stop) == 1 else StopBlock(jnp.zeros((), record_dtype),
                                                                 jnp.full((), jnp.inf, record_dtype))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        opt_state=opt.init(trainable),
        key=key,
        best_params=trainable,
        best_loss=jnp.full((), jnp.inf, record_dtype),
        best_step=jnp.full((), -1, jnp.int32),
        wait=jnp.zeros((), jnp.int32),
        stopped_at=jnp.full((), -1, jnp.int32),
        skipped=jnp.zeros((), jnp.int32),
        loss_scale=loss_scale.init() if isinstance(loss_scale, DynamicLossScale) else None,
        stop_block=block,
    )


def _same_layout(name: str, given: Any, expected: Any) -> None:
    given_def, expected_def = jax.tree.structure(given), jax.tree.structure(expected)
    if given_def != expected_def:
        raise ValueError(f"{name} must have the structure of fit's {name.split('.')[-1]}: got {given_def}, "
                         f"expected {expected_def}")
    for g, e in zip(jax.tree.leaves(given), jax.tree.leaves(expected)):
        if jnp.shape(g) != jnp.shape(e):
            raise ValueError(f"{name} has a leaf of shape {jnp.shape(g)} where fit expects {jnp.shape(e)}")


def _fill_start(start: TrainState, fresh: TrainState, opt, dtype, record_dtype, reset_optimizer_state) -> TrainState:
    """``start`` with its None fields taken from ``fresh`` (and a fresh optimizer state from start's params)."""
    params = fresh.params if start.params is None else start.params
    if start.params is not None:
        _same_layout("start.params", params, fresh.params)
        params = _cast(params, dtype)
    opt_state = start.opt_state
    if opt_state is None or reset_optimizer_state:
        opt_state = opt.init(params)
    else:
        _same_layout("start.opt_state", opt_state, fresh.opt_state)
    best_params = params if start.best_params is None else _cast(start.best_params, dtype)
    if start.best_params is not None:
        _same_layout("start.best_params", best_params, fresh.params)
    key = fresh.key if start.key is None else start.key
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)

    def scalar(value, default, dtype_):
        return default if value is None else jnp.asarray(value).astype(dtype_)

    scaler = fresh.loss_scale
    if start.loss_scale is not None:
        if fresh.loss_scale is None:
            raise ValueError("start.loss_scale holds a dynamic loss scaler's state, but this fit has none: pass "
                             "loss_scale=DynamicLossScale(...) or start.loss_scale=None")
        scaler = precision.LossScaleState(*(scalar(v, d, jnp.asarray(d).dtype)
                                            for v, d in zip(start.loss_scale, fresh.loss_scale)))
    block = fresh.stop_block
    if start.stop_block is not None:
        if fresh.stop_block is None:
            raise ValueError("start.stop_block holds block early stopping's state, but this fit has none: pass "
                             "early_stop=EarlyStop(..., every=k > 1) or start.stop_block=None")
        block = StopBlock(*(scalar(v, d, record_dtype) for v, d in zip(start.stop_block, fresh.stop_block)))

    return TrainState(
        step=scalar(start.step, fresh.step, jnp.int32),
        params=params,
        opt_state=opt_state,
        key=key,
        best_params=best_params,
        best_loss=scalar(start.best_loss, fresh.best_loss, record_dtype),
        best_step=scalar(start.best_step, fresh.best_step, jnp.int32),
        wait=scalar(start.wait, fresh.wait, jnp.int32),
        stopped_at=scalar(start.stopped_at, fresh.stopped_at, jnp.int32),
        skipped=scalar(start.skipped, fresh.skipped, jnp.int32),
        loss_scale=scaler,
        stop_block=block,
    )


def start_state(
    params: Any = None,
    opt_state: Any = None,
    *,
    step: Any = None,
    key: jax.Array | None = None,
    best_params: Any = None,
    best_loss: Any = None,
    best_step: Any = None,
    wait: Any = None,
    stopped_at: Any = None,
    skipped: Any = None,
    loss_scale: Any = None,
    stop_block: Any = None,
) -> TrainState:
    """A partial :class:`TrainState` for ``fit(start=...)``: fields left None are filled by ``fit``.

    Filled values: ``params`` from fit's ``params``, ``opt_state`` from ``optimizer.init(params)`` (a moment
    reset), ``key`` from fit's ``key``, ``step`` 0, ``best_params`` the start params, ``best_loss`` inf, ``best_step``
    / ``stopped_at`` -1, ``wait`` / ``skipped`` 0, ``loss_scale`` (a :class:`~optlab.engine.precision.LossScaleState`,
    only with ``fit(loss_scale=DynamicLossScale(...))``) the scaler's initial state, ``stop_block`` (a
    :class:`StopBlock`, only with ``EarlyStop(every > 1)``) an empty block and no best block mean. Every field may
    be a traced array (vmap over cells' states).
    ``params`` are the trainable (inexact-array) leaves, as in a checkpoint's ``state.params``.

    Args:
      params, opt_state, step, key, best_params, best_loss, best_step, wait, stopped_at, skipped, loss_scale,
        stop_block: as in :class:`TrainState`.

    Returns:
      A :class:`TrainState` whose missing fields are None.

    Example:
      >>> s = load_state(best_checkpoint("ckpt"), params, optax.adam(1e-3))       # doctest: +SKIP
      >>> fit(loss, params, optax.sgd(1e-2), steps=500, start=start_state(s.params, step=s.step))  # doctest: +SKIP
    """
    return TrainState(step, params, opt_state, key, best_params, best_loss, best_step, wait, stopped_at, skipped,
                      loss_scale, stop_block)


def load_state(
    path: str | os.PathLike,
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    dtype: Any = "float32",
    reset_optimizer_state: bool = False,
    loss_scale: Any = None,
    early_stop: Any = None,
) -> TrainState:
    """Loads a checkpoint written by ``fit`` into a :class:`TrainState` for ``fit(start=...)``, on the host.

    Args:
      path: the checkpoint (e.g. ``best_checkpoint(folder)``, or one of ``cell_dir(grid_dir, i)``).
      params: the parameters passed to the ``fit`` that wrote it (their structure, shapes and dtypes).
      optimizer: that fit's optimizer (the layout of the stored optimizer state).
      dtype: that fit's ``dtype``.
      reset_optimizer_state: drop the stored optimizer state (``opt_state`` None: ``fit`` re-initialises it).
      loss_scale: that fit's ``loss_scale`` (a :class:`DynamicLossScale` stores its state in the checkpoint).
      early_stop: that fit's ``early_stop`` (``EarlyStop(every > 1)`` stores its block state in the checkpoint).

    Returns:
      The stored :class:`TrainState` (a stacked list of them vmaps: ``jax.tree.map(lambda *x: jnp.stack(x), ...)``).

    Example:
      >>> state = load_state(best_checkpoint("ckpt"), params, optax.adam(1e-3))  # doctest: +SKIP
      >>> fit(loss, params, optax.adam(1e-3), steps=100, start=state._replace(stopped_at=-1, wait=0))  # doctest: +SKIP
    """
    dtype = _resolve_dtype(dtype)
    trainable = _cast(eqx.partition(params, eqx.is_inexact_array)[0], dtype)
    opt = optax.with_extra_args_support(optimizer)
    like = _fresh_state(trainable, opt, jax.random.key(0), jnp.promote_types(dtype, jnp.float32), loss_scale,
                        early_stop)
    with jax.ensure_compile_time_eval():
        loaded = ckpt.load_checkpoint(path, like._replace(opt_state=None) if reset_optimizer_state else like)
    return loaded.state


__all__ = [
    "StopBlock",
    "load_state",
    "start_state",
]
