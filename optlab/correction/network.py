"""Prune → calibrate → correct a whole MLP, layer by layer, every method on the same calibration Gram.

For each linear layer ``y = h @ w + b`` (optlab's (d_in, d_out) orientation; equinox stores ``weight = wᵀ``) in
order, :func:`compress_layer` forms ``H = hᵀh`` from that layer's calibration inputs ``h``, builds the mask, and
applies one method; everything it reports about the layer objective

.. math:: E(w) = \\|h (w - w_d)\\|_F^2 / (n \\, d_{out}) = \\operatorname{tr}((w - w_d)^\\top H (w - w_d)) / (n d_{out})

is computed from that one ``H``. Calibration inputs are taken either ``"sequential"``ly (``h`` is the output of the
earlier layers *after* they were pruned and corrected, as SparseGPT and Wanda do) or ``"one_shot"`` (every layer's
``h`` comes from the dense network). :func:`compress_layer` is one jitted program per layer; :func:`prune_network`
strings them together and is itself pure, so ``jax.jit(jax.vmap(prune_network))`` runs many calibration samples
(or greedy cells) as one program.

Methods (:data:`METHODS`): ``"dense"`` (nothing pruned), ``"magnitude"`` and ``"wanda"`` (masks alone), and four
corrections that keep the reference mask (``mask_method``, magnitude by default): ``"greedy_fixed"``,
``"greedy_optimal"`` (bounded by ``max_relative``), ``"sparsegpt"``, ``"admm"``; and ``"least_squares"`` (the exact
masked least squares, the ceiling). ``share`` is the share of the ceiling's reduction of ``E`` that a method
achieves, against the reference mask's pruned weights on the same ``H``: 0 for pruning alone, 1 for the ceiling.

Example::

    model = digits.trained(0)
    x = digits.load(0).calib[0]
    out = prune_network(model, x, method="greedy_fixed", sparsity=0.5, magnitude=0.01, fraction=0.1)
    float(digits.accuracy(out.model, *digits.load(0).test)), out.stats.share
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optlab.correction.greedy import correct_from_gram
from optlab.correction.pruning import METHODS as MASK_METHODS
from optlab.correction.pruning import parse_pattern, prune
from optlab.correction.reconstruct import _cho_solve, _cholesky, _damped, admm_update, sparsegpt_update

METHODS = ("dense", "magnitude", "wanda", "greedy_fixed", "greedy_optimal", "sparsegpt", "admm", "least_squares")
CORRECTIONS = ("greedy_fixed", "greedy_optimal", "sparsegpt", "admm", "least_squares")  # keep the reference mask
CALIBRATIONS = ("sequential", "one_shot")
# Relative damping of the ceiling's solves: hidden ReLU activations leave H singular (dead units, n ~ d_in); this
# keeps the Cholesky finite while moving E by far less than any difference between methods reported here.
CEILING_DAMPING = 1e-6


class LayerStats(NamedTuple):
    """Per-layer record of one compression (leading axis: the layers, input to output)."""

    error_pruned: jax.Array  # (L,) E of the reference mask's pruned weights on the layer's inputs
    error: jax.Array  # (L,) E of the method's weights
    error_ceiling: jax.Array  # (L,) E of the exact masked least squares with the reference mask (NaN if skipped)
    share: jax.Array  # (L,) (error_pruned - error) / (error_pruned - error_ceiling); NaN when either is unknown
    sparsity: jax.Array  # (L,) share of exactly-zero weights
    applied_share: jax.Array  # (L,) greedy: positions changed / K; NaN for the other methods
    stopped_early: jax.Array  # (L,) greedy: no unused position improved before K; False for the others


class Compressed(NamedTuple):
    """What :func:`prune_network` returns."""

    model: Any  # the model with every linear layer's weight replaced
    stats: LayerStats  # per layer


def check_options(method: str, sparsity: Any, calibration: str = "sequential",
                  mask_method: str = "magnitude") -> None:
    """ValueError naming the argument when a static option of :func:`prune_network` is not allowed."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if mask_method not in ("magnitude", "wanda"):
        raise ValueError(f"mask_method must be 'magnitude' or 'wanda' (per output), got {mask_method!r}")
    if isinstance(sparsity, str):
        parse_pattern(sparsity)
    elif isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a float in [0, 1) or an 'N:M' pattern such as '2:4', got {sparsity!r}")


def kept_per_output(d_in: int, sparsity: Any) -> int:
    """Weights each output keeps under a per-output mask: ``d_in - round(s · d_in)``, or ``d_in · N / M``."""
    if isinstance(sparsity, str):
        keep, group = parse_pattern(sparsity)
        return d_in // group * keep
    return d_in - int(np.round(sparsity * d_in))


