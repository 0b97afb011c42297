"""The one ``optlab.fit`` call of a grid cell takes a value that ``run_grid`` set while it traces the cell.

``run_grid`` hands a cell's ``fit`` what only the grid knows (where to checkpoint and what to resume from, the
segment of a compacted grid) without a parameter in the user's cell function: it opens :meth:`CellSlot.holding`
around the traced call, and ``fit`` calls :meth:`CellSlot.take`. The slot is a context variable, so nested or
concurrent traces do not see each other's values; a second ``fit`` in the same cell is refused (one value, one
run), and after the call the grid reads :attr:`Holder.taken` to refuse a cell function that never called ``fit``.

Example:
  >>> slot = CellSlot("example", "run_grid(example=...)")
  >>> slot.take() is None  # outside run_grid
  True
  >>> with slot.holding(3) as holder:
  ...     value = slot.take()
  >>> value, holder.taken
  (3, True)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any


class Holder:
    """The value of one traced cell and whether its ``fit`` has taken it."""

    def __init__(self, value: Any):
        self.value, self.taken = value, False


class CellSlot:
    """A context-local value for the single ``fit`` call of the cell being traced.

    Args:
      name: the context variable's name (for debugging).
      feature: how the user turned this on, for the error when a cell calls ``fit`` twice, e.g.
        ``"run_grid(compact_every=...)"``.
      remedy: what the user can do instead (the error's last clause).
    """

    def __init__(self, name: str, feature: str, remedy: str = "call optlab.fit once per cell"):
        self._var: contextvars.ContextVar[Holder | None] = contextvars.ContextVar(f"optlab_{name}", default=None)
        self._feature, self._remedy = feature, remedy

    @contextlib.contextmanager
    def holding(self, value: Any) -> Iterator[Holder]:
        """Scope in which ``take()`` returns ``value`` (once); yields the :class:`Holder`."""
        holder = Holder(value)
        token = self._var.set(holder)
        try:
            yield holder
        finally:
            self._var.reset(token)

    def take(self) -> Any:
        """The value of the cell being traced (None outside :meth:`holding`); a second call in one cell raises."""
        holder = self._var.get()
        if holder is None:
            return None
        if holder.taken:
            raise ValueError(f"{self._feature} applies to one optlab.fit call per cell, but the cell function called "
                             f"fit twice; {self._remedy}")
        holder.taken = True
        return holder.value


__all__ = ["CellSlot", "Holder"]
