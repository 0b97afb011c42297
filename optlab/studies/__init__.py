"""Studies: one module per lab note. ``STUDIES`` maps the CLI name to its :class:`Study`.

``get(name)`` also accepts the path of a user's own ``.py`` file that defines ``STUDY`` (see ``examples/``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from optlab.studies.base import Claim, Section, Study, StudyResult, Table

# name -> module path; each module defines ``STUDY: Study``. Imported lazily so `optlab list` stays fast.
_REGISTRY: dict[str, str] = {
    "newton-root": "optlab.studies.newton_root",
    "correction": "optlab.studies.correction",
    "linreg-recipe": "optlab.studies.linreg_recipe",
    "gaussian-divergence": "optlab.studies.gaussian_divergence",
    "ssm-stability": "optlab.studies.ssm_stability",
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def is_file_name(name: str) -> bool:
    """Whether ``name`` names a study file (``path/to/my_study.py``) rather than a registered study."""
    return name.endswith(".py")


def load_file(path: str | Path) -> Study:
    """Import the Python file ``path`` and return its ``STUDY`` (a :class:`Study`).

    Raises ValueError in one line when the file is missing, fails to import (with the file's line) or defines no
    ``STUDY``. Example: ``load_file("examples/my_study.py").run(config)``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"study file {str(path)!r} not found")
    # a stable module name per file, so dataclasses and pickling can find the module in sys.modules
    module_name = "optlab_user_study_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's own code: say where it broke, in one line
        sys.modules.pop(module_name, None)
        frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
        line = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else (frames[-1].lineno if frames else None)
        where = f"{path}:{line}" if line else str(path)
        raise ValueError(f"{where}: importing the study failed: {type(err).__name__}: {err}") from None
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise ValueError(f"{path}: defines no STUDY = optlab.studies.Study(name, description, config_cls, run) "
                         f"(found {type(study).__name__})")
    return study


def get(name: str) -> Study:
    """The registered study ``name``, or the ``STUDY`` of the file ``name`` when it ends with ``.py``."""
    if is_file_name(name):
        return load_file(name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(available())} (or a path/to/study.py)")
    return importlib.import_module(_REGISTRY[name]).STUDY


__all__ = ["Claim", "Section", "Study", "StudyResult", "Table", "available", "get", "load_file"]