def ceiling_weights(gram, w_dense, mask, kept: int, *, damping=CEILING_DAMPING) -> jax.Array:
    """Exact masked least squares on the ``kept`` rows of each output only (every column keeps exactly ``kept``).

    The same minimiser as :func:`optlab.correction.reconstruct.masked_least_squares`, solved on the (kept × kept)
    subsystem ``H[M, M] w[M] = (H w_d)[M]`` instead of the padded (d_in × d_in) one: at 50-70 % sparsity that is
    8-35× fewer flops for the factorisations. The factorisations go through reconstruct's unbatched wrappers
    (safe to mix with other LAPACK calls in one program, see :mod:`optlab.correction.reconstruct`).
    """
    d_in, d_out = w_dense.shape
    target = gram @ w_dense
    damped = _damped(gram, damping)
    rows = jnp.argsort(~mask, axis=0, stable=True)[:kept].T  # (d_out, kept): the kept rows of each output

    def column(args):
        idx, rhs = args
        return _cho_solve(_cholesky(damped[idx[:, None], idx[None, :]]), rhs[idx])

    solved = jax.lax.map(column, (rows, target.T), batch_size=min(32, d_out))  # (d_out, kept)
    out = jnp.zeros((d_out, d_in), w_dense.dtype).at[jnp.arange(d_out)[:, None], rows].set(solved)
    return out.T


def _objective(gram, w, w_dense, n):
    diff = w - w_dense
    return jnp.sum(diff * (gram @ diff)) / (n * w.shape[1])


@functools.partial(jax.jit, static_argnames=("method", "sparsity", "mask_method", "max_steps", "ceiling"))
def compress_layer(x, w_dense, *, method: str, sparsity: Any, mask_method: str = "magnitude", magnitude=0.01,
                   fraction=0.10, max_relative=0.05, max_steps: int | None = None, damping=0.01,
                   admm_iterations: int = 20, ceiling: bool = True) -> tuple[jax.Array, LayerStats]:
    """One layer: Gram of ``x``, mask, method, and the layer-objective record (one jitted program).

    Args:
      x: (n, d_in) calibration inputs of this layer.
      w_dense: (d_in, d_out) dense weights.
      method: one of :data:`METHODS` (static).
      sparsity: share in [0, 1) or ``"N:M"`` (static).
      mask_method: the reference mask, ``"magnitude"`` or ``"wanda"`` (static); ``"wanda"`` rows always use Wanda's.
      magnitude, fraction: greedy fixed step and share of positions (may be traced, e.g. a vmapped grid).
      max_relative: bound ``|δ|/|w|`` of ``"greedy_optimal"``.
      max_steps: static greedy scan length (>= every ``round(fraction · d_in)``; default d_in).
      damping: SparseGPT's relative damping.
      admm_iterations: ADMM iterations.
      ceiling: also solve the masked least squares for ``error_ceiling`` / ``share`` (static; off saves a solve
        per output when only the network's accuracy is wanted, e.g. in a grid of greedy cells).

    Returns:
      ``(w, stats)`` with ``w`` (d_in, d_out) and the stats of one layer (scalar fields).
    """
    n, d_in = x.shape
    gram = x.T @ x
    kept = kept_per_output(d_in, sparsity)
    if method == "dense":
        nan, zero = jnp.asarray(jnp.nan, w_dense.dtype), jnp.zeros((), w_dense.dtype)
        return w_dense, LayerStats(nan, zero, nan, nan, jnp.mean(w_dense == 0), nan, jnp.asarray(False))
    w_pruned, mask = prune(w_dense, x, sparsity=sparsity, method=mask_method)
    diff = w_pruned - w_dense
    cross, r_sq = gram @ diff, jnp.sum(diff * (gram @ diff))
    applied, stopped = jnp.asarray(jnp.nan, w_dense.dtype), jnp.asarray(False)
    if method == "magnitude":
        w = prune(w_dense, sparsity=sparsity, method="magnitude")[0]
    elif method == "wanda":
        w = prune(w_dense, x, sparsity=sparsity, method="wanda")[0]
    elif method in ("greedy_fixed", "greedy_optimal"):
        steps = d_in if max_steps is None else max_steps
        options = ({"mode": "fixed", "magnitude": magnitude} if method == "greedy_fixed"
                   else {"mode": "optimal", "max_relative": max_relative})
        result = correct_from_gram(gram, cross, w_pruned, n=n, r_sq=r_sq, fraction=fraction, mask=mask,
                                   max_steps=steps, **options)
        w = result.weights
        applied = result.n_applied / jnp.maximum(result.max_positions, 1)
        stopped = result.stopped_early
    elif method == "sparsegpt":
        w = sparsegpt_update(gram, w_dense, mask, damping=damping)
    elif method == "admm":
        w = admm_update(gram, w_dense, mask, iterations=admm_iterations)
    else:
        w = ceiling_weights(gram, w_dense, mask, kept)
    error_pruned, error = _objective(gram, w_pruned, w_dense, n), _objective(gram, w, w_dense, n)
    if ceiling:
        best = w if method == "least_squares" else ceiling_weights(gram, w_dense, mask, kept)
        error_ceiling = _objective(gram, best, w_dense, n)
        gap = error_pruned - error_ceiling
        share = jnp.where(gap > 0, (error_pruned - error) / jnp.where(gap > 0, gap, 1.0), jnp.nan)
    else:
        error_ceiling = share = jnp.asarray(jnp.nan, w_dense.dtype)
    return w, LayerStats(error_pruned, error, error_ceiling, share, jnp.mean(w == 0), applied, stopped)


