"""What :func:`optlab.engine.loop.fit` takes for early stopping and what it returns (re-exported by
:mod:`optlab.engine.loop`, :mod:`optlab.engine` and :mod:`optlab`).

Example:
  >>> EarlyStop(patience=200).every
  1
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from optlab.engine.checkpoint import TrainState


class EarlyStop(NamedTuple):
    """Early stopping inside ``jit``: freeze after ``patience`` steps without a loss drop larger than ``min_delta``.

    A step improves when its loss is below ``best_loss - min_delta``; a non-finite loss never improves. Losses are
    those ``fit`` records (per-batch with mini-batches). With ``every=k > 1`` the test runs once per block of ``k``
    steps on the block's mean loss and ``patience`` counts blocks: ``every`` = steps per epoch is epoch-level early
    stopping on the epoch-mean loss (noisy per-batch losses no longer set the best). See :mod:`optlab.engine.loop`.

    Example:
      >>> # fit(loss, params, optax.adam(1e-3), steps=10_000, early_stop=EarlyStop(patience=200, min_delta=1e-6))
      >>> # per epoch of 50 batches, patience 10 epochs:
      >>> # fit(..., batch_size=32, early_stop=EarlyStop(patience=10, min_delta=1e-6, every=50))
    """

    patience: Any  # int >= 1 (may be traced): steps (blocks) without a significant improvement before freezing
    min_delta: Any = 0.0  # >= 0 (may be traced): a loss below best - min_delta counts as an improvement
    every: int = 1  # static int >= 1: steps per block of the test (1: every step, the block-free program)


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    params: Any  # parameters after the last applied update
    best_params: Any  # parameters whose (pre-update) loss was the lowest seen
    trace: dict[str, jax.Array]  # name -> rows, leading length steps // log_every
    best_step: jax.Array  # () int32: step of best_loss, -1 when no loss was finite
    best_loss: jax.Array  # () float: lowest finite loss (inf when none)
    stopped_at: jax.Array  # () int32: step where early stopping froze the run, `steps` when it never stopped
    skipped_steps: jax.Array  # () int32: steps skipped for a non-finite loss, gradient or update
    opt_state: Any  # optimizer state after the last step
    state: TrainState | None = None  # the final training state: fit(start=state) continues it bit-identically


__all__ = ["EarlyStop", "FitResult"]
