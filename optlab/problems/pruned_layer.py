"""Layers to prune and correct: synthetic transformer-like layers, a layer of a small trained MLP, or a user's file.

A :class:`Layer` holds calibration inputs ``x`` (n, d_in), dense weights ``w`` (d_in, d_out) of ``y = x @ w`` and
held-out inputs ``x_test`` from the same distribution (0 rows when unknown), so a correction fitted on ``x`` can be
checked on inputs it has not seen.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax


class Layer(NamedTuple):
    """A linear layer ``y = x @ w`` with its calibration and held-out inputs."""

    x: jax.Array  # (n, d_in) calibration inputs
    w: jax.Array  # (d_in, d_out) dense weights
    x_test: jax.Array  # (n_test, d_in) held-out inputs (n_test may be 0)


def layer_error(x, w, w_dense) -> jax.Array:
    """Output error of ``w`` against ``w_dense`` on inputs ``x``: ``||x (w - w_dense)||²_F / (n · d_out)``."""
    residual = x @ (w - w_dense)
    return jnp.sum(residual * residual) / residual.size


def _normal_pieces(key, *shapes) -> list[jax.Array]:
    """Standard normal arrays of the given shapes from a single draw (one RNG kernel compiles much faster)."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(key, (sum(sizes),))
    starts = np.cumsum([0] + sizes[:-1])
    return [flat[start:start + size].reshape(shape) for start, size, shape in zip(starts, sizes, shapes)]


