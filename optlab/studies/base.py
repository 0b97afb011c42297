"""What every study returns: sections of claims, tables and figures, plus the raw grid rows.

A study is a function ``run(config, *, progress) -> StudyResult``. The config is a frozen dataclass whose fields
the CLI may override (``--set k=v``, ``--grid k=v1,v2``, ``--seeds N``, ``--quick``). Studies compute; the report
module writes files. Nothing here touches the disk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Verdict = Literal["confirmed", "refuted", "partly", "inconclusive"]
VERDICTS: tuple[str, ...] = ("confirmed", "refuted", "partly", "inconclusive")


@dataclass(frozen=True)
class Claim:
    """One claim from a lab note, beside what optlab measured.

    ``claimed`` is the note's own wording or number (a hypothesis); ``measured`` is computed by the study from its
    runs and never copied from the note.
    """

    experiment: str
    claim: str
    claimed: str
    measured: str
    verdict: Verdict
    detail: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Table:
    """A small table for report.md: ``headers`` and rows of already-formatted or numeric cells."""

    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    """One experiment of a study: prose, tables, figures (matplotlib Figures keyed by PNG file name), claims."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)


@dataclass
class StudyResult:
    """Everything a study measured. ``rows`` is the flat per-cell table written to results.csv / results.json."""

    name: str
    title: str
    config: dict[str, Any]
    sections: list[Section]
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = True  # False when interrupted: the report says "INCOMPLETE: k of n cells" on its first line
    cells_done: int | None = None  # grid cells that finished (None when the study has no cell count)
    cells_total: int | None = None  # grid cells the full run would have

    @property
    def claims(self) -> list[Claim]:
        return [c for s in self.sections for c in s.claims]


@dataclass(frozen=True)
class Study:
    """A registered study: CLI name, one-line description, config class and the run function."""

    name: str
    description: str
    config_cls: type
    run: Callable[..., StudyResult]

    def make_config(self, *, quick: bool = False, overrides: dict[str, str] | None = None,
                    grid: dict[str, str] | None = None, seeds: int | None = None):
        """Build the config from CLI strings; unknown keys or unparsable values raise ValueError naming them."""
        config = self.config_cls.quick() if quick else self.config_cls()
        changes: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(config)}
        for kind, items in (("--set", overrides or {}), ("--grid", grid or {})):
            for key, raw in items.items():
                if key not in fields:
                    raise ValueError(f"{kind}: unknown key {key!r} for study {self.name!r}; "
                                     f"allowed: {', '.join(sorted(fields))}")
                current = getattr(config, key)
                if kind == "--grid":
                    if not isinstance(current, tuple):
                        raise ValueError(f"--grid: {key!r} is not a grid axis (it holds {current!r}); use --set")
                    changes[key] = tuple(_parse_like(key, v, current[0] if current else 0.0)
                                         for v in raw.split(",") if v != "")
                    if not changes[key]:
                        raise ValueError(f"--grid: {key!r} needs at least one value")
                else:
                    if isinstance(current, tuple):
                        changes[key] = tuple(_parse_like(key, v, current[0] if current else 0.0)
                                             for v in raw.split(","))
                    else:
                        changes[key] = _parse_like(key, raw, current)
        if seeds is not None:
            if "seeds" not in fields:
                raise ValueError(f"--seeds: study {self.name!r} has no seeds setting")
            if seeds < 1:
                raise ValueError(f"--seeds must be >= 1, got {seeds}")
            changes["seeds"] = seeds
        config = dataclasses.replace(config, **changes)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
        return config


def _parse_like(key: str, raw: str, like: Any) -> Any:
    """Parse a CLI string to the type of ``like`` (bool, int, float, str)."""
    try:
        if isinstance(like, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(like, int):
            return int(raw)
        if isinstance(like, float):
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{key}: cannot read {raw!r} as {type(like).__name__}") from None


def verdict_from(holds: bool | None, *, partly: bool = False) -> Verdict:
    """Map a measured test to a verdict: True → confirmed, False → refuted (or partly), None → inconclusive."""
    if holds is None:
        return "inconclusive"
    if holds:
        return "confirmed"
    return "partly" if partly else "refuted"
