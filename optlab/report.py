"""Write a study's result to disk: report.md (claims, tables, figures), results.csv, results.json, PNGs.

Every file is written atomically. The markdown puts each lab-note claim beside the measured number and a verdict,
once, in one summary table (sections add prose, details, tables and figures, never a second copy of a row);
claimed numbers come from the study's ``Claim.claimed`` (the note's words) and are never used as results. An
interrupted run (``StudyResult.complete`` False) gets "INCOMPLETE: k of n cells" as the report's first line and
every claim as "inconclusive (incomplete)", in report.md, results.json and the terminal summary alike.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import math
from pathlib import Path
from typing import Any, Sequence

from optlab import _atomic, plot
from optlab.engine.interrupt import deferred_interrupts
from optlab.studies.base import INCOMPLETE, Claim, StudyResult

_MARK = {
    "confirmed": "✅ confirmed",
    "refuted": "❌ refuted",
    "partly": "◐ partly",
    "inconclusive": "? inconclusive",
    "refuted (inconsistent)": "❌ refuted (inconsistent)",
    "untestable as stated": "⊘ untestable as stated",
    "inconclusive (incomplete)": "⏸ inconclusive (incomplete)",
}


def _cell(value: Any) -> str:
    """One table cell as text: 4 significant digits, sequences joined, pipes escaped, one line."""
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1):
        # a config tuple or a small array: its values, not a Python / NumPy repr with brackets and line breaks
        return ", ".join(_cell(v) for v in (value.tolist() if hasattr(value, "tolist") else value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return "0" if value == 0 else f"{value:.4g}"  # no "-0"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats to 4 significant digits, pipes escaped.

    Example: ``markdown_table(["a", "b"], [[1, 0.123456]])`` gives ``| a | b |``, ``|---|---|``, ``| 1 | 0.1235 |``.
    """
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells, headers have {len(headers)}: {row!r}")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def claims_table(claims: Sequence[Claim]) -> str:
    """The claim / claimed / measured / verdict table, one row per claim."""
    return markdown_table(["experiment", "claim", "claimed (note)", "measured (optlab)", "verdict"],
                          [[c.experiment, c.claim, c.claimed, c.measured, _MARK[c.verdict]] for c in claims])


def _incomplete_notice(result: StudyResult) -> str | None:
    line = result.incomplete_line()
    if line is None:
        return None
    counted = result.cells_done is not None and result.cells_total is not None
    return (f"{line}{' finished' if counted else ''}. The run was interrupted, so no verdict is computed: every "
            f'claim is "{INCOMPLETE}" and measured numbers come from the finished cells only.')


def verdict_summary(result: StudyResult) -> str:
    """Plain-text verdict table for the terminal: one line per claim (after the INCOMPLETE line when interrupted).

    Example: ``print(verdict_summary(result))``.
    """
    claims = result.reported_claims
    lines = [] if result.complete else [_incomplete_notice(result)]
    if not claims:
        return "\n".join(lines + ["(no claims)"])
    width = min(max(len(c.claim) for c in claims), 70)
    verdict_width = max(12, max(len(c.verdict) for c in claims))
    for c in claims:
        claim = c.claim if len(c.claim) <= width else c.claim[: width - 1] + "…"
        lines.append(f"{c.verdict:<{verdict_width}} {claim:<{width}}  measured: {c.measured}")
    return "\n".join(lines)


