"""Config fields that carry their own rules: :func:`setting`, :class:`Settings`, :func:`validate`, :func:`parse`.

A field declares its rules once with :func:`setting`; its type comes from the annotation. :func:`validate` checks
every field and then the class's own ``check()``; :func:`parse` reads one CLI string. The files side (YAML in and
out, ``--set`` / ``--grid``) is :mod:`optlab.studies.config`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Mapping

_META = "optlab"  # key of a field's rules inside dataclasses.field(metadata=...)
_SCALARS = (bool, int, float, str)
_TRUE, _FALSE, _NONE = ("1", "true", "yes", "on"), ("0", "false", "no", "off"), ("none", "null", "~")


def setting(default: Any, *, doc: str = "", range: tuple[Any, Any] | None = None, bounds: str = "[]",
            choices: tuple | None = None, allow_nonfinite: bool = False, min_len: int = 1) -> Any:
    """A config field with its rules: ``dataclasses.field(default=..., metadata={"optlab": rules})``.

    Args:
      default: the default value (a tuple for a grid axis: tuples are immutable, so no default_factory needed).
      doc: one line for humans; written as a comment beside the key in ``config.yaml``.
      range: ``(lo, hi)`` for numbers (each end may be None for unbounded); for a tuple, every element.
      bounds: which ends are closed: ``"[]"`` (default), ``"[)"``, ``"(]"`` or ``"()"``.
      choices: allowed values (for a tuple, every element).
      allow_nonfinite: accept NaN / ±inf for float fields (rejected by default, whatever the range says).
      min_len: the fewest elements a tuple field may hold.

    Returns:
      A ``dataclasses.Field`` to assign in a frozen dataclass body.

    Example::

        sparsity: float = setting(0.5, doc="share of weights pruned", range=(0, 1), bounds="[)")
    """
    if bounds not in ("[]", "[)", "(]", "()"):
        raise ValueError(f"bounds must be one of '[]', '[)', '(]', '()', got {bounds!r}")
    if range is not None and (not isinstance(range, tuple) or len(range) != 2):
        raise ValueError(f"range must be a (lo, hi) tuple, got {range!r}")
    if isinstance(min_len, bool) or not isinstance(min_len, int) or min_len < 0:
        raise ValueError(f"min_len must be an int >= 0, got {min_len!r}")
    rules = {"doc": doc, "range": range, "bounds": bounds, "choices": tuple(choices) if choices is not None else None,
             "allow_nonfinite": allow_nonfinite, "min_len": min_len}
    return dataclasses.field(default=default, metadata={_META: rules})


class Settings:
    """Mixin for config dataclasses: ``quick()`` defaults to the full size, ``validate()`` runs :func:`validate`.

    Subclasses put cross-field rules in ``check(self)`` (raise ValueError naming the fields).
    """

    @classmethod
    def quick(cls):
        return cls()

    def validate(self) -> None:
        validate(self)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What one field accepts: its scalar type, whether it is a tuple / may be None, and its rules."""

    name: str
    kind: type  # bool, int, float or str: the scalar (or tuple element) type
    is_tuple: bool
    optional: bool
    rules: Mapping[str, Any]

    def allowed(self) -> str:
        """What the field accepts, in words: 'an int >= 1', 'a list of 1 or more floats > 0 (finite)', ..."""
        if self.is_tuple:
            text = f"a list of {self.rules['min_len']} or more {_describe(self.kind, self.rules, plural=True)}"
        else:
            text = _describe(self.kind, self.rules)
        return text + (" or none" if self.optional else "")


def _describe(kind: type, rules: Mapping[str, Any], *, plural: bool = False) -> str:
    if rules["choices"] is not None:
        return ("values from " if plural else "one of ") + ", ".join(repr(c) for c in rules["choices"])
    if kind is bool:
        return "true/false values" if plural else "true or false (also yes/no, on/off, 1/0)"
    noun = {int: "int", float: "float", str: "string"}[kind]
    text = f"{noun}s" if plural else f"{'an' if kind is int else 'a'} {noun}"
    bound = _bound_text(rules)
    text += f" {bound}" if bound else ""
    return text + (" (finite)" if kind is float and not rules["allow_nonfinite"] else "")


def _bound_text(rules: Mapping[str, Any]) -> str:
    """The range in words: 'in [0, 1)', '> 0', '<= 5' or '' (unbounded)."""
    lo, hi = rules["range"] or (None, None)
    left, right = rules["bounds"]
    if lo is not None and hi is not None:
        return f"in {left}{lo:g}, {hi:g}{right}"
    if lo is not None:
        return f"{'>=' if left == '[' else '>'} {lo:g}"
    if hi is not None:
        return f"{'<=' if right == ']' else '<'} {hi:g}"
    return ""


_DEFAULT_RULES = {"doc": "", "range": None, "bounds": "[]", "choices": None, "allow_nonfinite": False, "min_len": 1}


