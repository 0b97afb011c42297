"""Command line: ``optlab list``, ``optlab config <study>`` and ``optlab run <study | file.py> [options]``.

Options of ``run`` and ``config``: ``--quick``, ``--config FILE.yaml``, ``--set k=v``, ``--grid k=v1,v2``,
``--seeds N``; ``run`` adds ``--out DIR`` and ``--no-progress``.

Bad input (unknown study, unknown key, unparsable or out-of-range value, an ``--out`` that cannot hold the run)
prints one line naming it and what is allowed and exits with status 2, before any work. A run writes
``runs/<study>-<timestamp>/`` (config.yaml first, then report.md, results.csv, results.json, PNGs) and ends by
printing the verdict table and the report's path. ``optlab run <study> --config runs/<run>/config.yaml``
reproduces that run. Ctrl-C writes what finished (the report says it is incomplete) and exits with status 130.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import shlex
import sys
import time
from pathlib import Path

import yaml

from optlab import _atomic, studies
from optlab.engine.interrupt import interrupt_scope
from optlab.studies import config as _config
from optlab.studies.base import StudyResult

EXIT_USAGE = 2  # bad input, nothing ran
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command
CONFIG_FILE = "config.yaml"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other bad-input path
        self.exit(EXIT_USAGE, f"optlab: error: {message}\n")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        if key.strip() in pairs:
            raise ValueError(f"{flag}: {key.strip()!r} is given twice")
        pairs[key.strip()] = value.strip()
    return pairs


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study name (see `optlab list`) or path/to/my_study.py defining STUDY")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (seconds, not minutes)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                        help="YAML of key: value (e.g. a run's config.yaml); applied before --set / --grid")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="replace a grid axis with these values (repeatable)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds per grid cell")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optlab", description="Run optlab studies and read which claims held.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the studies with one-line descriptions")
    show = sub.add_parser("config", help="print the resolved config as YAML (edit it, then run --config FILE)")
    _add_config_arguments(show)
    run = sub.add_parser("run", help="run a study and write its report")
    _add_config_arguments(run)
    run.add_argument("--out", type=Path, default=None,
                     help="output folder (default runs/<study>-<timestamp>); it must be new, empty, or hold a "
                          "run of the same study and config (re-running then replaces its files)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _list() -> int:
    names = studies.available()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {studies.get(name).description}")
    return 0


def _resolve(args):
    """The study and its validated config from the command line; ValueError / TypeError on bad input."""
    study = studies.get(args.study)
    config = study.make_config(quick=args.quick, path=args.config, overrides=_pairs(args.overrides, "--set"),
                               grid=_pairs(args.grid, "--grid"), seeds=args.seeds)
    return study, config


def _config_text(study, study_arg: str, config) -> str:
    header = (f"optlab study: {study.name}\n"
              f"re-run: optlab run {shlex.quote(study_arg)} --config <this file>")
    return _config.dump(config, header=header)


def _default_out(study_name: str) -> Path:
    stem = Path("runs") / f"{Path(study_name).stem if studies.is_file_name(study_name) else study_name}-" \
                          f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, n = stem, 1
    while out.exists():  # two runs in the same second get their own folders
        n += 1
        out = stem.with_name(f"{stem.name}-{n}")
    return out


def _same_run(existing: Path, text: str) -> bool:
    """Whether ``existing`` (a config.yaml) records the same study (header line) and the same values as ``text``."""
    try:
        old = existing.read_text(encoding="utf-8")
        return old.splitlines()[:1] == text.splitlines()[:1] and yaml.safe_load(old) == yaml.safe_load(text)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False


def _claim_out(out: Path, text: str) -> Path:
    """Check that ``out`` can hold this run and write its config.yaml there now, before any work.

    An existing non-empty folder is accepted only when it holds a run of the same study and config (its files are
    replaced and its checkpoints stay for the study to resume from); otherwise another run's report would be
    overwritten or mixed with this one's, so the user picks a new folder.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file; pass a folder")
    if out.is_dir() and any(out.iterdir()):
        existing = out / CONFIG_FILE
        if not existing.is_file():
            raise ValueError(f"--out {str(out)!r} is a non-empty folder that holds no optlab run; "
                             "pass a new or empty folder")
        if not _same_run(existing, text):
            raise ValueError(f"--out {str(out)!r} holds another run (its {CONFIG_FILE} differs from this "
                             "study and config); pass a new folder, or delete that one")
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _atomic.write_text(out / CONFIG_FILE, text)
    except OSError as err:
        raise ValueError(f"--out {str(out)!r} cannot be written: {err.strerror or err}") from None


def _run_study(study, config, *, progress: bool, run_dir: Path) -> StudyResult:
    parameters = inspect.signature(study.run).parameters
    takes_run_dir = "run_dir" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    kwargs = {"progress": progress, **({"run_dir": run_dir} if takes_run_dir else {})}
    return study.run(config, **kwargs)


def _run(args, argv: list[str]) -> int:
    try:
        study, config = _resolve(args)
        text = _config_text(study, args.study, config)
        out = args.out if args.out is not None else _default_out(study.name)
        _claim_out(out, text)
    except (ValueError, TypeError) as err:
        print(f"optlab: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from optlab import report  # matplotlib import only when a run happens

    progress = not args.no_progress  # run_grid draws a bar on a terminal, one plain line per grid otherwise
    print(f"optlab: running {study.name}{' (quick)' if args.quick else ''} -> {out}", file=sys.stderr)
    start = time.perf_counter()
    # inside the scope a first Ctrl-C stops the running grid after its chunk (no exception in JAX internals);
    # a second one, or one outside any grid, still arrives here as KeyboardInterrupt
    with interrupt_scope() as scope:
        try:
            result = _run_study(study, config, progress=progress, run_dir=out)
        except KeyboardInterrupt as interrupt:
            # a study may attach what it finished; otherwise the report records an empty, incomplete run
            partial = getattr(interrupt, "result", None)
            result = partial if isinstance(partial, StudyResult) else StudyResult(
                study.name, study.description, {}, [], complete=False)
            result.complete = False
    if scope.interrupted:  # a study that dropped its grids' complete flag must not pass for a full run
        result.complete = False
    result.seconds = time.perf_counter() - start
    result.config = _config.to_dict(config)
    command = "optlab " + " ".join(shlex.quote(a) for a in argv)
    try:
        paths = report.write_report(result, out, command=command)
    except KeyboardInterrupt:  # a second Ctrl-C while writing: the atomic writes leave no half files
        print(f"optlab: interrupted while writing the report to {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report.verdict_summary(result))
    n_png = sum(1 for p in paths if p.endswith(".png"))
    print(f"\nreport: {paths['report.md']}  ({n_png} figures, {len(result.rows)} rows, {result.seconds:.1f} s)")
    if not result.complete:
        done = "" if result.cells_done is None else f": {result.cells_done} of {result.cells_total} cells finished"
        print(f"optlab: interrupted{done}; the report in {out} is incomplete", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _show_config(args) -> int:
    try:
        study, config = _resolve(args)
    except (ValueError, TypeError) as err:
        print(f"optlab: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(_config_text(study, args.study, config), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "config":
        return _show_config(args)
    return _run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
