"""A folder of checkpoints: file names, run ids, locked atomic writers, listing, best / latest.

Each file (format: :mod:`optlab.engine.checkpoint_file`) is written atomically (same-folder temp file, ``fsync``,
``os.replace``, folder ``fsync``), so a reader - or a run killed with SIGKILL halfway through a save - only ever
finds the previous complete version or the new one.

A directory of checkpoints belongs to one run: every header carries the run id, and a save refuses a directory that
holds another run's checkpoints unless ``overwrite=True`` (which deletes them); ``.checkpoints.run`` records the id
of the run that wrote last, so a run's later saves need not read every header again. Writers take turns through the
lock file ``.checkpoints.lock`` (an flock: released by the kernel if the holder dies), and each save first deletes
the temp files a killed writer left. :func:`list_checkpoints`, :func:`latest_checkpoint` and :func:`best_checkpoint`
skip damaged files with one :class:`CheckpointWarning` naming them; none of them ever returns a damaged file.

Example:
  >>> # save_checkpoint(checkpoint_path("ckpt", 100), state, trace, loss=0.3, run_id=new_run_id())
  >>> # [read_meta(p)["loss"] for p in list_checkpoints("ckpt")]
"""

from __future__ import annotations

import os
import pathlib
import re
import uuid
import warnings
from typing import Any

import jax

from optlab import _atomic
from optlab.engine.checkpoint_file import (
    CheckpointError,
    TrainState,
    _check_run_id,
    _eqx_path,
    _pack,
    _read,
    _split,
    encode_checkpoint,
    read_meta,
)

_NAME = re.compile(r"checkpoint_(\d+)\.eqx")
_PATTERN = "checkpoint_*.eqx"
_LOCK = ".checkpoints.lock"
_OWNER = ".checkpoints.run"  # the id of the run that last wrote here: spares a scan of every header per save


class CheckpointWarning(UserWarning):
    """Damaged checkpoints were skipped while listing a directory."""


def checkpoint_path(directory: str | os.PathLike, step: int) -> pathlib.Path:
    """``directory / checkpoint_{step:06d}.eqx``: where a run's checkpoint after ``step`` updates goes."""
    return pathlib.Path(directory) / f"checkpoint_{step:06d}.eqx"


def new_run_id() -> str:
    """A fresh run id (random, 12 hex digits): what :func:`optlab.fit` writes its checkpoints under."""
    return uuid.uuid4().hex[:12]


def _check_overwrite(overwrite: Any) -> bool:
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    return overwrite


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
    "CheckpointWarning",
    "best_checkpoint",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "new_run_id",
    "save_checkpoint",
    "start_run",
    "write_checkpoint",
]
