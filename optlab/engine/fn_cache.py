"""A cache of per-grid-function results that lives as long as the function: weak keys, so a grid's fn is collected."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


def per_fn(store: weakref.WeakKeyDictionary, fn: Callable, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in ``store`` per ``(fn, key)`` while ``fn`` lives.

    Not kept when ``key`` is None or ``fn`` cannot be weakly referenced (a builtin, an object with ``__slots__``):
    then every call computes. A ``compute`` that raises caches nothing.

    Args:
      store: the caller's ``weakref.WeakKeyDictionary`` (fn -> {key: value}).
      fn: the grid's cell function.
      key: hashable, what else selects the value (static values, axis names, ...); None: do not cache.
      compute: makes the value.

    Returns:
      The value.

    Example::

        _WIDTHS = weakref.WeakKeyDictionary()
        width = per_fn(_WIDTHS, fn, ("static", 1024), lambda: choose_width())
    """
    try:
        values = store.setdefault(fn, {}) if key is not None else {}
    except TypeError:  # fn cannot be weakly referenced
        values = {}
    if key not in values:
        values[key] = compute()
    return values[key]
