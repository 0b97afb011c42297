r"""Guards shared by the optlab optimizers: argument checks at the factory, and one finiteness guard.

Every Newton-root scaler is written guard-free (only its division guard stays inside, where the
formula needs it) and wrapped once by :func:`skip_non_finite`: a step whose loss, gradient, update
or new state is not finite (e.g. a half-precision update that overflows) returns a zero update,
keeps the previous state and increments the state's ``skipped`` counter, which the training
engine adds to its own count of skipped steps.

Hyperparameters are validated only when concrete (Python numbers, NumPy or concrete JAX arrays):
under ``vmap`` / ``jit`` / :func:`optax.inject_hyperparams` inside a compiled step they are
tracers and are left alone, so grids over hyperparameters keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_MISSING_VALUE = (
    "the Newton-root step needs the loss: pass value=<loss> to update, e.g. "
    "loss, grads = jax.value_and_grad(loss_fn)(params); "
    "opt.update(grads, state, params, value=loss)"
)


def missing_value_error(name: str) -> TypeError:
    """The error raised when ``update`` is called without ``value=``."""
    return TypeError(f"{name}.update: {_MISSING_VALUE}")


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a float NumPy array, or None when it is traced or not a number."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, jax.errors.JAXTypeError):
        return None


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    maximum_exclusive: bool = False,
    allow_inf: bool = False,
) -> None:
    """Raises ValueError naming ``name`` when a concrete ``value`` breaks its range; traced values pass.

    Args:
      name: the argument's name, used in the message.
      value: a number, array or schedule (callables are not evaluated and pass).
      minimum: smallest allowed value (inclusive), or None.
      maximum: largest allowed value, or None.
      maximum_exclusive: whether ``maximum`` itself is excluded.
      allow_inf: whether ``+inf`` / ``-inf`` are allowed (NaN never is).

    Example:
      >>> check_number("b2", 0.9, minimum=0.0, maximum=1.0, maximum_exclusive=True)
      >>> check_number("b2", 1.0, minimum=0.0, maximum=1.0, maximum_exclusive=True)
      Traceback (most recent call last):
      ...
      ValueError: b2=1.0 is not allowed: must be a finite number in [0.0, 1.0)
    """
    if callable(value):
        return
    array = _concrete(value)
    if array is None:
        return
    kind = "a number (inf allowed)" if allow_inf else "a finite number"
    if minimum is not None and maximum is not None:
        kind += f" in [{minimum}, {maximum}{')' if maximum_exclusive else ']'}"
    elif minimum is not None:
        kind += f" >= {minimum}"
    elif maximum is not None:
        kind += f" {'<' if maximum_exclusive else '<='} {maximum}"
    rule = f"must be {kind}"
    bad = np.isnan(array) | (~np.isfinite(array) & (not allow_inf))
    if minimum is not None:
        bad |= array < minimum
    if maximum is not None:
        bad |= (array >= maximum) if maximum_exclusive else (array > maximum)
    if np.any(bad):
        shown = array.item() if array.ndim == 0 else array.tolist()
        raise ValueError(f"{name}={shown!r} is not allowed: {rule}")


def check_learning_rate(learning_rate: optax.ScalarOrSchedule) -> None:
    """A concrete learning rate must be finite and >= 0 (a schedule is not evaluated)."""
    check_number("learning_rate", learning_rate, minimum=0.0)


def check_scalar_value(name: str, value: Any) -> None:
    """``value=`` (the loss) must be given and be a scalar; a vector would broadcast into the params."""
    if value is None:
        raise missing_value_error(name)
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"{name}.update: value= must be the scalar loss (shape ()), got shape {jnp.shape(value)}; "
            "reduce it first, e.g. value=jnp.mean(per_example_losses)"
        )


def is_trainable(leaf: Any) -> bool:
    """Whether a leaf gets an update: floating or complex arrays do; integer, bool and float0 leaves do not."""
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def compute_dtype(leaf: Any) -> jnp.dtype:
    """Dtype the step is computed in for ``leaf``: at least float32 (complex stays complex)."""
    return jnp.promote_types(jnp.result_type(leaf), jnp.float32)


def real_dtype(leaf: Any) -> jnp.dtype:
    """Real dtype of at least float32 for per-element statistics (second moments, Hessian diagonals)."""
    return jnp.finfo(compute_dtype(leaf) if is_trainable(leaf) else jnp.float32).dtype


def upcast(tree: Any) -> Any:
    """Trainable leaves in their :func:`compute_dtype`, other leaves as float32 zeros (they never move)."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, compute_dtype(x)) if is_trainable(x) else jnp.zeros(jnp.shape(x), jnp.float32),
        tree,
    )


