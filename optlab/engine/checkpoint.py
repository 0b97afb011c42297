"""Checkpoints of a training run that never lose the last good state.

A checkpoint is one file, ``checkpoint_{step:06d}.eqx``, written atomically (same-folder temp file, ``fsync``,
``os.replace``, folder ``fsync``), so a reader - or a run killed with SIGKILL halfway through a save - only ever
finds the previous complete version or the new one. The file is::

    b"OPTLABCK" | header length (8 bytes, little-endian) | SHA-256 of the header (32 bytes) | header | payload

The header is JSON: format, run id, step, loss at the saved parameters, counters, ``log_every``, the key's impl,
the leaf layout (path, shape, dtype) of each payload part, and the payload's byte count and SHA-256. The payload
is equinox leaf serialisation of, in order, the training state without its optimizer state, the trace rows so
far, and the optimizer state (last, so a run that switches optimizers can stop reading before it). Complex leaves
stay complex. One file instead of the old ``.eqx`` + ``.json`` pair because the pair cannot be replaced in one
atomic step (a kill between the two renames left a payload whose sidecar no longer matched, and the previous good
version was gone); orbax-checkpoint would also do it, but with a new dependency and a folder per checkpoint for
states of a few kilobytes.

A directory of checkpoints belongs to one run: every header carries the run id, and a save refuses a directory that
holds another run's checkpoints unless ``overwrite=True`` (which deletes them); ``.checkpoints.run`` records the id
of the run that wrote last, so a run's later saves need not read every header again. Writers take turns through the
lock file ``.checkpoints.lock`` (an flock: released by the kernel if the holder dies), and each save first deletes
the temp files a killed writer left. :func:`list_checkpoints`, :func:`latest_checkpoint` and :func:`best_checkpoint`
skip damaged files with one :class:`CheckpointWarning` naming them; none of them ever returns a damaged file.

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
import re
import struct
import uuid
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optlab import _atomic

FORMAT_VERSION = 2
MAGIC = b"OPTLABCK"
_PREFIX = struct.Struct("<8sQ32s")  # magic, header length, SHA-256 of the header
_MAX_HEADER = 1 << 28  # a length beyond this is corruption, not a header (guards a huge read)
_NAME = re.compile(r"checkpoint_(\d+)\.eqx")
_PATTERN = "checkpoint_*.eqx"
_LOCK = ".checkpoints.lock"
_OWNER = ".checkpoints.run"  # the id of the run that last wrote here: spares a scan of every header per save
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_REQUIRED = ("format", "run_id", "step", "loss", "log_every", "key_impl", "layout", "nbytes", "sha256")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written: missing, truncated, corrupted, of another structure or format,
    or a directory that holds another run's checkpoints."""


class CheckpointWarning(UserWarning):
    """Damaged checkpoints were skipped while listing a directory."""


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
    # Dynamic loss scaler state (precision.LossScaleState), None without one: a None field adds no leaves, so
    # checkpoints of runs without dynamic scaling keep their layout.
    loss_scale: Any = None


class Checkpoint(NamedTuple):
    """A loaded checkpoint."""

    state: TrainState  # training state at state.step (opt_state None when not loaded)
    trace: dict[str, jax.Array]  # trace rows recorded before state.step
    meta: dict[str, Any]  # the file's header


def checkpoint_path(directory: str | os.PathLike, step: int) -> pathlib.Path:
    """``directory / checkpoint_{step:06d}.eqx``: where a run's checkpoint after ``step`` updates goes."""
    return pathlib.Path(directory) / f"checkpoint_{step:06d}.eqx"


