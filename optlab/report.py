"""Write a study's result to disk: report.md (claims, tables, figures), results.csv, results.json, PNGs.

Every file is written atomically. The markdown puts each lab-note claim beside the measured number and a verdict;
claimed numbers come from the study's ``Claim.claimed`` (the note's words) and are never used as results.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from pathlib import Path
from typing import Any, Sequence

from optlab import _atomic
from optlab.studies.base import Claim, StudyResult

_MARK = {"confirmed": "✅ confirmed", "refuted": "❌ refuted", "partly": "◐ partly", "inconclusive": "? inconclusive"}


def _cell(value: Any) -> str:
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats to 4 significant digits, pipes escaped."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells, headers have {len(headers)}: {row!r}")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def claims_table(claims: Sequence[Claim]) -> str:
    return markdown_table(["experiment", "claim", "claimed (note)", "measured (optlab)", "verdict"],
                          [[c.experiment, c.claim, c.claimed, c.measured, _MARK[c.verdict]] for c in claims])


def verdict_summary(result: StudyResult) -> str:
    """Plain-text verdict table for the terminal: one line per claim."""
    claims = result.claims
    if not claims:
        return "(no claims)"
    width = max(len(c.claim) for c in claims)
    width = min(width, 70)
    lines = []
    for c in claims:
        claim = c.claim if len(c.claim) <= width else c.claim[: width - 1] + "…"
        lines.append(f"{c.verdict:<12} {claim:<{width}}  measured: {c.measured}")
    return "\n".join(lines)


def render_markdown(result: StudyResult, *, command: str | None = None, figure_names: Sequence[str] = ()) -> str:
    counts = {v: sum(c.verdict == v for c in result.claims) for v in _MARK}
    out = [f"# {result.title}", ""]
    out.append(f"Study `{result.name}`, run {_dt.datetime.now().isoformat(timespec='seconds')}, "
               f"{result.seconds:.1f} s." + (f" Command: `{command}`." if command else ""))
    out.append("")
    out.append("Claimed numbers are the lab note's hypotheses; measured numbers come from this run only.")
    out.append("")
    out.append("## Verdicts")
    out.append("")
    out.append(", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no claims")
    out.append("")
    if result.claims:
        out.append(claims_table(result.claims))
        out.append("")
    for section in result.sections:
        out.append(f"## {section.title}")
        out.append("")
        if section.text:
            out.append(section.text.strip())
            out.append("")
        if section.claims:
            out.append(claims_table(section.claims))
            out.append("")
            details = [f"- *{c.claim}*: {c.detail}" for c in section.claims if c.detail]
            if details:
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
    """Write report.md, results.csv, results.json and one PNG per figure into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    seen: set[str] = set()
    for section in result.sections:
        for name, fig in section.figures.items():
            if not name.endswith(".png"):
                raise ValueError(f"figure name {name!r} in section {section.title!r} must end with .png")
            if name in seen:
                raise ValueError(f"figure name {name!r} is used twice")
            seen.add(name)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110)
            paths[name] = _atomic.write_bytes(out_dir / name, buffer.getvalue())
    paths["report.md"] = _atomic.write_text(out_dir / "report.md",
                                            render_markdown(result, command=command, figure_names=sorted(seen)))
    paths["results.csv"] = _atomic.write_csv(out_dir / "results.csv", result.rows)
    payload = {
        "study": result.name,
        "title": result.title,
        "seconds": result.seconds,
        "config": result.config,
        "claims": [c.__dict__ for c in result.claims],
        "rows": result.rows,
    }
    paths["results.json"] = _atomic.write_json(out_dir / "results.json", payload)
    return paths
