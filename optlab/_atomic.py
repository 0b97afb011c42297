"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A reader never sees a half-written report, table or checkpoint, even if the process dies mid-write (SIGKILL
included): the target is either the old file or the new one. What a killed writer can leave behind is its
temporary file, named ``.<target name>.<random>.tmp``; :func:`remove_stale_temps` deletes those, and
:func:`file_lock` lets writers that share a folder take turns so that one never deletes another's live temp file.

Example:
  >>> # with file_lock(folder / ".lock"):
  >>> #     remove_stale_temps(folder, "checkpoint_*")
  >>> #     write_bytes(folder / "checkpoint_000010.eqx", data)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

try:  # POSIX; the kernel drops an flock when its holder dies, so a killed writer never leaves a folder locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

TEMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    # The rename lives in the folder's entry table; without this a power loss can undo it after we returned.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: same-folder temp file, ``fsync``, ``os.replace``, folder ``fsync``.

    Args:
      path: the target file; its folder is created if missing.
      data: the bytes to write.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Example:
      >>> # write_bytes("runs/a/results.csv", b"x,y\\n1,2\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temps(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Deletes the temp files :func:`write_bytes` left for targets named like ``pattern`` in ``folder``.

    Only safe while no other writer is writing such a target (hold the folder's :func:`file_lock`).

    Args:
      folder: the folder to clean (missing is fine).
      pattern: glob of the target names, e.g. ``"checkpoint_*"``.

    Returns:
      The paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(f".{pattern}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float = 60.0, poll: float = 0.005) -> Iterator[None]:
    """Holds an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    Works between processes and between threads (each call opens its own descriptor). The lock file itself stays:
    deleting it would let two writers lock two different files of the same name.

    Args:
      path: the lock file.
      timeout: seconds to wait for another holder before raising :class:`TimeoutError`.
      poll: seconds between attempts.

    Example:
      >>> # with file_lock("ckpt/.lock"):
      >>> #     ...  # the only writer in ckpt/
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:  # pragma: no cover - Windows
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} has been held by another writer for more than {timeout} s") from None
                time.sleep(poll)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _plain(value: Any) -> Any:
    """Plain Python values: numpy / jax scalars to Python scalars, containers recursively."""
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON as Python writes it: non-finite floats use the ``NaN`` / ``Infinity`` tokens, which ``json.loads``,
    pandas and most JSON5 readers read back as floats (a diverged cell stays a number, never a string)."""
    return write_text(path, json.dumps(_plain(obj), indent=1, default=str) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Rows of dicts to CSV; the header is the union of keys in first-seen order, missing cells left empty."""
    rows = list(rows)
    header: list[str] = []
    for row in rows:
        header.extend(k for k in row if k not in header)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _plain(v) for k, v in row.items()})
    return write_text(path, buffer.getvalue())