def zero_update(leaf: Any) -> Any:
    """A zero update like ``leaf`` (float0 leaves, from ``allow_int`` gradients, are already zero)."""
    if jnp.result_type(leaf) == jax.dtypes.float0:
        return leaf
    return jnp.zeros_like(leaf)


def cast_back(computed: Any, like: Any) -> Any:
    """Casts a computed update to the dtypes of ``like``; non-trainable leaves get a zero update."""
    return jax.tree.map(
        lambda c, x: c.astype(jnp.result_type(x)) if is_trainable(x) else zero_update(x), computed, like
    )


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` with 0 where the numerator is exactly 0 (so 0/0 is 0, not NaN)."""
    zero = numerator == 0
    return jnp.where(zero, jnp.zeros_like(numerator), numerator / jnp.where(zero, jnp.ones_like(denominator), denominator))


def all_finite(*trees: Any) -> jax.Array:
    """Boolean scalar: every inexact leaf of every tree is finite (integer / key leaves are ignored)."""
    checks = [jnp.all(jnp.isfinite(leaf)) for tree in trees for leaf in jax.tree.leaves(tree) if is_trainable(leaf)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def skip_non_finite(
    inner: optax.GradientTransformationExtraArgs, name: str, *, always_advance: Sequence[str] = ()
) -> optax.GradientTransformationExtraArgs:
    """Wraps a guard-free Newton-root scaler so that a non-finite step is skipped and counted.

    The step is skipped when the loss, the incoming gradient, the outgoing update or any floating
    leaf of the new state is not finite. A skipped step returns a zero update and the previous
    state, except: the fields named in ``always_advance`` (e.g. a PRNG key) take their new value,
    ``step_scale`` is 0 and ``skipped`` is incremented. The inner state must be a NamedTuple with
    fields ``step_scale`` and ``skipped`` (int32 scalar, left unchanged by ``inner``).

    Args:
      inner: the scaler; its ``update`` takes ``value=`` and returns updates in the leaves' dtypes.
      name: the public factory's name, used in error messages.
      always_advance: state fields that advance even on a skipped step.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with the same state as ``inner``; its
      ``update`` raises TypeError without ``value=`` and ValueError for a non-scalar ``value``.

    Example:
      >>> import jax.numpy as jnp
      >>> from optlab.optimizers import scale_by_newton_root
      >>> tx = scale_by_newton_root()  # already wrapped
      >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), tx.init(jnp.zeros(2)), value=1.0)
      >>> u, state.skipped
      (Array([0., 0.], dtype=float32), Array(1, dtype=int32))
    """

    def update_fn(
        updates: optax.Updates,
        state: Any,
        params: optax.Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        check_scalar_value(name, value)
        new_updates, new_state = inner.update(updates, state, params, value=value, **extra_args)
        skip = ~all_finite(value, updates, new_updates, new_state)
        kept = optax.tree.where(skip, state, new_state)
        kept = kept._replace(
            **{field: getattr(new_state, field) for field in always_advance},
            step_scale=jnp.where(skip, jnp.zeros_like(new_state.step_scale), new_state.step_scale),
            skipped=state.skipped + skip.astype(state.skipped.dtype),
        )
        # where() rather than a multiply: 0 * inf would be NaN.
        zeroed = jax.tree.map(
            lambda u: u if not is_trainable(u) else jnp.where(skip, jnp.zeros_like(u), u), new_updates
        )
        return zeroed, kept

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
