"""Learning-rate schedules: step -> multiplier, built from ``optax.schedules`` pieces.

Every schedule here is an ``optax.Schedule`` (a pure, jittable function of the step count), so it works as an
optax ``learning_rate`` and as ``fit(..., schedule=...)``, where it multiplies the optimizer's update at the global
step. Values (``lr_max``, ``lr_min``, ``lr_init``) may be traced arrays, so a grid can vmap over them; step counts
are Python ints (they shape the piecewise structure).

The cosine pieces are written as ``lr_min + (lr_max - lr_min) * c(t)`` with ``c = optax.cosine_decay_schedule(1.0,
T)``, never via ``end / peak`` ratios (``optax.warmup_cosine_decay_schedule`` branches on ``peak == 0`` in Python,
which fails for traced peaks).

Example:
  >>> sched = make_schedule("warmup_cosine", warmup_steps=10, total_steps=100, lr_min=0.1)
  >>> round(float(sched(10)), 6), round(float(sched(100)), 6)
  (1.0, 0.1)
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import optax
from jax.typing import ArrayLike

SCHEDULES = ("constant", "warmup_cosine", "cosine", "wsd", "step")
DECAYS = ("linear", "cosine")


def _steps(name: str, value: Any, *, minimum: int) -> int:
    """Checks a step count: a Python int >= minimum."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if count < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return count


def _anneal(lr_from: ArrayLike, lr_to: ArrayLike, steps: int, decay: str) -> optax.Schedule:
    """Goes from ``lr_from`` at 0 to ``lr_to`` at ``steps`` (then stays): linear or half-cosine."""
    if decay == "linear":
        return optax.linear_schedule(lr_from, lr_to, steps)
    shape = optax.cosine_decay_schedule(1.0, steps)  # 0.5 (1 + cos(pi t / T)), 1 -> 0
    return lambda count: lr_to + (lr_from - lr_to) * shape(count)


def _with_warmup(lr_init: ArrayLike, lr_max: ArrayLike, warmup_steps: int, rest: list, boundaries: list):
    """Prepends a linear warmup lr_init -> lr_max (skipped when ``warmup_steps == 0``)."""
    if warmup_steps == 0:
        return optax.join_schedules(rest, boundaries) if boundaries else rest[0]
    pieces = [optax.linear_schedule(lr_init, lr_max, warmup_steps), *rest]
    return optax.join_schedules(pieces, [warmup_steps] + [warmup_steps + b for b in boundaries])


def constant(value: ArrayLike = 1.0) -> optax.Schedule:
    """Constant schedule ``eta_t = value``.

    Example:
      >>> float(constant(0.5)(1000))
      0.5
    """
    return optax.constant_schedule(value)


def cosine(total_steps: int, *, lr_max: ArrayLike = 1.0, lr_min: ArrayLike = 0.0) -> optax.Schedule:
    """Cosine annealing from ``lr_max`` to ``lr_min`` over ``total_steps``, then ``lr_min``.

    .. math:: \\eta_t = \\eta_{min} + \\tfrac12 (\\eta_{max} - \\eta_{min}) (1 + \\cos(\\pi \\min(t, T) / T))

    Args:
      total_steps: T >= 1.
      lr_max: value at step 0.
      lr_min: value from step T on.

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> round(float(cosine(100, lr_max=1e-3, lr_min=1e-4)(50)), 8)  # halfway: the mean
      0.00055
    """
    total_steps = _steps("total_steps", total_steps, minimum=1)
    return _anneal(lr_max, lr_min, total_steps, "cosine")


def warmup_cosine(
    warmup_steps: int,
    total_steps: int,
    *,
    lr_max: ArrayLike = 1.0,
    lr_min: ArrayLike = 0.0,
    lr_init: ArrayLike = 0.0,
) -> optax.Schedule:
    """Linear warmup ``lr_init -> lr_max`` over ``warmup_steps``, cosine decay to ``lr_min`` at ``total_steps``.

    .. math::
      \\eta_t = \\eta_{init} + (\\eta_{max} - \\eta_{init}) t / W \\quad (t < W), \\qquad
      \\eta_t = \\eta_{min} + \\tfrac12 (\\eta_{max} - \\eta_{min})
                (1 + \\cos(\\pi \\min(t - W, T - W) / (T - W))) \\quad (t \\ge W)

    Same values as ``optax.warmup_cosine_decay_schedule(lr_init, lr_max, W, T, lr_min)`` but safe for traced
    values.

    Args:
      warmup_steps: W >= 0.
      total_steps: T > W (includes the warmup, as in optax).
      lr_max: peak value, reached at step W.
      lr_min: value from step T on.
      lr_init: value at step 0.

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> s = warmup_cosine(10, 110, lr_max=0.01)
      >>> round(float(s(5)), 6), round(float(s(60)), 6)
      (0.005, 0.005)
    """
    warmup_steps = _steps("warmup_steps", warmup_steps, minimum=0)
    total_steps = _steps("total_steps", total_steps, minimum=warmup_steps + 1)
    return _with_warmup(lr_init, lr_max, warmup_steps, [_anneal(lr_max, lr_min, total_steps - warmup_steps,
                                                                "cosine")], [])


