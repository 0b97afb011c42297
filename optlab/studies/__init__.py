"""Studies: one module per lab note. ``STUDIES`` maps the CLI name to its :class:`Study`."""

from __future__ import annotations

import importlib

from optlab.studies.base import Claim, Section, Study, StudyResult, Table

# name -> module path; each module defines ``STUDY: Study``. Imported lazily so `optlab list` stays fast.
_REGISTRY: dict[str, str] = {
    "newton-root": "optlab.studies.newton_root",
    "correction": "optlab.studies.correction",
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Study:
    if name not in _REGISTRY:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(available())}")
    return importlib.import_module(_REGISTRY[name]).STUDY


__all__ = ["Claim", "Section", "Study", "StudyResult", "Table", "available", "get"]