def _specs(config_cls: type) -> dict[str, _Spec]:
    """The spec of every field of ``config_cls``, from its annotations and ``setting`` metadata."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"config class must be a dataclass type, got {config_cls!r}")
    hints = typing.get_type_hints(config_cls)
    specs = {}
    for f in dataclasses.fields(config_cls):
        rules = {**_DEFAULT_RULES, **f.metadata.get(_META, {})}
        kind, is_tuple, optional = _parse_annotation(hints.get(f.name, Any), f)
        specs[f.name] = _Spec(f.name, kind, is_tuple, optional, rules)
    return specs


def _parse_annotation(annotation: Any, f: dataclasses.Field) -> tuple[type, bool, bool]:
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"config field {f.name!r}: unsupported annotation {annotation!r}")
        annotation, origin = args[0], typing.get_origin(args[0])
    if annotation in _SCALARS:
        return annotation, False, optional
    if annotation is tuple or origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
            return args[0], True, optional
        if not args:  # bare `tuple`: the element type of the default
            default = f.default if f.default is not dataclasses.MISSING else ()
            first = default[0] if default else ""
            return next(t for t in _SCALARS if type(first) is t) if type(first) in _SCALARS else str, True, optional
    raise TypeError(f"config field {f.name!r}: annotation {annotation!r} is not one of bool, int, float, str, "
                    "tuple[X, ...] of those, or X | None")


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _check_scalar(spec: _Spec, value: Any, source: str | None, label: str, *, element: bool = False) -> None:
    """Raise ValueError / TypeError when one scalar (or tuple element) breaks the field's rules."""
    where, kind, rules = _where(source), spec.kind, spec.rules
    allowed = _describe(kind, rules) if element else spec.allowed()
    ok_type = {bool: isinstance(value, bool),
               int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
               float: isinstance(value, numbers.Real) and not isinstance(value, bool),
               str: isinstance(value, str)}[kind]
    if not ok_type:
        raise TypeError(f"{where}{label} must be {allowed}, got {value!r} ({type(value).__name__})")
    if kind is float and not rules["allow_nonfinite"] and not math.isfinite(value):
        raise ValueError(f"{where}{label} must be finite, got {value!r}; allowed: {allowed}")
    if rules["choices"] is not None and value not in rules["choices"]:
        raise ValueError(f"{where}{label} must be {allowed}, got {value!r}")
    if rules["range"] is not None and kind in (int, float) and not math.isnan(value):
        lo, hi = rules["range"]
        left, right = rules["bounds"]
        below = lo is not None and (value < lo if left == "[" else value <= lo)
        above = hi is not None and (value > hi if right == "]" else value >= hi)
        if below or above:
            raise ValueError(f"{where}{label} must be {_bound_text(rules)}, got {value!r}")


def _check_field(spec: _Spec, value: Any, source: str | None = None) -> None:
    if value is None:
        if not spec.optional:
            raise TypeError(f"{_where(source)}{spec.name} must be {spec.allowed()}, got None")
        return
    if not spec.is_tuple:
        _check_scalar(spec, value, source, spec.name)
        return
    if not isinstance(value, tuple):  # a list would make the frozen config unhashable
        raise TypeError(f"{_where(source)}{spec.name} must be a tuple ({spec.allowed()}), got {value!r}")
    if len(value) < spec.rules["min_len"]:
        raise ValueError(f"{_where(source)}{spec.name} needs at least {spec.rules['min_len']} value(s), got {value!r}")
    for element in value:
        _check_scalar(spec, element, source, f"{spec.name} values", element=True)


def validate(config: Any, *, source: str | None = None) -> None:
    """Check every field of ``config`` against its type and rules, then the class's cross-field ``check()``.

    Args:
      config: a config dataclass instance.
      source: where the values came from (a file name or a flag), put at the start of the error.

    Raises:
      TypeError / ValueError: one line naming ``source``, the field and what it allows.

    Example::

        validate(dataclasses.replace(config, steps=0))  # ValueError: steps must be >= 1, got 0
    """
    specs = _specs(type(config))
    for name, spec in specs.items():
        _check_field(spec, getattr(config, name), source)
    check = getattr(config, "check", None)
    if check is not None:
        check()
    # a legacy class may keep its own validate(); the Settings one calls back into this function
    own = getattr(type(config), "validate", None)
    if own is not None and own is not Settings.validate:
        own(config)


def parse(spec_or_cls: Any, name: str, raw: str, *, source: str | None = None) -> Any:
    """Parse the CLI string ``raw`` for field ``name`` of a config class (a tuple field reads ``v1,v2,...``).

    Example::

        parse(MyConfig, "learning_rates", "0.1,0.3")  # (0.1, 0.3)
    """
    spec = _specs(spec_or_cls)[name] if isinstance(spec_or_cls, type) else spec_or_cls
    text = raw.strip()
    if spec.optional and text.lower() in _NONE:
        return None
    if not spec.is_tuple:
        return _parse_scalar(spec, text, source, name)
    values = tuple(_parse_scalar(spec, v.strip(), source, name) for v in text.split(",") if v.strip() != "")
    return values


def _parse_scalar(spec: _Spec, text: str, source: str | None, label: str) -> Any:
    kind = spec.kind
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ValueError(f"{_where(source)}{label}: cannot read {text!r} as {kind.__name__}; "
                         f"allowed: {spec.allowed()}") from None


def _coerce(spec: _Spec, value: Any, source: str | None) -> Any:
    """A YAML value to the field's Python type (strings go through the CLI parser, so ``1e-3`` reads as a float)."""
    if isinstance(value, str) and spec.kind is not str:
        return parse(spec, spec.name, value, source=source)
    if value is None:
        return None
    if spec.is_tuple:
        if isinstance(value, str):
            return parse(spec, spec.name, value, source=source)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{_where(source)}{spec.name} must be a list ({spec.allowed()}), got {value!r}")
        return tuple(_coerce_scalar(spec, v, source) for v in value)
    return _coerce_scalar(spec, value, source)


def _coerce_scalar(spec: _Spec, value: Any, source: str | None) -> Any:
    if isinstance(value, str) and spec.kind is not str:
        return _parse_scalar(spec, value.strip(), source, spec.name)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value  # type checks happen in _check_field, with the field's own message
