"""Atomic checkpoints of a training run: equinox leaf serialisation plus a JSON sidecar.

A checkpoint is two files, ``checkpoint_{step:06d}.eqx`` and ``checkpoint_{step:06d}.json``. The ``.eqx`` file
holds, in order, the training state without the optimizer state, the trace rows recorded so far, and the optimizer
state (last, so a run that switches optimizers can stop reading before it). The sidecar holds the step, the loss at
the saved parameters, the leaf layout (path, shape, dtype) of each part, and the byte count and SHA-256 of the
``.eqx`` file, so a missing, truncated, corrupted or mismatched checkpoint fails with an error naming the file and
the reason. Both files are written to a temporary file in the same directory and moved into place with
``os.replace``; the sidecar is written last, so a checkpoint without one is incomplete and is never listed.

Example:
  >>> # fit(loss, params, optax.adam(1e-3), steps=1000, checkpoint_every=100, checkpoint_dir="ckpt")
  >>> # fit(loss, params, optax.sgd(1e-2), steps=2000, resume_from=best_checkpoint("ckpt"))
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optlab import _atomic

FORMAT_VERSION = 1
_PATTERN = "checkpoint_*.eqx"
_REQUIRED = ("format", "step", "loss", "log_every", "key_impl", "layout", "nbytes", "sha256")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, truncated, corrupted or of another structure."""


class TrainState(NamedTuple):
    """The carry of :func:`optlab.fit`'s scan; everything a bit-identical resume needs."""

    step: jax.Array  # () int32: updates done so far (the next update's index)
    params: Any  # trainable (inexact-array) leaves of the parameters
    opt_state: Any  # the optimizer's state
    key: jax.Array  # () typed PRNG key: the data order is a function of (key, step) only
    best_params: Any  # parameters with the lowest loss seen so far
    best_loss: jax.Array  # () float: lowest finite loss seen (inf before the first)
    best_step: jax.Array  # () int32: step of best_loss (-1 before the first finite loss)
    wait: jax.Array  # () int32: steps since the loss last beat the best by more than min_delta
    stopped_at: jax.Array  # () int32: step at which early stopping froze the run (-1 while running)
    skipped: jax.Array  # () int32: steps skipped for a non-finite loss, gradient or update


class Checkpoint(NamedTuple):
    """A loaded checkpoint."""

    state: TrainState  # training state at state.step (opt_state None when not loaded)
    trace: dict[str, jax.Array]  # trace rows recorded before state.step
    meta: dict[str, Any]  # the JSON sidecar


def checkpoint_path(directory: str | os.PathLike, step: int) -> pathlib.Path:
    """``directory / checkpoint_{step:06d}.eqx``."""
    return pathlib.Path(directory) / f"checkpoint_{step:06d}.eqx"


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_suffix(".json")


