"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A reader never sees a half-written report, table or checkpoint, even if the process dies mid-write.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (same-folder temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