def prune_network(model, x, *, method: str, sparsity: Any, calibration: str = "sequential",
                  mask_method: str = "magnitude", magnitude=0.01, fraction=0.10, max_relative=0.05,
                  max_fraction: float | None = None, damping=0.01, ceiling: bool = True,
                  activation: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> Compressed:
    """Compress every linear layer of ``model`` in order with one method; pure (jit / vmap it over samples).

    Args:
      model: an equinox MLP whose ``layers`` are ``eqx.nn.Linear`` with ``activation`` between them (none after
        the last), e.g. :class:`optlab.problems.digits.DigitsMLP`.
      x: (n, d_in) calibration inputs of the network (never the test split: they set every Gram).
      method, sparsity, mask_method: see :func:`compress_layer` (static).
      calibration: ``"sequential"`` (each layer's inputs come from the already compressed earlier layers) or
        ``"one_shot"`` (all from the dense network).
      magnitude, fraction, max_relative, damping, ceiling: see :func:`compress_layer`.
      max_fraction: static upper bound of ``fraction`` when it is traced (sets the greedy scan length
        ``round(max_fraction · d_in)``); None: ``fraction`` itself when concrete, else 1.
      activation: the nonlinearity between layers.

    Returns:
      :class:`Compressed`: the new model and :class:`LayerStats` with one entry per layer.

    Example::

        out = jax.jit(jax.vmap(lambda xs: prune_network(model, xs, method="sparsegpt", sparsity="2:4")))(samples)
    """
    check_options(method, sparsity, calibration, mask_method)
    if not hasattr(model, "layers") or not all(isinstance(layer, eqx.nn.Linear) for layer in model.layers):
        raise TypeError(f"model must have a tuple `layers` of eqx.nn.Linear, got {type(model).__name__}")
    if max_fraction is None:
        concrete = None if isinstance(fraction, jax.core.Tracer) else np.asarray(fraction)
        max_fraction = float(concrete) if concrete is not None and concrete.ndim == 0 else 1.0
    h_now = h_dense = jnp.asarray(x)
    layers, stats = [], []
    last = len(model.layers) - 1
    for index, layer in enumerate(model.layers):
        w_dense = layer.weight.T
        d_in = w_dense.shape[0]
        steps = max(1, min(d_in, int(np.round(max_fraction * d_in))))
        w, record = compress_layer(h_now if calibration == "sequential" else h_dense, w_dense, method=method,
                                   sparsity=sparsity, mask_method=mask_method, magnitude=magnitude,
                                   fraction=fraction, max_relative=max_relative, max_steps=steps, damping=damping,
                                   ceiling=ceiling)
        layers.append(eqx.tree_at(lambda lin: lin.weight, layer, w.T.astype(layer.weight.dtype)))
        stats.append(record)
        act = (lambda z: z) if index == last else activation
        bias = 0.0 if layer.bias is None else layer.bias
        h_now = act(h_now @ w + bias)
        h_dense = act(h_dense @ w_dense + bias)
    new_model = eqx.tree_at(lambda m: m.layers, model, tuple(layers))
    return Compressed(new_model, jax.tree.map(lambda *v: jnp.stack(v), *stats))


def calibration_samples(key: jax.Array, x_pool: jax.Array, n: int, seeds: int) -> jax.Array:
    """``seeds`` calibration samples of ``n`` rows each, drawn without replacement from ``x_pool``: (seeds, n, d).

    Seed ``s`` uses ``fold_in(key, s)``, so the first samples do not change when ``seeds`` grows.

    Example::

        samples = calibration_samples(jax.random.key(0), splits.calib[0], 256, 5)
    """
    x_pool = jnp.asarray(x_pool)
    if not isinstance(n, int) or not 1 <= n <= x_pool.shape[0]:
        raise ValueError(f"n must be an int in [1, {x_pool.shape[0]}] (rows of the pool), got {n!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
    rows = jax.vmap(lambda s: jax.random.permutation(jax.random.fold_in(key, s), x_pool.shape[0])[:n])(
        jnp.arange(seeds))
    return x_pool[rows]


__all__ = ["CALIBRATIONS", "CEILING_DAMPING", "CORRECTIONS", "METHODS", "MASK_METHODS", "Compressed", "LayerStats",
           "calibration_samples", "ceiling_weights", "check_options", "compress_layer", "kept_per_output", "prune_network"]
