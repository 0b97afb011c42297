"""Layers to prune and correct: synthetic transformer-like layers, a layer of a small trained MLP, or a user's file.

A :class:`Layer` holds calibration inputs ``x`` (n, d_in), dense weights ``w`` (d_in, d_out) of ``y = x @ w`` and
held-out inputs ``x_test`` from the same distribution (0 rows when unknown), so a correction fitted on ``x`` can be
checked on inputs it has not seen.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
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


def transformer_activations(key, n: int, d_in: int, *, rank: int | None = None, n_outliers: int = 4,
                            outlier_scale: float = 20.0, tail: float = 0.5) -> jax.Array:
    """Inputs that look like transformer hidden states: correlated, heavy-tailed, with a few outlier channels.

    ``x = (f A + ε) · diag(c)`` with a shared low-rank factor ``f A`` (rank ``d_in/8``), heavy-tailed noise
    ``ε = z · exp(tail · z')`` (a Gaussian scale mixture, kurtosis ``3 e^{4 tail²}``), log-normal channel scales
    ``c``, and ``n_outliers`` channels whose scale and mean are ``outlier_scale`` times larger (the "massive
    activation" channels of LLMs). Rows are i.i.d.; the result is scaled to unit RMS.

    Example::

        x = transformer_activations(jax.random.key(0), 512, 256)
    """
    rank = max(1, d_in // 8) if rank is None else rank
    k_factor, k_mix, k_noise, k_tail, k_scale, k_out, k_sign = jax.random.split(key, 7)

    def heavy(k_a, k_b, shape):
        return jax.random.normal(k_a, shape) * jnp.exp(tail * jax.random.normal(k_b, shape) - tail**2)

    k_f1, k_f2 = jax.random.split(k_factor)
    factors = heavy(k_f1, k_f2, (n, rank))
    mixing = jax.random.normal(k_mix, (rank, d_in)) / jnp.sqrt(rank)
    x = factors @ mixing + heavy(k_noise, k_tail, (n, d_in))
    scales = jnp.exp(0.5 * jax.random.normal(k_scale, (d_in,)))
    outliers = jax.random.permutation(k_out, d_in)[: min(n_outliers, d_in)]
    boost = jnp.ones(d_in).at[outliers].set(outlier_scale)
    signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, outliers.shape), 1.0, -1.0)
    offset = jnp.zeros(d_in).at[outliers].set(outlier_scale * signs)
    x = x * scales * boost + offset
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


@functools.partial(jax.jit, static_argnames=("d_in", "d_out", "n", "n_test", "task_dim", "steps", "batch_size"))
def mlp_layer(key, d_in: int = 128, d_out: int = 128, n: int = 512, *, n_test: int | None = None,
              task_dim: int = 16, steps: int = 300, batch_size: int = 128, learning_rate: float = 3e-3) -> Layer:
    """The middle layer of a small MLP that optlab trains itself, with its real input activations.

    A teacher MLP defines a regression task on ``u ~ N(0, I_task_dim)``; the student ``task_dim → d_in → d_out → 1``
    (GELU) is trained with Adam for ``steps`` mini-batch steps in one ``lax.scan``. The layer is the student's
    ``d_in → d_out`` weight (as (d_in, d_out)); ``x`` and ``x_test`` are its inputs (first hidden activations) on
    fresh samples of ``u``. Pure in ``key``, so it vmaps over seeds.

    Example::

        layer = mlp_layer(jax.random.key(0), 64, 64, 256, steps=200)
    """
    n_test = n if n_test is None else n_test
    k_teacher, k_student, k_data, k_cal = jax.random.split(key, 4)
    teacher = eqx.nn.MLP(task_dim, 1, 32, 2, activation=jnp.tanh, key=k_teacher)
    k1, k2, k3 = jax.random.split(k_student, 3)
    student = (eqx.nn.Linear(task_dim, d_in, key=k1), eqx.nn.Linear(d_in, d_out, key=k2),
               eqx.nn.Linear(d_out, 1, key=k3))

    def hidden(model, u):
        return jax.nn.gelu(jax.vmap(model[0])(u))

    def predict(model, u):
        return jax.vmap(model[2])(jax.nn.gelu(jax.vmap(model[1])(hidden(model, u))))

    def loss(model, u):
        return jnp.mean((predict(model, u) - jax.vmap(teacher)(u)) ** 2)

    optimizer = optax.adam(learning_rate)
    params, static = eqx.partition(student, eqx.is_array)

    def step(state, k):
        params, opt_state = state
        u = jax.random.normal(k, (batch_size, task_dim))
        grads = jax.grad(lambda p: loss(eqx.combine(p, static), u))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = lax.scan(step, (params, optimizer.init(params)), jax.random.split(k_data, steps))
    model = eqx.combine(params, static)
    x_all = hidden(model, jax.random.normal(k_cal, (n + n_test, task_dim)))
    return Layer(x_all[:n], model[1].weight.T, x_all[n:])


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
