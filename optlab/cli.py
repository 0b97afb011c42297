"""Command line: ``optlab list`` and ``optlab run <study> [--quick] [--out DIR] [--set k=v] [--grid k=v1,v2] [--seeds N]``.

Bad input (unknown study, unknown key, unparsable value) prints one line naming it and the allowed choices and
exits with status 2. A run writes ``runs/<study>-<timestamp>/`` (report.md, results.csv, results.json, PNGs) and
ends by printing the verdict table and the report's path.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import shlex
import sys
import time
from pathlib import Path

from optlab import studies


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other bad-input path
        self.exit(2, f"optlab: error: {message}\n")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optlab", description="Run optlab studies and read which claims held.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the studies with one-line descriptions")
    run = sub.add_parser("run", help="run a study and write its report")
    run.add_argument("study", help="study name (see `optlab list`)")
    run.add_argument("--quick", action="store_true", help="CI-sized run (seconds, not minutes)")
    run.add_argument("--out", type=Path, default=None, help="output folder (default runs/<study>-<timestamp>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value (repeatable)")
    run.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                     help="replace a grid axis with these values (repeatable)")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds per grid cell")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _list() -> int:
    names = studies.available()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {studies.get(name).description}")
    return 0


def _run(args) -> int:
    try:
        study = studies.get(args.study)
        config = study.make_config(quick=args.quick, overrides=_pairs(args.overrides, "--set"),
                                   grid=_pairs(args.grid, "--grid"), seeds=args.seeds)
    except ValueError as err:
        print(f"optlab: error: {err}", file=sys.stderr)
        return 2
    from optlab import report  # matplotlib import only when a run happens

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out if args.out is not None else Path("runs") / f"{study.name}-{stamp}"
    progress = not args.no_progress and sys.stderr.isatty()
    print(f"optlab: running {study.name}{' (quick)' if args.quick else ''} -> {out}", file=sys.stderr)
    start = time.perf_counter()
    result = study.run(config, progress=progress)
    result.seconds = time.perf_counter() - start
    result.config = dataclasses.asdict(config)
    command = "optlab " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    paths = report.write_report(result, out, command=command)
    print(report.verdict_summary(result))
    n_png = sum(1 for p in paths if p.endswith(".png"))
    print(f"\nreport: {paths['report.md']}  ({n_png} figures, {len(result.rows)} rows, {result.seconds:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "list":
        return _list()
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
