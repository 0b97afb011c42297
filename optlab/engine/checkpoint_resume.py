"""Continuing a run from one checkpoint file: the stored state, step and trace rows (:func:`resume`), and stored
rows lined up with a resumed run's trace keys (:func:`align_trace`). Exported by :mod:`optlab.engine.checkpoint`.

Example:
  >>> # state, step, rows = resume("ckpt/checkpoint_000400.eqx", fresh, optimizer.init, steps=1000, log_every=10)
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from optlab.engine.checkpoint_file import TrainState, load_checkpoint, opt_state_matches, read_meta


def resume(
    path: str | os.PathLike,
    like: TrainState,
    init_opt_state: Any,
    *,
    steps: int,
    log_every: int,
    reset_optimizer_state: bool = False,
) -> tuple[TrainState, int, dict[str, jax.Array]]:
    """Loads ``path`` to continue a run; the stored optimizer state is kept only when it fits ``like.opt_state``.

    Args:
      path: the checkpoint.
      like: the fresh state of the resuming run (its structure, shapes and dtypes).
      init_opt_state: ``params -> opt_state`` (``optimizer.init``), used when the stored state is not.
      steps: the resuming run's total steps (the checkpoint's step must not exceed it).
      log_every: must equal the stored one (trace rows line up).
      reset_optimizer_state: ignore the stored optimizer state (fresh moments). A stored state of another layout
        (another optimizer) is ignored too, with a warning.

    Returns:
      ``(state, step, trace rows so far)``.
    """
    meta = read_meta(path)
    start = int(meta["step"])
    if start > steps:
        raise ValueError(f"resume_from={str(path)!r} is at step {start}, beyond steps={steps}")
    if int(meta["log_every"]) != log_every:
        raise ValueError(
            f"resume_from={str(path)!r} was written with log_every={meta['log_every']}, got log_every={log_every}"
        )
    keep = not reset_optimizer_state and opt_state_matches(meta, like.opt_state)
    if not reset_optimizer_state and not keep:
        warnings.warn(
            f"{path}: the stored optimizer state does not fit this optimizer; starting from optimizer.init(params)"
            " (pass reset_optimizer_state=True to silence)",
            stacklevel=3,
        )
    loaded = load_checkpoint(path, like if keep else like._replace(opt_state=None))
    state = loaded.state if keep else loaded.state._replace(opt_state=init_opt_state(loaded.state.params))
    return state, start, loaded.trace


def align_trace(stored: dict[str, jax.Array], new: dict[str, jax.Array], n_rows: int) -> dict[str, jax.Array]:
    """Stored trace rows with the keys and row shapes of ``new``: missing or reshaped entries become NaN/False."""
    aligned = {}
    for name, rows in new.items():
        old = stored.get(name)
        if old is not None and old.shape == (n_rows, *rows.shape[1:]):
            aligned[name] = old.astype(rows.dtype)
        else:
            fill = False if rows.dtype == jnp.bool_ else jnp.nan
            aligned[name] = jnp.full((n_rows, *rows.shape[1:]), fill, rows.dtype)
    return aligned


__all__ = ["align_trace", "resume"]
