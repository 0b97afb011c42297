"""One checkpoint file: its format, and encoding, reading, verifying and loading it.

A checkpoint is one file, ``checkpoint_{step:06d}.eqx``::

    b"OPTLABCK" | header length (8 bytes, little-endian) | SHA-256 of the header (32 bytes) | header | payload

The header is JSON: format, run id, step, loss at the saved parameters, counters, ``log_every``, the key's impl,
the leaf layout (path, shape, dtype) of each payload part, and the payload's byte count and SHA-256. The payload
is equinox leaf serialisation of, in order, the training state without its optimizer state, the trace rows so
far, and the optimizer state (last, so a run that switches optimizers can stop reading before it). Complex leaves
stay complex. Nothing here touches a folder: where files go, who may write them and how they are listed is
:mod:`optlab.engine.checkpoint_dir`; :mod:`optlab.engine.checkpoint` exports both.

Example:
  >>> # data = encode_checkpoint(state, trace, loss=0.3, run_id=new_run_id())
  >>> # load_checkpoint(best_checkpoint("ckpt"), like=fresh_state).state.params
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
import re
import struct
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optlab.engine._checks import _is_traced

FORMAT_VERSION = 2
MAGIC = b"OPTLABCK"
_PREFIX = struct.Struct("<8sQ32s")  # magic, header length, SHA-256 of the header
_MAX_HEADER = 1 << 28  # a length beyond this is corruption, not a header (guards a huge read)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_REQUIRED = ("format", "run_id", "step", "loss", "log_every", "key_impl", "layout", "nbytes", "sha256")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written: missing, truncated, corrupted, of another structure or format,
    or a directory that holds another run's checkpoints."""


class TrainState(NamedTuple):
    """The carry of :func:`optlab.fit`'s scan; everything a bit-identical resume needs."""

    step: jax.Array  # () int32: updates done so far (the next update's index)
    params: Any  # trainable (inexact-array) leaves of the parameters
    opt_state: Any  # the optimizer's state
    key: jax.Array  # () typed PRNG key: the data order is a function of (key, step) only
    best_params: Any  # parameters with the lowest loss seen so far
    best_loss: jax.Array  # () float: lowest finite loss seen (inf before the first)
    best_step: jax.Array  # () int32: step of best_loss (-1 before the first finite loss)
    wait: jax.Array  # () int32: steps (blocks with EarlyStop(every > 1)) since the last significant improvement
    stopped_at: jax.Array  # () int32: step at which early stopping froze the run (-1 while running)
    skipped: jax.Array  # () int32: steps skipped for a non-finite loss, gradient or update
    # Dynamic loss scaler state (precision.LossScaleState), None without one: a None field adds no leaves, so
    # checkpoints of runs without dynamic scaling keep their layout.
    loss_scale: Any = None
    # Block early stopping (EarlyStop(every=k > 1)): the current block's loss sum and the best block mean
    # (state.StopBlock), None otherwise: like loss_scale, None adds no leaves, so every=1 runs keep their layout.
    stop_block: Any = None


class Checkpoint(NamedTuple):
    """A loaded checkpoint."""

    state: TrainState  # training state at state.step (opt_state None when not loaded)
    trace: dict[str, jax.Array]  # trace rows recorded before state.step
    meta: dict[str, Any]  # the file's header


