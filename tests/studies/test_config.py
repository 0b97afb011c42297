"""optlab.studies.config: field rules, the one loader (YAML, --set, --grid, --seeds) and exact YAML round trips."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TinyConfig
from optlab.studies import config as cfg
from optlab.studies.correction import CorrectionConfig
from optlab.studies.newton_root import NewtonRootConfig


@dataclasses.dataclass(frozen=True)
class Rules(cfg.Settings):
    share: float = cfg.setting(0.5, doc="half-open", range=(0, 1), bounds="[)")
    count: int = cfg.setting(3, range=(1, 10))
    kind: str = cfg.setting("a", choices=("a", "b"))
    names: tuple[str, ...] = cfg.setting(("a",), choices=("a", "b"), min_len=1)
    cap: float = cfg.setting(math.inf, allow_nonfinite=True)
    limit: float | None = cfg.setting(None, range=(0, None))
    sizes: tuple[int, ...] = cfg.setting((), min_len=0)


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("cls", [TinyConfig, NewtonRootConfig, CorrectionConfig, Rules])
@pytest.mark.parametrize("quick", [False, True])
def test_defaults_validate_and_round_trip_through_yaml(cls, quick, tmp_path):
    config = cls.quick() if quick else cls()
    config.validate()
    path = _write(tmp_path, cfg.dump(config, header="a header\nof two lines"))
    assert cfg.load(cls, path=path) == config
    assert cfg.load(cls, quick=not quick, path=path) == config  # a full config.yaml wins over the base


_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=1e-300, max_value=1e300)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["yes", "no", "null", "~", "1e3", "0x10", "# x", "a: b", "[1]", "'q'", "", " pad ", "a\nb", "\u2028", "\xa0"])


@settings(max_examples=60, deadline=None)
@given(rate=_finite, rates=st.lists(_finite, min_size=1, max_size=4), label=_text, flag=st.booleans(),
       steps=st.integers(1, 2**62), cap=st.none() | st.just(math.inf) | _finite)
def test_yaml_round_trip_is_exact(rate, rates, label, flag, steps, cap, tmp_path_factory):
    config = TinyConfig(steps=steps, rate=rate, label=label, flag=flag, learning_rates=tuple(rates),
                        cap=None if cap is None else max(cap, rate))
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    text = cfg.dump(config)
    assert len(text.splitlines()) == len(dataclasses.fields(config))  # one line per key, whatever the string
    path.write_text(text, encoding="utf-8")
    loaded = cfg.load(TinyConfig, path=path)
    assert loaded == config
    assert [type(v) for v in dataclasses.astuple(loaded)] == [type(v) for v in dataclasses.astuple(config)]


def test_dump_is_one_commented_line_per_field():
    lines = cfg.dump(Rules(), header="h").splitlines()
    assert lines[0] == "# h"
    assert lines[1:] == ["share: 0.5  # half-open", "count: 3", "kind: a", "names: [a]", "cap: .inf", "limit: null",
                         "sizes: []"]


@pytest.mark.parametrize("changes, message", [
    ({"share": 1.0}, "share must be in [0, 1), got 1.0"),
    ({"share": -0.1}, "share must be in [0, 1), got -0.1"),
    ({"share": math.nan}, "share must be finite, got nan"),
    ({"count": 11}, "count must be in [1, 10], got 11"),
    ({"count": True}, "count must be an int in [1, 10]"),
    ({"count": 2.0}, "count must be an int"),
    ({"kind": "c"}, "kind must be one of 'a', 'b', got 'c'"),
    ({"names": ("a", "z")}, "names values must be one of 'a', 'b', got 'z'"),
    ({"names": ()}, "names needs at least 1 value"),
    ({"names": ["a"]}, "names must be a tuple"),
    ({"limit": -1.0}, "limit must be >= 0, got -1.0"),
    ({"share": None}, "share must be a float in [0, 1) (finite), got None"),
])
def test_validate_names_the_field_and_what_is_allowed(changes, message):
    with pytest.raises((ValueError, TypeError)) as info:
        dataclasses.replace(Rules(), **changes).validate()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_closed_ends_and_nonfinite_allowed_values_pass():
    Rules(share=0.0, count=10, cap=-math.inf, limit=0.0, sizes=(1, 2)).validate()
    Rules(cap=math.nan).validate()


def test_cli_strings_parse_to_the_annotated_types():
    config = cfg.load(Rules, overrides={"share": "0.25", "count": "4", "limit": "none", "cap": "-inf"},
                      grid={"names": "a, b,", "sizes": "1,2"})
    assert config == Rules(share=0.25, count=4, limit=None, cap=-math.inf, names=("a", "b"), sizes=(1, 2))
    assert cfg.load(TinyConfig, overrides={"flag": "yes"}).flag is True
    assert cfg.load(TinyConfig, overrides={"learning_rates": "0.3"}).learning_rates == (0.3,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(overrides={"colour": "red"}), "--set: unknown key 'colour' for study 'tiny'; allowed: cap, flag,"),
    (dict(overrides={"steps": "1.5"}), "--set: steps: cannot read '1.5' as int; allowed: an int >= 1"),
    (dict(overrides={"rate": "nan"}), "--set: rate must be finite, got nan"),
    (dict(grid={"learning_rates": "0.1,inf"}), "--grid: learning_rates values must be finite, got inf"),
    (dict(grid={"learning_rates": ","}), "--grid: learning_rates needs at least 1 value"),
    (dict(grid={"rate": "1,2"}), "--grid: 'rate' is not a grid axis"),
    (dict(seeds=0), "--seeds must be >= 1, got 0"),
    (dict(overrides={"cap": "0.1"}), "rate=0.5 must be <= cap=0.1 (with --set cap=0.1)"),
])
def test_load_errors_name_the_flag_and_key(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as info:
        cfg.load(TinyConfig, study="tiny", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_key_the_user_typed_is_blamed_not_a_neighbour():
    # learning_rates=-1 used to fail on reference_lr's "must be one of learning_rates" first
    with pytest.raises(ValueError, match=r"^--set: learning_rates values must be > 0, got -1.0$"):
        cfg.load(NewtonRootConfig, quick=True, overrides={"learning_rates": "-1"})
    with pytest.raises(ValueError, match=r"reference_lr=1.0 must be one of .* \(with --set learning_rates=0.5\)"):
        cfg.load(NewtonRootConfig, quick=True, overrides={"learning_rates": "0.5"})
    with pytest.raises(ValueError, match="^--grid: magnitude values must be finite, got inf"):
        cfg.load(CorrectionConfig, grid={"magnitude": "inf"})
    with pytest.raises(ValueError, match="^--set: max_relative must be finite, got nan"):
        cfg.load(CorrectionConfig, overrides={"max_relative": "nan"})


@pytest.mark.parametrize("text, message", [
    ("steps: 5\ncolour: red\n", "c.yaml: unknown key 'colour' for study 'tiny'"),
    ("steps: ten\n", "c.yaml: steps: cannot read 'ten' as int"),
    ("steps: 2.5\n", "c.yaml: steps must be an int >= 1, got 2.5"),
    ("flag: 1\n", "c.yaml: flag must be true or false"),
    ("learning_rates: 0.1\n", "c.yaml: learning_rates must be a list"),
    ("learning_rates: [0.1, -2]\n", "c.yaml: learning_rates values must be > 0, got -2.0"),
    ("rate: .nan\n", "c.yaml: rate must be finite, got nan"),
    ("steps: [1\n", "c.yaml: not valid YAML (line 2)"),
    ("- 1\n- 2\n", "c.yaml: expected a mapping of key: value, got list"),
])
def test_yaml_errors_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises((ValueError, TypeError)) as info:
        cfg.load(TinyConfig, path=_write(tmp_path, text), study="tiny")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_partial_yaml_keeps_defaults_and_reads_plain_numbers(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string; float fields read it as the number it looks like
    path = _write(tmp_path, "rate: 1e-3\nlearning_rates: [1, '2e-1']\n")
    config = cfg.load(TinyConfig, quick=True, path=path, overrides={"steps": "7"})
    assert config == TinyConfig(steps=7, rate=1e-3, learning_rates=(1.0, 0.2))
    assert isinstance(config.learning_rates[0], float)
    assert cfg.load(TinyConfig, path=_write(tmp_path, "", "empty.yaml")) == TinyConfig()


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="--config: cannot read .*nope.yaml"):
        cfg.load(TinyConfig, path=tmp_path / "nope.yaml")


def test_study_make_config_delegates_to_load(tiny_study):
    config = tiny_study.make_config(quick=True, overrides={"rate": "0.25"}, grid={"learning_rates": "1,2"}, seeds=3)
    assert config == TinyConfig(steps=3, rate=0.25, learning_rates=(1.0, 2.0), seeds=3)


def test_to_dict_is_plain_values_in_field_order():
    assert cfg.to_dict(TinyConfig()) == {"steps": 10, "rate": 0.5, "label": "a", "flag": False, "seeds": 2,
                                        "learning_rates": [0.1, 0.2], "cap": None}
    assert cfg.from_dict(TinyConfig, {"rate": 0.25, "learning_rates": [1]}) == TinyConfig(rate=0.25,
                                                                                          learning_rates=(1.0,))


def test_bad_setting_and_unsupported_annotation_fail_loudly():
    with pytest.raises(ValueError, match="bounds must be one of"):
        cfg.setting(1.0, bounds="[[")
    with pytest.raises(ValueError, match="range must be a"):
        cfg.setting(1.0, range=(0,))

    @dataclasses.dataclass(frozen=True)
    class Odd:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="config field 'table': annotation"):
        cfg.validate(Odd())