def wsd(
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    *,
    lr_max: ArrayLike = 1.0,
    lr_min: ArrayLike = 0.0,
    lr_init: ArrayLike = 0.0,
    decay: str = "linear",
) -> optax.Schedule:
    """Warmup-stable-decay: linear warmup, ``lr_max`` held for ``stable_steps``, then decay to ``lr_min``.

    .. math::
      \\eta_t = \\begin{cases} \\eta_{init} + (\\eta_{max} - \\eta_{init}) t / W & t < W \\\\
      \\eta_{max} & W \\le t < W + S \\\\
      \\mathrm{anneal}(\\eta_{max} \\to \\eta_{min}, t - W - S, D) & t \\ge W + S \\end{cases}

    Args:
      warmup_steps: W >= 0.
      stable_steps: S >= 0.
      decay_steps: D >= 1.
      lr_max, lr_min, lr_init: values as in :func:`warmup_cosine`.
      decay: ``"linear"`` or ``"cosine"`` shape of the final decay.

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> s = wsd(10, 80, 10, lr_min=0.0)
      >>> float(s(50)), float(s(95))
      (1.0, 0.5)
    """
    warmup_steps = _steps("warmup_steps", warmup_steps, minimum=0)
    stable_steps = _steps("stable_steps", stable_steps, minimum=0)
    decay_steps = _steps("decay_steps", decay_steps, minimum=1)
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r} is not supported; allowed values: {DECAYS}")
    tail = _anneal(lr_max, lr_min, decay_steps, decay)
    if stable_steps == 0:
        return _with_warmup(lr_init, lr_max, warmup_steps, [tail], [])
    return _with_warmup(lr_init, lr_max, warmup_steps, [optax.constant_schedule(lr_max), tail], [stable_steps])


def step_decay(every: int, *, factor: float = 0.1, lr_max: ArrayLike = 1.0) -> optax.Schedule:
    """Step decay: multiply by ``factor`` every ``every`` steps.

    .. math:: \\eta_t = \\eta_{max} \\cdot \\mathrm{factor}^{\\lfloor t / \\mathrm{every} \\rfloor}

    Args:
      every: steps between drops, >= 1.
      factor: multiplier per drop, a Python float in (0, 1] (``optax.exponential_decay`` branches on it).
      lr_max: value at step 0 (may be traced).

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> float(step_decay(500, factor=0.5)(1200))
      0.25
    """
    every = _steps("every", every, minimum=1)
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0.0 < factor <= 1.0:
        raise ValueError(f"factor must be a Python float in (0, 1], got {factor!r}")
    shape = optax.exponential_decay(1.0, every, float(factor), staircase=True)
    return lambda count: lr_max * shape(count)


_FACTORIES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": constant,
    "warmup_cosine": warmup_cosine,
    "cosine": cosine,
    "wsd": wsd,
    "step": step_decay,
}


def make_schedule(name: str, **kwargs: Any) -> optax.Schedule:
    """Builds a named schedule: ``"constant"``, ``"warmup_cosine"``, ``"cosine"``, ``"wsd"`` or ``"step"``.

    Args:
      name: one of :data:`SCHEDULES`.
      **kwargs: the keyword arguments of :func:`constant`, :func:`warmup_cosine`, :func:`cosine`, :func:`wsd` or
        :func:`step_decay`.

    Returns:
      An ``optax.Schedule`` (step -> value).

    Example:
      >>> float(make_schedule("cosine", total_steps=10, lr_max=2.0)(10))
      0.0
    """
    if name not in _FACTORIES:
        raise ValueError(f"schedule name={name!r} is not supported; allowed values: {SCHEDULES}")
    try:
        return _FACTORIES[name](**kwargs)
    except TypeError as err:
        if "argument" in str(err):  # unknown or missing keyword: say which schedule was asked for
            raise TypeError(f"make_schedule({name!r}, ...): {err}") from None
        raise


__all__ = ["DECAYS", "SCHEDULES", "constant", "cosine", "make_schedule", "step_decay", "warmup_cosine", "wsd"]
