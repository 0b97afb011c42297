"""Ctrl-C as a request, not an exception: grids stop between chunks and later grids of the same run honour it.

A ``KeyboardInterrupt`` raised at an arbitrary bytecode can land inside JAX / XLA internals (a compile, a garbage
collection callback, a device transfer) and leave the process in a state that ends in an unrelated traceback or a
segfault, or be swallowed ("Exception ignored in ... _xla_gc_callback") so a run looks complete. So while a grid
runs (or for the whole of an :func:`interrupt_scope`) SIGINT only sets a flag:

- the running ``run_grid`` finishes the chunk already on the device, returns the finished cells with
  ``complete=False`` and marks the scope interrupted;
- every later ``run_grid`` in the same scope raises :class:`GridInterrupted` (a ``KeyboardInterrupt``) at its
  start, before any work, carrying an empty result that still knows the grid's size;
- a second Ctrl-C while a grid waits for its last chunk is ignored with a note (the chunk cannot be cancelled and
  waiting for it is what keeps the process sane); outside a grid it raises ``KeyboardInterrupt`` (the user
  insists).

Scopes. Inside ``with interrupt_scope() as scope:`` the flag lives and dies with the block (the CLI / study runner
wraps one study run in it and reads ``scope.interrupted``). Outside any explicit scope the flag belongs to the
process, so a script that calls several grids stops at the next one; in IPython / Jupyter it is cleared after each
cell, so an interrupted cell never breaks the next one. :func:`reset_interrupt` clears it by hand. The handler is
installed only from the main thread and only over Python's default SIGINT handler, never over one a user (or a
framework) installed; elsewhere a ``KeyboardInterrupt`` is caught as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

_MESSAGE = b"\noptlab: interrupted - finishing the running chunk (or file), then stopping\n"


@dataclass(eq=False)  # compared by identity: two fresh scopes are different runs
class InterruptScope:
    """The interrupt state of one run: ``interrupted`` turns True at the first Ctrl-C and stays True."""

    interrupted: bool = False
    explicit: bool = True  # False for the process-wide default scope


class GridInterrupted(KeyboardInterrupt):
    """Raised by ``run_grid`` at its start when an earlier grid of the same scope was interrupted.

    ``result`` is an empty ``GridResult`` (``complete=False``) of the grid that was not run, with its axes and
    ``info["cells_total"]``, so a study can still count the cells it is missing.
    """

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


_DEFAULT = InterruptScope(explicit=False)
_SCOPES: list[InterruptScope] = [_DEFAULT]
_ipython_hooked = False
_grids_running = 0  # run_grid calls active in this process (a grid may call another from its fn)


def current_scope() -> InterruptScope:
    """The innermost active scope (the process-wide default one outside any ``interrupt_scope``)."""
    return _SCOPES[-1]


def interrupt_requested() -> bool:
    """True when Ctrl-C was pressed (or a grid was interrupted) in the current scope."""
    return _SCOPES[-1].interrupted


def reset_interrupt() -> None:
    """Forget an interrupt in the current scope, so the next ``run_grid`` runs again."""
    _SCOPES[-1].interrupted = False


def _clear_default(*_args, **_kwargs) -> None:
    _DEFAULT.interrupted = False


def _hook_ipython() -> None:
    """In IPython the default scope is one cell: clear it after every cell (registered once)."""
    global _ipython_hooked
    if _ipython_hooked or "IPython" not in sys.modules:
        return
    shell = sys.modules["IPython"].get_ipython()
    if shell is None:
        return
    shell.events.register("post_run_cell", _clear_default)
    _ipython_hooked = True


def mark_interrupted() -> None:
    """Record an interrupt in the current scope (run_grid calls it when it stops early)."""
    scope = _SCOPES[-1]
    scope.interrupted = True
    if not scope.explicit:
        _hook_ipython()


def _on_sigint(signum, frame) -> None:
    scope = _SCOPES[-1]
    if scope.interrupted:
        if _grids_running:  # raising here would only skip the wait for a chunk that keeps running anyway
            _say(b"optlab: still finishing the running chunk\n")
            return
        raise KeyboardInterrupt  # a second Ctrl-C outside a grid: stop now
    mark_interrupted()
    _say(_MESSAGE)


def _say(message: bytes) -> None:
    try:  # os.write, not print: a signal handler may run in the middle of another write to sys.stderr
        os.write(2, message)
    except OSError:
        pass


def deferring() -> bool:
    """True while SIGINT goes to optlab's flag handler (a KeyboardInterrupt then did not come from a first Ctrl-C)."""
    return signal.getsignal(signal.SIGINT) is _on_sigint


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[InterruptScope]:
    """While the block runs, SIGINT sets the current scope's flag instead of raising (when it safely can).

    Yields the current scope; callers poll ``scope.interrupted`` at safe points. Nested uses are free: the handler
    is installed once, by the outermost block, and restored when it exits.
    """
    installed = False
    if threading.current_thread() is threading.main_thread():
        try:
            installed = signal.getsignal(signal.SIGINT) is signal.default_int_handler
            if installed:
                signal.signal(signal.SIGINT, _on_sigint)
        except ValueError:  # embedded interpreters without signal support
            installed = False
    try:
        yield _SCOPES[-1]
    finally:
        if installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def grid_running() -> Iterator[InterruptScope]:
    """``deferred_interrupts`` for the body of ``run_grid``: there, later presses are noted, never raised."""
    global _grids_running
    with deferred_interrupts() as scope:
        _grids_running += 1
        try:
            yield scope
        finally:
            _grids_running -= 1


@contextlib.contextmanager
def interrupt_scope() -> Iterator[InterruptScope]:
    """A fresh interrupt state for one run (a study, one CLI command, one test), with Ctrl-C deferred throughout.

    Inside the block Ctrl-C never raises on the first press: the running grid stops after its chunk, later grids
    raise :class:`GridInterrupted`, and the caller reads ``scope.interrupted`` at the end. A second press raises
    ``KeyboardInterrupt``. The state is discarded when the block exits.

    Example::

        with interrupt_scope() as scope:
            result = study.run(config)
        if scope.interrupted:
            ...  # write the partial report, exit 130
    """
    scope = InterruptScope()
    _SCOPES.append(scope)
    try:
        with deferred_interrupts():
            yield scope
    finally:
        _SCOPES.remove(scope)


__all__ = [
    "GridInterrupted",
    "InterruptScope",
    "current_scope",
    "deferred_interrupts",
    "deferring",
    "grid_running",
    "interrupt_requested",
    "interrupt_scope",
    "mark_interrupted",
    "reset_interrupt",
]
