"""A recipe switch of an ablation (:class:`Switch`: one named change ``baseline`` -> ``changed``) and the check of a
list of them; :mod:`optlab.ablation` runs their factorial (and exports :class:`Switch` as ``ablation.Switch``).

Example:
  >>> Switch("lr", 1e-3, 1e-2).name
  'lr'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from optlab.engine.grid import _is_number
from optlab.engine.grid_result import SEED_AXIS

MAX_SWITCHES = 20  # 2^20 recipes × seeds is already past what a factorial should be asked to run


@dataclass(frozen=True)
class Switch:
    """One named recipe change: ``baseline`` → ``changed``.

    Args:
      name: the config key the switch sets (the cell reads ``config[name]``); not ``"seed"``.
      baseline: the value without the change.
      changed: the value with the change.
      static: False (default): both values are numbers and the cell sees a traced
        ``jnp.where(bit, changed, baseline)``, so all dynamic combinations vmap in one program. True: any Python
        values (shapes, step counts, bools that pick code paths); each combination is one compiled program.
      doc: a short description for tables.

    Example: ``Switch("lr", 1e-3, 1e-2)``, ``Switch("epochs", 30, 100, static=True, doc="train longer")``.
    """

    name: str
    baseline: Any
    changed: Any
    static: bool = False
    doc: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Switch name must be a non-empty string, got {self.name!r}")
        if self.name == SEED_AXIS:
            raise ValueError(f"Switch name {SEED_AXIS!r} is reserved for the seed axis; pick another name")
        if not isinstance(self.static, bool):
            raise ValueError(f"Switch {self.name!r}: static must be True or False, got {self.static!r}")
        if not isinstance(self.doc, str):
            raise ValueError(f"Switch {self.name!r}: doc must be a string, got {self.doc!r}")
        if not self.static:
            for which in ("baseline", "changed"):
                value = getattr(self, which)
                if not _is_number(value):
                    raise ValueError(f"Switch {self.name!r} is dynamic (static=False), so its {which} must be a "
                                     f"number, got {value!r}; pass static=True for other values")

    def value(self, on) -> Any:
        """The switch's value: ``changed`` where ``on`` is true, else ``baseline`` (traced for a dynamic switch)."""
        if self.static:
            return self.changed if on else self.baseline
        return jnp.where(jnp.asarray(on, dtype=bool), self.changed, self.baseline)


def _check_switches(switches) -> tuple[Switch, ...]:
    if isinstance(switches, Switch):
        switches = [switches]
    if isinstance(switches, (str, bytes, Mapping)) or not isinstance(switches, Sequence):
        raise ValueError(f"switches must be a non-empty list of ablation.Switch, got {switches!r}")
    if not switches:
        raise ValueError("switches must be a non-empty list of ablation.Switch, got an empty list")
    bad = [s for s in switches if not isinstance(s, Switch)]
    if bad:
        raise ValueError(f"switches must all be ablation.Switch, got {bad[0]!r}")
    names = [s.name for s in switches]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"switch names must be unique, {duplicates[0]!r} appears {names.count(duplicates[0])} times")
    if len(switches) > MAX_SWITCHES:
        raise ValueError(f"switches: at most {MAX_SWITCHES} (2^k recipes), got {len(switches)}")
    return tuple(switches)