def _eqx_path(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.suffix == ".eqx" else path.with_suffix(".eqx")


def new_run_id() -> str:
    """A fresh run id (random, 12 hex digits): what :func:`optlab.fit` writes its checkpoints under."""
    return uuid.uuid4().hex[:12]


def _check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id must be 1-64 characters of letters, digits, '.', '_' or '-', got {run_id!r}")
    return run_id


def _check_overwrite(overwrite: Any) -> bool:
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    return overwrite


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


def _is_traced(tree: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


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


def _candidates(directory: pathlib.Path) -> list[pathlib.Path]:
    found = [p for p in directory.glob(_PATTERN) if _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def _owners(directory: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """``{run id: its checkpoint files}`` of the readable headers in ``directory`` ("format 1" for old files)."""
    owners: dict[str, list[pathlib.Path]] = {}
    for path in _candidates(directory):
        try:
            owner = read_meta(path)["run_id"]
        except CheckpointError as err:
            if "old two-file format" not in str(err):
                continue  # damaged or vanished: nobody's; listing skips it with a warning
            owner = "format 1"
        owners.setdefault(str(owner), []).append(path)
    return owners


def _foreign_error(directory: pathlib.Path, run_id: str, others: dict[str, list[pathlib.Path]]) -> CheckpointError:
    described = "; ".join(
        f"run {owner}: {', '.join(p.name for p in paths[:3])}{' ...' if len(paths) > 3 else ''}"
        for owner, paths in sorted(others.items())
    )
    return CheckpointError(
        f"checkpoint_dir {directory} holds checkpoints of another run ({described}); this run is {run_id}. "
        "Use another directory, resume from one of them to continue that run, or pass overwrite=True "
        "(fit: overwrite_checkpoints=True) to delete them"
    )


def write_checkpoint(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> pathlib.Path:
    """Stores bytes from :func:`encode_checkpoint` at ``path`` as one atomic unit, as one of the folder's writers.

    Under the folder's lock: deletes temp files left by killed writers, checks that the folder holds no other run's
    checkpoints (with ``overwrite`` deletes them instead; skipped when this run wrote the folder's last checkpoint),
    then writes temp + ``fsync`` + rename. Without a run id
    in ``data`` the checkpoint joins the run that owns the folder (a fresh id if none does).

    Args:
      path: target file; the suffix is forced to ``.eqx``.
      data: bytes from :func:`encode_checkpoint`.
      overwrite: delete another run's checkpoints in the folder instead of refusing.

    Returns:
      The path written.

    Raises:
      CheckpointError: the folder holds another run's checkpoints and ``overwrite`` is False.
    """
    path = _eqx_path(path)
    _check_overwrite(overwrite)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes from encode_checkpoint, got {type(data).__name__}")
    header, payload = _split(bytes(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent
    with _atomic.file_lock(folder / _LOCK):
        # Every writer of this folder holds the lock while its temp file exists, so any temp file seen now is stale.
        for pattern in ("checkpoint_*", _OWNER):
            _atomic.remove_stale_temps(folder, pattern)
        run_id = header["run_id"]
        try:
            last = (folder / _OWNER).read_text().strip()
        except FileNotFoundError:
            last = None
        if run_id is None and last is not None:
            run_id = last
        if run_id is None or run_id != last:  # first save here, or another run wrote last: read every header
            owners = _owners(folder)
            if run_id is None:
                run_id = next(iter(owners)) if len(owners) == 1 and "format 1" not in owners else new_run_id()
            others = {owner: paths for owner, paths in owners.items() if owner != run_id}
            if others and not overwrite:
                raise _foreign_error(folder, run_id, others)
            for stale in (p for paths in others.values() for p in paths):
                stale.unlink(missing_ok=True)
                stale.with_suffix(".json").unlink(missing_ok=True)  # an old-format sidecar
            _atomic.write_text(folder / _OWNER, run_id)
        if header["run_id"] is None:
            header["run_id"] = run_id
            data = _pack(header, payload)
        _atomic.write_bytes(path, bytes(data))
    return path


def save_checkpoint(
    path: str | os.PathLike,
    state: TrainState,
    trace: dict[str, jax.Array] | None = None,
    *,
    loss: Any = None,
    log_every: int = 1,
    run_id: str | None = None,
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes ``state`` and ``trace`` to ``path`` as one atomic file (see the module docstring).

    Args:
      path: target file; the suffix is forced to ``.eqx``.
      state: a concrete :class:`TrainState` (not a tracer).
      trace: trace rows recorded so far (``{name: (rows, ...) array}``).
      loss: the loss at ``state.params`` (used by :func:`best_checkpoint`); None if unknown.
      log_every: steps per trace row, checked on resume.
      run_id: the run this checkpoint belongs to (:func:`new_run_id`); None joins the run that owns the folder.
      overwrite: delete another run's checkpoints in the folder instead of raising.

    Returns:
      The ``.eqx`` path written.

    Raises:
      CheckpointError: the folder holds another run's checkpoints and ``overwrite`` is False.

    Example:
      >>> # save_checkpoint(checkpoint_path("ckpt", 100), state, trace, loss=0.3, run_id=new_run_id())
    """
    _check_overwrite(overwrite)
    data = encode_checkpoint(state, trace, loss=loss, log_every=log_every, run_id=run_id)
    return write_checkpoint(path, data, overwrite=overwrite)


def start_run(
    directory: str | os.PathLike,
    resume_from: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """The run id a run writing into ``directory`` saves under, checked before any work is done.

    A run resumed from a checkpoint continues that checkpoint's run (its id); otherwise it gets a fresh id. Reads
    only; the check is repeated under the lock at every save.

    Args:
      directory: the run's checkpoint directory (missing is fine).
      resume_from: the checkpoint the run resumes from, or None.
      overwrite: allow a directory that holds another run's checkpoints (they are deleted at the first save).

    Returns:
      The run id.

    Raises:
      CheckpointError: ``directory`` holds another run's checkpoints and ``overwrite`` is False, or
        ``resume_from`` cannot be read.
    """
    _check_overwrite(overwrite)
    run_id = new_run_id() if resume_from is None else _check_run_id(read_meta(resume_from)["run_id"])
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"checkpoint_dir {directory} exists and is not a directory")
    if directory.is_dir() and not overwrite:
        others = {owner: paths for owner, paths in _owners(directory).items() if owner != run_id}
        if others:
            raise _foreign_error(directory, run_id, others)
    return run_id


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


def _warn_damaged(directory: pathlib.Path, damaged: list[tuple[pathlib.Path, str]]) -> None:
    if damaged:
        names = "; ".join(f"{path.name} ({reason.split(': ', 1)[-1]})" for path, reason in damaged)
        warnings.warn(f"skipped {len(damaged)} damaged checkpoint(s) in {directory}: {names}", CheckpointWarning,
                      stacklevel=3)


def _intact(path: pathlib.Path, *, verify: bool, damaged: list) -> dict[str, Any] | None:
    try:
        return _read(path, payload=verify)[0]
    except CheckpointError as err:
        if path.exists():  # a file deleted under us (an overwriting run) is gone, not damaged
            damaged.append((path, str(err)))
        return None


def list_checkpoints(directory: str | os.PathLike, *, verify: bool = True) -> list[pathlib.Path]:
    """The intact checkpoints in ``directory``, sorted by step; damaged ones are skipped with a warning.

    Args:
      directory: a checkpoint directory (missing gives ``[]``).
      verify: also check each payload's SHA-256 (reads every file); False checks headers and sizes only.

    Returns:
      Paths of the checkpoints that load (given a like-tree of their structure).

    Example:
      >>> # [read_meta(p)["loss"] for p in list_checkpoints("ckpt")]
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    damaged: list[tuple[pathlib.Path, str]] = []
    found = [p for p in _candidates(directory) if _intact(p, verify=verify, damaged=damaged) is not None]
    _warn_damaged(directory, damaged)
    return found


def latest_checkpoint(directory: str | os.PathLike) -> pathlib.Path:
    """The intact checkpoint of the highest step in ``directory`` (damaged newer ones skipped with a warning).

    Raises:
      CheckpointError: when ``directory`` holds no intact checkpoint.
    """
    directory = pathlib.Path(directory)
    damaged: list[tuple[pathlib.Path, str]] = []
    try:
        for path in reversed(_candidates(directory) if directory.is_dir() else []):
            if _intact(path, verify=True, damaged=damaged) is not None:
                return path
    finally:
        _warn_damaged(directory, damaged)
    raise CheckpointError(f"no checkpoint in {directory} is intact")


def best_checkpoint(directory: str | os.PathLike) -> pathlib.Path:
    """The intact checkpoint in ``directory`` with the lowest recorded loss at its parameters (earliest on ties).

    Damaged checkpoints are skipped with a :class:`CheckpointWarning` naming them; the one returned has been
    checked in full (its SHA-256), so it loads.

    Raises:
      CheckpointError: when no intact checkpoint with a finite recorded loss exists.

    Example:
      >>> # fit(loss, params, optax.sgd(1e-2), steps=2000, resume_from=best_checkpoint("ckpt"))
    """
    directory = pathlib.Path(directory)
    damaged: list[tuple[pathlib.Path, str]] = []
    try:
        ranked = []
        for order, path in enumerate(_candidates(directory) if directory.is_dir() else []):
            meta = _intact(path, verify=False, damaged=damaged)
            if meta is not None and meta["loss"] is not None:
                ranked.append((meta["loss"], order, path))
        for _, _, path in sorted(ranked):  # check the payload only of the ones that would be returned
            if _intact(path, verify=True, damaged=damaged) is not None:
                return path
    finally:
        _warn_damaged(directory, damaged)
    raise CheckpointError(f"no checkpoint in {directory} is intact with a finite recorded loss")


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointWarning",
    "TrainState",
    "align_trace",
    "best_checkpoint",
    "checkpoint_path",
    "encode_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "new_run_id",
    "opt_state_matches",
    "read_meta",
    "resume",
    "save_checkpoint",
    "start_run",
    "verify_checkpoint",
    "write_checkpoint",
]
