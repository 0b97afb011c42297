"""What every study returns: sections of claims, tables and figures, plus the raw grid rows.

A study is a function ``run(config, *, progress, run_dir) -> StudyResult``. The config is a frozen dataclass whose
fields carry their rules (:mod:`optlab.studies.config`); the CLI may override them (``--config FILE.yaml``,
``--set k=v``, ``--grid k=v1,v2``, ``--seeds N``, ``--quick``). Studies compute; the report
module writes files. Nothing here touches the disk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

Verdict = Literal["confirmed", "refuted", "partly", "inconclusive", "refuted (inconsistent)", "untestable as stated",
                  "inconclusive (incomplete)"]
# The last three are qualified verdicts (DESIGN.md): "refuted (inconsistent)" for a claim whose numbers cannot all
# be true at once, "untestable as stated" for one that cannot be measured as written, and INCOMPLETE for every claim
# of an interrupted run: no verdict is computed from cells that never ran, so the report never shows one.
VERDICTS: tuple[str, ...] = ("confirmed", "refuted", "partly", "inconclusive", "refuted (inconsistent)",
                             "untestable as stated", "inconclusive (incomplete)")
INCOMPLETE: Verdict = "inconclusive (incomplete)"


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

    def as_incomplete(self) -> "Claim":
        """This claim as an interrupted run reports it: verdict INCOMPLETE, measured marked as partial.

        Example: ``Claim("1", "c", "x", "0.5", "confirmed").as_incomplete().verdict == "inconclusive (incomplete)"``
        """
        measured = self.measured if self.verdict == INCOMPLETE else f"(partial run) {self.measured}"
        return dataclasses.replace(self, verdict=INCOMPLETE, measured=measured)


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
        """Every claim as the study computed it, section by section."""
        return [c for s in self.sections for c in s.claims]

    @property
    def reported_claims(self) -> list[Claim]:
        """The claims as reports show them: all "inconclusive (incomplete)" when the run was interrupted."""
        return self.claims if self.complete else [c.as_incomplete() for c in self.claims]

    def incomplete_line(self) -> str | None:
        """``"INCOMPLETE: k of n cells"`` (the first line of an interrupted run's report), None when complete."""
        if self.complete:
            return None
        if self.cells_done is None or self.cells_total is None:
            return "INCOMPLETE: cell count unknown"
        return f"INCOMPLETE: {self.cells_done} of {self.cells_total} cells"


@dataclass(frozen=True)
class Study:
    """A registered study: CLI name, one-line description, config class and the run function.

    ``run(config, *, progress: bool = True, run_dir: Path | None = None) -> StudyResult``; ``run_dir`` is the run
    folder (``runs/<run>/``) when the CLI runs it, so a study may write ``run_dir / "checkpoints"``.
    """

    name: str
    description: str
    config_cls: type
    run: Callable[..., StudyResult]

    def make_config(self, *, quick: bool = False, path: str | Path | None = None,
                    overrides: dict[str, str] | None = None, grid: dict[str, str] | None = None,
                    seeds: int | None = None):
        """Build the config from a YAML file and CLI strings (see :func:`optlab.studies.config.load`)."""
        from optlab.studies import config as _config  # late: config.py is a sibling, keep base importable alone

        return _config.load(self.config_cls, quick=quick, path=path, overrides=overrides, grid=grid, seeds=seeds,
                            study=self.name)

