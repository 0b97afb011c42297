"""The dtypes ``fit`` accepts and how a pytree is cast to one, keeping complex leaves complex.

A complex dtype names the precision of both kinds of leaves: its real twin for real leaves, itself for complex
ones; a real dtype casts complex leaves to its complex twin (float32 -> complex64, float64 -> complex128), and
float16 / bfloat16, which have none, are refused for complex leaves (casting would drop the imaginary part).

Example:
  >>> _resolve_dtype("complex64")
  dtype('float32')
  >>> cast = _cast({"w": jnp.ones(2), "z": jnp.ones(2, jnp.complex64), "n": jnp.arange(2)}, jnp.dtype("float16"))
  Traceback (most recent call last):
  ...
  ValueError: dtype='float16' has no complex twin for a complex leaf; ...
  >>> cast = _cast({"w": jnp.ones(2), "n": jnp.arange(2)}, jnp.dtype("float16"))  # integer leaves are kept
  >>> cast["w"].dtype, cast["n"].dtype == jnp.arange(2).dtype
  (dtype('float16'), True)
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")
# A complex dtype names the precision of both kinds of leaves: its real twin for real leaves, itself for complex.
_REAL_OF = {"complex64": "float32", "complex128": "float64"}
_COMPLEX_OF = {"float32": jnp.complex64, "float64": jnp.complex128}


def _resolve_dtype(dtype: Any) -> jnp.dtype:
    """The real compute dtype named by ``dtype`` (a complex dtype names its real twin)."""
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed values: {DTYPES}")
    name = _REAL_OF.get(name, name)
    if name == "float64" and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError(
            f"dtype={dtype!r} needs 64-bit JAX: run inside `with jax.enable_x64(True):` or set JAX_ENABLE_X64=1"
        )
    return jnp.dtype(name)


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    """Casts real inexact leaves to ``dtype`` and complex leaves to its complex twin; integer and boolean leaves are kept.

    Casting a complex leaf to a real dtype would silently drop its imaginary part, so a complex leaf with a real
    dtype that has no complex twin (float16, bfloat16) is refused.
    """
    def cast(x):
        x = jnp.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else x
        if not eqx.is_inexact_array(x):
            return x
        if jnp.iscomplexobj(x):
            if dtype.name not in _COMPLEX_OF:
                raise ValueError(
                    f"dtype={dtype.name!r} has no complex twin for a complex leaf; use dtype='complex64' "
                    "(float32 / complex64) or 'complex128'"
                )
            return x.astype(_COMPLEX_OF[dtype.name])
        return x.astype(dtype)
    return jax.tree.map(cast, tree)