def _eqx_path(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.suffix == ".eqx" else path.with_suffix(".eqx")


def _check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id must be 1-64 characters of letters, digits, '.', '_' or '-', got {run_id!r}")
    return run_id


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


def _pack(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, indent=1, sort_keys=True).encode()
    return _PREFIX.pack(MAGIC, len(head), hashlib.sha256(head).digest()) + head + payload


def _old_format_error(path: pathlib.Path) -> CheckpointError:
    if path.with_suffix(".json").is_file():
        return CheckpointError(
            f"checkpoint {path} cannot be loaded: it is in the old two-file format (.eqx + .json sidecar, format 1),"
            f" which this version no longer reads; re-create it by running again with checkpoint_dir=")
    return CheckpointError(f"checkpoint {path} cannot be loaded: not an optlab checkpoint (no {MAGIC!r} header)")


def _read(path: pathlib.Path, *, payload: bool) -> tuple[dict[str, Any], bytes | None]:
    """Header (checked against its hash and the file size) and, with ``payload``, the checked payload bytes."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size:
                if prefix and not MAGIC.startswith(prefix[: len(MAGIC)]):
                    raise _old_format_error(path)
                raise CheckpointError(f"checkpoint {path} cannot be loaded: file is truncated ({size} bytes)")
            magic, n_head, head_sha = _PREFIX.unpack(prefix)
            if magic != MAGIC:
                raise _old_format_error(path)
            if n_head > min(_MAX_HEADER, size):
                raise CheckpointError(f"checkpoint {path} cannot be loaded: file is truncated or its header is corrupt")
            head = handle.read(n_head)
            if hashlib.sha256(head).digest() != head_sha:
                raise CheckpointError(f"checkpoint {path} cannot be loaded: header is corrupted (SHA-256 mismatch)")
            data = handle.read() if payload else None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: file is missing") from None
    try:
        meta = json.loads(head)
        missing = [k for k in _REQUIRED if k not in meta] + [
            f"layout.{k}" for k in ("state", "trace", "opt_state") if k not in meta.get("layout", {})
        ]
        nbytes = int(meta["nbytes"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: header is corrupt ({err!r})") from None
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: header lacks {', '.join(missing)}")
    if meta["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded: format {meta['format']}, this version reads {FORMAT_VERSION}")
    expected = _PREFIX.size + n_head + nbytes
    if size < expected:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: file is truncated ({size} of {expected} bytes)")
    if size > expected:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: file has {size - expected} unexpected extra bytes")
    if data is not None and hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: file is corrupted (SHA-256 mismatch)")
    return meta, data


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's header, after checking its hash and the file size (not the payload's hash: see
    :func:`load_checkpoint` / :func:`verify_checkpoint`).

    Raises:
      CheckpointError: naming the file and the reason (missing, truncated, corrupted, old format).
    """
    return _read(_eqx_path(path), payload=False)[0]


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Like :func:`read_meta`, and also checks the payload's SHA-256: the file loads if its structure fits."""
    return _read(_eqx_path(path), payload=True)[0]


def encode_checkpoint(
    state: TrainState,
    trace: dict[str, jax.Array] | None = None,
    *,
    loss: Any = None,
    log_every: int = 1,
    run_id: str | None = None,
) -> bytes:
    """The bytes of a checkpoint file (host side; no file is touched). :func:`write_checkpoint` stores them.

    Args: as :func:`save_checkpoint`.

    Returns:
      The file's bytes (header with ``run_id`` None is filled in by :func:`write_checkpoint`).
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    if _is_traced((state, trace, loss)):
        raise ValueError("state must be concrete to be saved, not traced (save outside jax.jit / jax.vmap)")
    if run_id is not None:
        _check_run_id(run_id)
    trace = dict(trace or {})
    core = _core(state)
    buffer = io.BytesIO()
    for part in (core, trace, state.opt_state):
        eqx.tree_serialise_leaves(buffer, part)
    payload = buffer.getvalue()
    header = {
        "format": FORMAT_VERSION,
        "run_id": run_id,
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
        "nbytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return _pack(header, payload)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    magic, n_head, _ = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("data must be bytes from encode_checkpoint")
    return json.loads(data[_PREFIX.size:_PREFIX.size + n_head]), data[_PREFIX.size + n_head:]


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
      CheckpointError: naming the file and the reason (missing, truncated, corrupted, old format, structure
        mismatch).

    Example:
      >>> # load_checkpoint(best_checkpoint("ckpt"), like=fresh_state).state.params
    """
    path = _eqx_path(path)
    meta, data = _read(path, payload=True)
    layout = meta["layout"]
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


class Leaves(NamedTuple):
    """A checkpoint read without a like-tree, as flat leaves in the order of its header's layout."""

    meta: dict[str, Any]  # the file's header
    state: list[np.ndarray]  # the leaves of the state without its optimizer state (the key as raw key data)
    trace: dict[str, np.ndarray]  # trace rows recorded before meta["step"], by name
    opt_state: list[np.ndarray]  # the leaves of the optimizer state


def read_leaves(path: str | os.PathLike) -> Leaves:
    """Loads a checkpoint as the flat leaves its header describes, without knowing the run's pytree structure.

    ``run_grid(resume=True)`` stacks the cells' leaves on the host and hands them to each cell's ``fit``, which
    knows the structure (it unflattens them into its own state, checking shapes and dtypes while it traces).

    Args:
      path: the ``.eqx`` file (or its name without suffix).

    Returns:
      :class:`Leaves` (host NumPy arrays).

    Raises:
      CheckpointError: naming the file and the reason (missing, truncated, corrupted, old format).

    Example:
      >>> # leaves = read_leaves("ckpt/cell_000003/checkpoint_000100.eqx"); leaves.meta["step"]
    """
    path = _eqx_path(path)
    meta, data = _read(path, payload=True)

    def specs(layout):
        return [jax.ShapeDtypeStruct(tuple(shape), dtype) for _, shape, dtype in layout]

    layout = meta["layout"]
    buffer = io.BytesIO(data)
    try:
        state = eqx.tree_deserialise_leaves(buffer, specs(layout["state"]))
        names = [name for name, _, _ in layout["trace"]]
        trace = dict(zip(names, eqx.tree_deserialise_leaves(buffer, specs(layout["trace"]))))
        opt_state = eqx.tree_deserialise_leaves(buffer, specs(layout["opt_state"]))
    except (ValueError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: unreadable data ({err})") from None
    as_host = lambda leaves: [np.asarray(leaf) for leaf in leaves]  # noqa: E731
    return Leaves(meta, as_host(state), {k: np.asarray(v) for k, v in trace.items()}, as_host(opt_state))


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Leaves",
    "TrainState",
    "encode_checkpoint",
    "leaf_specs",
    "load_checkpoint",
    "opt_state_matches",
    "read_leaves",
    "read_meta",
    "verify_checkpoint",
]
