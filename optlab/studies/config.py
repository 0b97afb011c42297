"""Study configs: frozen dataclasses whose fields carry their own rules, one loader for CLI strings and YAML.

A field declares its rules once with :func:`setting`; its type comes from the annotation (``int``, ``float``,
``bool``, ``str``, ``tuple[float, ...]``, ``tuple[str, ...]``, ``float | None`` ...). Tuple fields are grid axes.
:func:`validate` checks every field and then the class's own ``check()`` (rules that span several fields);
:func:`load` builds a config from defaults (or ``quick()``), a YAML file, ``--set``, ``--grid`` and ``--seeds``;
:func:`dump` writes YAML that :func:`load` reads back to an equal config (floats keep ``repr`` precision).

Every error is one line that names the file or flag (if any), the key and what is allowed, e.g.
``--set: rate must be > 0, got -1.0``. Nothing here touches the disk except :func:`load` reading ``path``.

Example::

    @dataclasses.dataclass(frozen=True)
    class MyConfig(Settings):
        steps: int = setting(100, doc="optimizer steps", range=(1, None))
        learning_rates: tuple[float, ...] = setting((0.1, 0.3), doc="grid axis", range=(0, None), bounds="(]")

    config = load(MyConfig, overrides={"steps": "50"}, grid={"learning_rates": "0.01,0.1"})
    assert load(MyConfig, path="my.yaml") == config  # after writing dump(config) to my.yaml
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import yaml

from optlab.studies.config_fields import (  # noqa: F401 (Settings, setting: re-exported, the one import path)
    Settings,
    _check_field,
    _coerce,
    _Spec,
    _specs,
    _where,
    parse,
    setting,
    validate,
)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML / JSON values, in field order (tuples become lists).

    Example::

        to_dict(MyConfig())  # {"steps": 100, "learning_rates": [0.1, 0.3]}
    """
    return {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
            for f in dataclasses.fields(config)}


def from_dict(config_cls: type, values: Mapping[str, Any], *, source: str | None = None, base: Any = None,
              study: str | None = None) -> Any:
    """A config from a mapping of (YAML) values over ``base`` (default: the class defaults); checks every field."""
    config = _apply(config_cls, base if base is not None else config_cls(), values, source, study)
    validate(config, source=source)
    return config


def _unknown(key: str, specs: Mapping[str, _Spec], source: str | None, study: str | None, config_cls: type) -> str:
    owner = f"study {study!r}" if study else config_cls.__name__
    return f"{_where(source)}unknown key {key!r} for {owner}; allowed: {', '.join(sorted(specs))}"


def _apply(config_cls, base, values, source, study, *, axis_only: bool = False, strings: bool = False):
    specs = _specs(config_cls)
    changes = {}
    for key, raw in values.items():
        key = str(key)
        if key not in specs:
            raise ValueError(_unknown(key, specs, source, study, config_cls))
        spec = specs[key]
        if axis_only and not spec.is_tuple:
            raise ValueError(f"{_where(source)}{key!r} is not a grid axis (it holds {getattr(base, key)!r}); "
                             "use --set")
        value = parse(spec, key, raw, source=source) if strings else _coerce(spec, raw, source)
        _check_field(spec, value, source)  # blame the key the user typed, before any cross-field rule
        changes[key] = value
    return dataclasses.replace(base, **changes)


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise ValueError(f"--config: cannot read {os.fspath(path)!r}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{os.fspath(path)}: not valid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def load(config_cls: type, *, quick: bool = False, path: str | os.PathLike | None = None,
         overrides: Mapping[str, str] | None = None, grid: Mapping[str, str] | None = None,
         seeds: int | None = None, study: str | None = None) -> Any:
    """Build a config: defaults (or ``quick()``), then the YAML file, then ``--set``, ``--grid`` and ``--seeds``.

    Args:
      config_cls: the config dataclass.
      quick: start from ``config_cls.quick()`` instead of the defaults.
      path: a YAML file of ``key: value`` (a partial file is fine: missing keys keep their defaults).
      overrides: ``--set`` strings, key -> value (tuple fields read ``v1,v2``).
      grid: ``--grid`` strings, key -> ``v1,v2,...``; only tuple fields (grid axes).
      seeds: ``--seeds N``, sets the ``seeds`` field.
      study: the study name, for error messages.

    Returns:
      The validated config.

    Raises:
      ValueError / TypeError: one line naming the file or flag, the key and what it allows.

    Example::

        load(MyConfig, quick=True, overrides={"steps": "20"})
    """
    quick_fn = getattr(config_cls, "quick", None)
    config = quick_fn() if quick and quick_fn is not None else config_cls()
    sources = []
    if path is not None:
        config = _apply(config_cls, config, _read_yaml(path), os.fspath(path), study)
        sources.append(os.fspath(path))
    if overrides:
        config = _apply(config_cls, config, overrides, "--set", study, strings=True)
        sources += [f"--set {k}={v}" for k, v in overrides.items()]
    if grid:
        config = _apply(config_cls, config, grid, "--grid", study, axis_only=True, strings=True)
        sources += [f"--grid {k}={v}" for k, v in grid.items()]
    if seeds is not None:
        if "seeds" not in _specs(config_cls):
            raise ValueError(f"--seeds: {f'study {study!r}' if study else config_cls.__name__} has no seeds setting")
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds}")
        config = _apply(config_cls, config, {"seeds": seeds}, "--seeds", study)
        sources.append(f"--seeds {seeds}")
    try:
        validate(config)
    except (TypeError, ValueError) as err:
        # a cross-field rule (or a default) failed: say which of the user's inputs led there
        if not sources:
            raise
        raise type(err)(f"{err} (with {', '.join(sources)})") from None
    return config


class _Dumper(yaml.SafeDumper):
    pass


def dump(config: Any, *, header: str | None = None) -> str:
    """The config as YAML: one ``key: value`` line per field in field order, its ``doc`` as a trailing comment.

    Floats keep ``repr`` precision (and ``.nan`` / ``.inf``), lists are written inline, so ``load(path=...)`` of the
    text gives back an equal config and two configs diff line by line.

    Args:
      config: a config dataclass instance.
      header: comment lines put first (each prefixed with ``# ``).

    Example::

        print(dump(MyConfig(), header="optlab run my-study --config this-file"))
    """
    specs = _specs(type(config))
    lines = [f"# {line}" for line in (header or "").splitlines()]
    for name, value in to_dict(config).items():
        # one flow-style value per key (lists inline), so two configs diff line by line
        # strings with line breaks or unusual spaces go double-quoted with escapes: plain or single-quoted
        # scalars would fold them over lines or lose them on reading back
        odd = any(isinstance(v, str) and not v.isprintable() for v in (value if isinstance(value, list) else [value]))
        text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=math.inf, allow_unicode=True,
                         default_style='"' if odd else None)
        text = f"{name}: " + text.strip().removesuffix("...").strip()
        doc = " ".join(specs[name].rules["doc"].split())
        lines.append(f"{text}  # {doc}" if doc else text)
    return "\n".join(lines) + "\n"


__all__ = ["Settings", "dump", "from_dict", "load", "parse", "setting", "to_dict", "validate"]