def render_markdown(result: StudyResult, *, command: str | None = None, figure_names: Sequence[str] = ()) -> str:
    """report.md: the INCOMPLETE line (if interrupted), one claims table, then per-section prose, details, figures.

    Each claim row appears once, in the summary table; a section repeats only what the table has no room for
    (the claim's detail), so a reader never compares two copies of one verdict.

    Example: ``render_markdown(result).splitlines()[0]`` is ``"INCOMPLETE: 42 of 54 cells finished: ..."`` for an
    interrupted run and ``"# <title>"`` otherwise.
    """
    claims = result.reported_claims
    counts = {v: sum(c.verdict == v for c in claims) for v in _MARK}
    notice = _incomplete_notice(result)
    out = [notice, ""] if notice else []
    out += [f"# {result.title}", ""]
    out.append(f"Study `{result.name}`, run {_dt.datetime.now().isoformat(timespec='seconds')}, "
               f"{result.seconds:.1f} s." + (f" Command: `{command}`." if command else ""))
    out.append("")
    out.append("Claimed numbers are the lab note's hypotheses; measured numbers come from this run only.")
    out.append("")
    out.append("## Verdicts")
    out.append("")
    out.append(", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no claims")
    out.append("")
    if claims:
        out.append(claims_table(claims))
        out.append("")
    for section in result.sections:
        out.append(f"## {section.title}")
        out.append("")
        if section.text:
            out.append(section.text.strip())
            out.append("")
        shown = [c.as_incomplete() for c in section.claims] if not result.complete else section.claims
        details = [f"- *{c.claim}* ({_MARK[c.verdict]}): {_cell(c.detail)}" for c in shown if c.detail]
        if details:
            out.append("Claim details (the verdicts are in the table above):")
            out.append("")
            out.extend(details)
            out.append("")
        for table in section.tables:
            out.append(f"**{table.title}**")
            out.append("")
            out.append(markdown_table(table.headers, table.rows))
            out.append("")
        for name in section.figures:
            out.append(f"![{name}]({name})")
            out.append("")
    out.append("## Configuration")
    out.append("")
    out.append(markdown_table(["key", "value"], [[k, v] for k, v in result.config.items()]))
    out.append("")
    return "\n".join(out)


def write_report(result: StudyResult, out_dir: str | Path, *, command: str | None = None) -> dict[str, Path]:
    """Write results.csv, results.json, one PNG per figure and report.md into ``out_dir``; return their paths.

    Every file is written atomically, data first (the rows survive whatever happens to the figures). A Ctrl-C
    while writing is held until the files are complete (see :mod:`optlab.engine.interrupt`), then raised as
    ``KeyboardInterrupt`` unless an ``interrupt_scope`` is collecting it. Figures are rendered with Agg here, for
    this call only: the process's matplotlib backend is never switched.

    Example: ``write_report(result, "runs/nr")["report.md"]``.
    """
    figures: dict[str, Any] = {}
    for section in result.sections:  # every check before any file is written
        for name, fig in section.figures.items():
            if not isinstance(name, str) or not name.endswith(".png"):
                raise ValueError(f"figure name {name!r} in section {section.title!r} must end with .png")
            if name in figures:
                raise ValueError(f"figure name {name!r} is used twice")
            if not hasattr(fig, "savefig"):
                raise TypeError(f"figure {name!r} in section {section.title!r} must be a matplotlib Figure, "
                                f"got {type(fig).__name__}")
            figures[name] = fig
    out_dir = Path(out_dir)
    with deferred_interrupts() as scope:
        already = scope.interrupted
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        paths["results.csv"] = _atomic.write_csv(out_dir / "results.csv", result.rows)
        payload = {
            "study": result.name,
            "title": result.title,
            "seconds": result.seconds,
            "complete": result.complete,
            "cells_done": result.cells_done,
            "cells_total": result.cells_total,
            "config": result.config,
            "claims": [dataclasses.asdict(c) for c in result.reported_claims],
            "rows": result.rows,
        }
        paths["results.json"] = _atomic.write_json(out_dir / "results.json", payload)
        for name, fig in figures.items():
            plot.annotate_legends(fig)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110, backend="agg")
            paths[name] = _atomic.write_bytes(out_dir / name, buffer.getvalue())
        paths["report.md"] = _atomic.write_text(out_dir / "report.md",
                                                render_markdown(result, command=command, figure_names=list(figures)))
    if scope.interrupted and not already and not scope.explicit:
        raise KeyboardInterrupt  # the Ctrl-C held while writing, now that every file is whole
    return paths