def transformer_activations(key, n: int, d_in: int, *, rank: int | None = None, n_outliers: int = 4,
                            outlier_scale: float = 20.0, tail: float = 0.5) -> jax.Array:
    """Inputs that look like transformer hidden states: correlated, heavy-tailed, with a few outlier channels.

    ``x = (f A + ε) · diag(c)`` with a shared low-rank factor ``f A`` (rank ``d_in/8``), heavy-tailed noise
    ``ε = z · exp(tail · z' - tail²)`` (a Gaussian scale mixture, kurtosis ``3 e^{4 tail²}``; ``f`` likewise),
    log-normal channel scales ``c``, and ``n_outliers`` channels whose scale and mean are ``outlier_scale`` times
    larger (the "massive activation" channels of LLMs). Rows are i.i.d.; the result is scaled to unit RMS.

    Example::

        x = transformer_activations(jax.random.key(0), 512, 256)
    """
    rank = max(1, d_in // 8) if rank is None else rank
    n_outliers = min(n_outliers, d_in)
    f_a, f_b, mixing, z_a, z_b, log_scale, pick, sign = _normal_pieces(
        key, (n, rank), (n, rank), (rank, d_in), (n, d_in), (n, d_in), (d_in,), (d_in,), (n_outliers,))

    def heavy(z, z_tail):
        return z * jnp.exp(tail * z_tail - tail**2)

    x = heavy(f_a, f_b) @ (mixing / jnp.sqrt(rank)) + heavy(z_a, z_b)
    outliers = lax.top_k(pick, n_outliers)[1]  # a uniformly random set of channels
    boost = jnp.ones(d_in).at[outliers].set(outlier_scale)
    offset = jnp.zeros(d_in).at[outliers].set(outlier_scale * jnp.sign(sign))
    x = x * jnp.exp(0.5 * log_scale) * boost + offset
    return x / jnp.sqrt(jnp.mean(x * x))


@functools.partial(jax.jit, static_argnames=("d_in", "d_out", "n", "n_test", "rank", "n_outliers"))
def synthetic_layer(key, d_in: int = 256, d_out: int = 256, n: int = 512, *, n_test: int | None = None,
                    rank: int | None = None, n_outliers: int = 4, outlier_scale: float = 20.0,
                    tail: float = 0.5) -> Layer:
    """A layer with transformer-like inputs (:func:`transformer_activations`) and Gaussian weights ``N(0, 1/d_in)``.

    Args:
      key: PRNG key.
      d_in, d_out: weight shape.
      n: calibration rows.
      n_test: held-out rows (default ``n``).
      rank, n_outliers, outlier_scale, tail: passed to :func:`transformer_activations`.

    Example::

        layer = synthetic_layer(jax.random.key(0), 128, 128, 256)
    """
    n_test = n if n_test is None else n_test
    k_x, k_w = jax.random.split(key)
    x_all = transformer_activations(k_x, n + n_test, d_in, rank=rank, n_outliers=n_outliers,
                                    outlier_scale=outlier_scale, tail=tail)
    w = jax.random.normal(k_w, (d_in, d_out)) / jnp.sqrt(d_in)
    return Layer(x_all[:n], w, x_all[n:])


def _dense(w, b, x):
    return x @ w + b


@functools.partial(jax.jit, static_argnames=("d_in", "d_out", "n", "n_test", "task_dim", "steps", "batch_size"))
def mlp_layer(key, d_in: int = 128, d_out: int = 128, n: int = 512, *, n_test: int | None = None,
              task_dim: int = 16, steps: int = 300, batch_size: int = 128, learning_rate: float = 3e-3) -> Layer:
    """The middle layer of a small MLP that optlab trains itself, with its real input activations.

    A random teacher ``tanh`` network defines a regression task on ``u ~ N(0, I_task_dim)``; the student MLP
    ``task_dim → d_in → d_out → 1`` (GELU) is trained with ``optax.adam`` for ``steps`` mini-batch steps in one
    ``lax.scan``. The layer is the student's ``d_in → d_out`` weight; ``x`` and ``x_test`` are its inputs (the first
    hidden activations) on fresh samples of ``u``. Pure in ``key``, so it vmaps over seeds.

    Example::

        layer = mlp_layer(jax.random.key(0), 64, 64, 256, steps=200)
    """
    n_test = n if n_test is None else n_test
    t1, t2, w1, w2, w3, batches, u_cal = _normal_pieces(
        key, (task_dim, 32), (32, 1), (task_dim, d_in), (d_in, d_out), (d_out, 1), (steps, batch_size, task_dim),
        (n + n_test, task_dim))

    def teacher(u):
        return jnp.tanh(u @ t1 / jnp.sqrt(task_dim)) @ t2 / jnp.sqrt(32.0)

    params = {"w1": w1 / jnp.sqrt(task_dim), "b1": jnp.zeros(d_in), "w2": w2 / jnp.sqrt(d_in),
              "b2": jnp.zeros(d_out), "w3": w3 / jnp.sqrt(d_out), "b3": jnp.zeros(1)}

    def hidden(p, u):
        return jax.nn.gelu(_dense(p["w1"], p["b1"], u))

    def loss(p, u):
        out = _dense(p["w3"], p["b3"], jax.nn.gelu(_dense(p["w2"], p["b2"], hidden(p, u))))
        return jnp.mean((out - teacher(u)) ** 2)

    optimizer = optax.adam(learning_rate)

    def step(state, u):
        p, opt_state = state
        updates, opt_state = optimizer.update(jax.grad(loss)(p, u), opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    (params, _), _ = lax.scan(step, (params, optimizer.init(params)), batches)
    x_all = hidden(params, u_cal)
    return Layer(x_all[:n], params["w2"], x_all[n:])


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_layer(path, layer_or_x, w=None, **extra) -> Path:
    """Write ``x``, ``w`` (and ``x_test`` when non-empty, plus any ``extra`` arrays) to ``.npz`` or
    ``.safetensors``, atomically.

    Example::

        save_layer("layer.npz", layer, w_corrected=res.weights)
    """
    path = Path(path)
    if isinstance(layer_or_x, Layer):
        if w is not None:
            raise TypeError("save_layer(path, layer) takes no separate w")
        arrays = {"x": layer_or_x.x, "w": layer_or_x.w}
        if layer_or_x.x_test.shape[0]:
            arrays["x_test"] = layer_or_x.x_test
    else:
        if w is None:
            raise TypeError("save_layer(path, x, w) needs w")
        arrays = {"x": layer_or_x, "w": w}
    arrays.update(extra)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()}
    if path.suffix == ".npz":
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        def write(tmp):
            save_file(arrays, tmp)
    else:
        raise ValueError(f"path must end in .npz or .safetensors, got {str(path)!r}")
    _atomic(path, write)
    return path


def load_layer(path, *, x_key: str = "x", w_key: str = "w", x_test_key: str = "x_test",
               w_layout: str = "in_out") -> Layer:
    """Read a layer from ``.npz`` or ``.safetensors``.

    Args:
      path: file written by :func:`save_layer` or by the user (e.g. ``np.savez("l.npz", x=acts, w=weight)``).
      x_key, w_key, x_test_key: array names in the file (``x_test`` is optional).
      w_layout: ``"in_out"`` if ``w`` is (d_in, d_out) (``y = x @ w``), ``"out_in"`` for a PyTorch
        ``nn.Linear.weight`` (d_out, d_in), which is transposed.

    Returns:
      :class:`Layer` with float arrays (``x_test`` has 0 rows if absent).

    Example::

        layer = load_layer("layer.safetensors", w_layout="out_in")
    """
    path = Path(path)
    if w_layout not in ("in_out", "out_in"):
        raise ValueError(f"w_layout must be 'in_out' or 'out_in', got {w_layout!r}")
    if not path.exists():
        raise FileNotFoundError(f"no layer file at {str(path)!r}")
    if path.suffix == ".npz":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    else:
        raise ValueError(f"path must end in .npz or .safetensors, got {str(path)!r}")
    missing = [k for k in (x_key, w_key) if k not in arrays]
    if missing:
        raise ValueError(f"{str(path)!r} has no array(s) {missing}; it holds {sorted(arrays)} "
                         f"(choose names with x_key=, w_key=)")
    x, w = np.asarray(arrays[x_key]), np.asarray(arrays[w_key])
    if w_layout == "out_in" and w.ndim == 2:
        w = w.T
    x_test = np.asarray(arrays[x_test_key]) if x_test_key in arrays else np.zeros((0,) + x.shape[1:], x.dtype)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"{str(path)!r}: need x (n, d_in) and w (d_in, d_out) with matching d_in, got "
                         f"{x_key} {x.shape} and {w_key} {w.shape} (w_layout={w_layout!r})")
    if x_test.ndim != 2 or x_test.shape[1] != x.shape[1]:
        raise ValueError(f"{str(path)!r}: {x_test_key} must be (n_test, d_in={x.shape[1]}), got {x_test.shape}")
    for name, a in ((x_key, x), (w_key, w)):
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{str(path)!r}: {name} must hold floats, got dtype {a.dtype}")
    return Layer(jnp.asarray(x), jnp.asarray(w), jnp.asarray(x_test, x.dtype))