def _eqx_path(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.suffix == ".eqx" else path.with_suffix(".eqx")


def leaf_specs(tree: Any) -> list[list[Any]]:
    """``[[path, shape, dtype], ...]`` of a pytree's leaves: the layout a like-tree must match."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [[jax.tree_util.keystr(path), list(np.shape(leaf)), str(jnp.result_type(leaf))] for path, leaf in flat]


def _core(state: TrainState) -> TrainState:
    # The key is stored as its raw data (typed keys are not numpy-serialisable); the impl goes in the sidecar.
    return state._replace(opt_state=None, key=jax.random.key_data(state.key))


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def save_checkpoint(
    path: str | os.PathLike,
    state: TrainState,
    trace: dict[str, jax.Array] | None = None,
    *,
    loss: Any = None,
    log_every: int = 1,
) -> pathlib.Path:
    """Writes ``state`` and ``trace`` to ``path`` (``.eqx``) and its ``.json`` sidecar, atomically.

    Args:
      path: target file; the suffix is forced to ``.eqx``.
      state: a concrete :class:`TrainState` (not a tracer).
      trace: trace rows recorded so far (``{name: (rows, ...) array}``).
      loss: the loss at ``state.params`` (used by :func:`best_checkpoint`); None if unknown.
      log_every: steps per trace row, checked on resume.

    Returns:
      The ``.eqx`` path written.
    """
    path = _eqx_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trace = dict(trace or {})
    core = _core(state)
    buffer = io.BytesIO()
    for part in (core, trace, state.opt_state):
        eqx.tree_serialise_leaves(buffer, part)
    data = buffer.getvalue()
    meta = {
        "format": FORMAT_VERSION,
        "step": int(state.step),
        "loss": None if loss is None else _finite_or_none(loss),
        "best_loss": _finite_or_none(state.best_loss),
        "best_step": int(state.best_step),
        "stopped_at": int(state.stopped_at),
        "skipped": int(state.skipped),
        "log_every": int(log_every),
        "key_impl": str(jax.random.key_impl(state.key)),
        "layout": {
            "state": leaf_specs(core),
            "trace": [[name, list(np.shape(rows)), str(jnp.result_type(rows))] for name, rows in sorted(trace.items())],
            "opt_state": leaf_specs(state.opt_state),
        },
        "nbytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    _atomic.write_bytes(path, data)
    _atomic.write_bytes(_sidecar(path), json.dumps(meta, indent=1).encode())
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a checkpoint's sidecar and file size; raises :class:`CheckpointError` naming the file."""
    path = _eqx_path(path)
    for file in (path, _sidecar(path)):
        if not file.is_file():
            raise CheckpointError(f"checkpoint {file} cannot be loaded: file is missing")
    try:
        meta = json.loads(_sidecar(path).read_text())
        missing = [k for k in _REQUIRED if k not in meta] + [
            f"layout.{k}" for k in ("state", "trace", "opt_state") if k not in meta.get("layout", {})
        ]
        nbytes = int(meta["nbytes"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {_sidecar(path)} cannot be loaded: sidecar is corrupt ({err!r})") from None
    if missing:
        raise CheckpointError(f"checkpoint {_sidecar(path)} cannot be loaded: sidecar lacks {', '.join(missing)}")
    size = path.stat().st_size
    if size < nbytes:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: file is truncated ({size} of {nbytes} bytes)")
    if size > nbytes:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: file has {size - nbytes} unexpected extra bytes")
    return meta


def _check_layout(path: pathlib.Path, part: str, expected: list, like: Any) -> None:
    found = leaf_specs(like)
    if found == expected:
        return
    diff = next(
        ((e, f) for e, f in zip(expected, found) if e != f),
        (f"{len(expected)} leaves", f"{len(found)} leaves"),
    )
    raise CheckpointError(
        f"checkpoint {path} cannot be loaded: structure mismatch in {part}: file has {diff[0]}, "
        f"the like-tree has {diff[1]}"
    )


def opt_state_matches(meta: dict[str, Any], opt_state: Any) -> bool:
    """Whether a checkpoint's stored optimizer state has the layout of ``opt_state`` (same optimizer kind)."""
    return meta["layout"]["opt_state"] == leaf_specs(opt_state)


def _shape_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def load_checkpoint(path: str | os.PathLike, like: TrainState) -> Checkpoint:
    """Loads a checkpoint written by :func:`save_checkpoint` against a like-tree.

    Args:
      path: the ``.eqx`` file (or its name without suffix).
      like: a :class:`TrainState` with the structure, shapes and dtypes to load into (values are ignored, tracers
        are fine). With ``like.opt_state=None`` the stored optimizer state is not read (fresh-optimizer resume).

    Returns:
      A :class:`Checkpoint`.

    Raises:
      CheckpointError: naming the file and the reason (missing, truncated, corrupted, structure mismatch).
    """
    path = _eqx_path(path)
    meta = read_meta(path)
    layout = meta["layout"]
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: file is corrupted (SHA-256 mismatch)")
    core_like = _shape_like(_core(like))
    _check_layout(path, "state (params, key, counters)", layout["state"], core_like)
    if like.opt_state is not None:
        _check_layout(path, "opt_state", layout["opt_state"], like.opt_state)
    trace_like = {name: jax.ShapeDtypeStruct(tuple(shape), dtype) for name, shape, dtype in layout["trace"]}
    buffer = io.BytesIO(data)
    try:
        core = eqx.tree_deserialise_leaves(buffer, core_like)
        trace = eqx.tree_deserialise_leaves(buffer, trace_like)
        opt_state = None if like.opt_state is None else eqx.tree_deserialise_leaves(buffer, _shape_like(like.opt_state))
    except (ValueError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: unreadable data ({err})") from None
    key = jax.random.wrap_key_data(core.key, impl=meta["key_impl"])
    return Checkpoint(core._replace(opt_state=opt_state, key=key), trace, meta)


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


def list_checkpoints(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Complete checkpoints (``.eqx`` with its sidecar) in ``directory``, sorted by step."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(_PATTERN) if _sidecar(p).is_file() and p.stem[len("checkpoint_"):].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[len("checkpoint_"):]))


def best_checkpoint(directory: str | os.PathLike) -> pathlib.Path:
    """The checkpoint in ``directory`` with the lowest recorded loss at its parameters (earliest on ties).

    Raises:
      CheckpointError: when no checkpoint with a finite recorded loss exists.
    """
    best, best_loss = None, math.inf
    for path in list_checkpoints(directory):
        loss = read_meta(path).get("loss")
        if loss is not None and loss < best_loss:
            best, best_loss = path, loss
    if best is None:
        raise CheckpointError(f"no checkpoint with a finite recorded loss in {directory}")
    return best


__all__ = [
    "Checkpoint",
    "align_trace",
    "CheckpointError",
    "TrainState",
    "best_checkpoint",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "opt_state_matches",
    "read_meta",
    "resume",
    "save_checkpoint",
]
