"""A stack of complex linear recurrences with Cayley propagators (lab note 003), its tasks and schedule.

Each of ``L`` layers runs ``h_t = U h_{t-1} + B x_t`` on its (layer-normed) input ``x``, reads ``y_t = Re(C h_t)``
and adds ``W gelu(y_t) + b`` to the residual stream. The propagator is the Cayley transform

.. math::
  U = (I - G/2)^{-1} (I + G/2), \\qquad G = iH, \\quad H = (P + P^H)/2 \\ \\text{("hermitian")} \\ \\text{or} \\ H = P
  \\ \\text{("free")}

so ``U`` is unitary exactly when ``H`` is Hermitian (``G`` anti-Hermitian) *and* the linear solve is exact. The
real-valued twin uses real ``P`` and ``G = (P - P^T)/2`` (orthogonal ``U``) or ``G = P``.

The solve ``(I - G/2) U = I + G/2`` and its solvers (exact LU, CG as written, CG on the normal equations,
BiCGStab, GMRES) live in :mod:`optlab.problems.cayley_solvers`; per layer the model logs the solve's relative
residual, its iterations, ``||U^H U - I||_F``, the spectral radius of ``U`` and the largest state norm on a probe
batch.

Gradient convention for complex parameters: ``jax.grad`` of a real loss ``f`` w.r.t. a complex ``z`` returns
``∂f/∂Re z - i ∂f/∂Im z``, the *conjugate* of the steepest-ascent direction. optax's Adam expects the direction
itself, so :func:`optlab.engine.loop.fit` conjugates complex gradients before the optimizer (optax's
``split_real_and_imaginary`` is the equivalent alternative: it optimizes ``Re z`` and ``Im z`` as two real leaves).
Adam's second moment of a complex leaf is ``|g|^2`` (optax), so its step is per-entry, as on the two real parts.

Tasks: the copying-memory task of the unitary-RNN literature (``k`` symbols of an alphabet of 8, a delay of ``T``
blanks, a delimiter; the memoryless baseline cross-entropy is ``k log 8 / (T + 2k)``) and character-level language
modelling on the English help text that ships with CPython (``pydoc_data.topics``, all topics in sorted order).

Example:
  >>> spec = SSMSpec(layers=2, width=8, state=4, task="copy", delay=5, copy_len=3, n_examples=16)
  >>> problem = make_problem(spec, jax.random.key(0))
  >>> params = problem.init(jax.random.key(1))
  >>> bool(jnp.isfinite(problem.value(params)))
  True
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.problems.base import Problem
# the solver names are re-exported: studies and tests reach the whole model through this one module
from optlab.problems.cayley_solvers import (SOLVERS, SolveInfo, _check_choice, cayley, cayley_switch,
                                            conjugate_gradient, generator, spectral_radius, unitary_deviation)

TASKS = ("copy", "char_lm")
SCHEDULERS = ("wsd", "cosine", "constant")
RECURRENCES = ("scan", "associative")
COPY_ALPHABET = 8  # symbols 1..8; 0 is the blank, 9 the delimiter (Arjovsky et al. 2016)
COPY_VOCAB = COPY_ALPHABET + 2
WSD_DECAY_FRACTION = 0.1  # WSD decays linearly over the last 10% of the horizon (a common choice; the note gives none)


# ------------------------------------------------------------------------------------------------ the model


class SSMSpec(NamedTuple):
    """Static structure of the model, task and solve (Python values: each distinct spec is one compiled program)."""

    layers: int = 8  # L recurrent layers
    width: int = 16  # d, the residual stream
    state: int = 16  # n, the recurrent state (complex)
    complex_valued: bool = True  # False: the real-valued twin (real P, B, C)
    hermitian: bool = True  # H = (P + P^H)/2 (unitary U) or free P (non-Hermitian drift possible)
    solver: str = "exact"
    iters: int = 20  # most iterations of an iterative solve
    recurrence: str = "scan"  # lax.scan or lax.associative_scan
    task: str = "copy"
    delay: int = 10  # copying task: blanks between the symbols and the delimiter
    copy_len: int = 5  # copying task: symbols to remember
    seq_len: int = 32  # char LM: characters per example
    n_examples: int = 256
    init_scale: float = 1.0  # std of P's entries times sqrt(n): the spread of H's eigenvalues
    solver_choices: tuple[str, ...] = ()  # non-empty: the solve is solver_choices[solver_index] (traced), not solver


def vocab_size(spec: SSMSpec) -> int:
    """Tokens of the task: 10 for copying, the printable-ASCII alphabet (+1 for other characters) for the char LM."""
    return COPY_VOCAB if spec.task == "copy" else len(_CHARS) + 1


def _normal(key, shape, scale, complex_valued):
    if complex_valued:  # E|z|^2 = scale^2, split evenly between the real and imaginary parts
        kr, ki = jax.random.split(key)
        return (scale / math.sqrt(2.0)) * (jax.random.normal(kr, shape) + 1j * jax.random.normal(ki, shape))
    return scale * jax.random.normal(key, shape)


def init_params(key: jax.Array, spec: SSMSpec) -> dict:
    """Parameters: embedding, ``L`` layers (``P``, ``B``, ``C`` complex or real; ``W``, ``b`` real), read-out.

    Every entry is drawn from one normal vector: a single random-number kernel in a compiled program. One
    ``jax.random.normal`` per array (and per layer under ``vmap``) put ~10 threefry kernels in each training
    program, measured at 8.7 s of its ~20 s XLA compile on CPU.

    Example: ``init_params(jax.random.key(0), SSMSpec(layers=2))["layers"]["P"].shape == (2, 16, 16)``.
    """
    n, d, v, L, c = spec.state, spec.width, vocab_size(spec), spec.layers, spec.complex_valued
    layout = {"P": ((L, n, n), spec.init_scale / math.sqrt(n), c), "B": ((L, n, d), 1.0 / math.sqrt(d), c),
              "C": ((L, d, n), 1.0 / math.sqrt(n), c), "W": ((L, d, d), 1.0 / math.sqrt(d), False),
              "embed": ((v, d), 1.0, False), "readout": ((d, v), 1.0 / math.sqrt(d), False)}
    sizes = [math.prod(shape) * (2 if cplx else 1) for shape, _, cplx in layout.values()]
    pieces = jnp.split(jax.random.normal(key, (sum(sizes),)), np.cumsum(sizes)[:-1].tolist())
    drawn = {}
    for (name, (shape, scale, cplx)), z in zip(layout.items(), pieces):
        if cplx:  # E|z|^2 = scale^2, split evenly between the real and imaginary parts
            re, im = jnp.split(z, 2)
            drawn[name] = (scale / math.sqrt(2.0)) * (re + 1j * im).reshape(shape)
        else:
            drawn[name] = scale * z.reshape(shape)
    layers = {k: drawn[k] for k in ("P", "B", "C", "W")}
    return {"embed": drawn["embed"], "layers": {**layers, "b": jnp.zeros((L, d))},
            "readout": drawn["readout"], "readout_b": jnp.zeros(v)}


def real_parameter_count(params: dict) -> int:
    """Real numbers in ``params`` (a complex entry counts 2). Example: the complex model vs its real twin."""
    return sum(int(x.size) * (2 if jnp.iscomplexobj(x) else 1) for x in jax.tree.leaves(params))


def twin_state(spec: SSMSpec) -> int:
    """State width of the real twin with (to rounding) as many real parameters per layer as the complex model.

    Complex: ``2n² + 4nd`` reals in ``P, B, C``; real: ``m² + 2md``; ``m`` solves ``m² + 2md = 2n² + 4nd``.
    """
    n, d = spec.state, spec.width
    return max(1, round(-d + math.sqrt(d * d + 2 * n * n + 4 * n * d)))


def _layer_norm(x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5)


def _recur(u, bx, recurrence: str):
    """States ``h_t = U h_{t-1} + bx_t`` (h_0 = 0) for bx of shape (T, batch, n)."""
    if recurrence == "scan":
        def step(h, inp):
            h = h @ u.T + inp
            return h, h
        _, hs = jax.lax.scan(step, jnp.zeros_like(bx[0]), bx)
        return hs
    # associative form: element t is the affine map h -> M_t h + c_t; composing two is (M2 M1, M2 c1 + c2).
    # M_t = U for all t, but the combine must carry matrices: O(n^3 log T) work against O(n^2 T) for the scan
    t = bx.shape[0]
    mats = jnp.broadcast_to(u, (t,) + u.shape)

    def combine(first, second):
        m1, c1 = first
        m2, c2 = second
        return m2 @ m1, jnp.einsum("...ij,...bj->...bi", m2, c1) + c2

    _, hs = jax.lax.associative_scan(combine, (mats, bx))
    return hs


def propagators(params: dict, spec: SSMSpec, tol: Any = 1e-6,
                solver_index: Any = None) -> tuple[jax.Array, SolveInfo]:
    """Every layer's ``U`` (L, n, n) and its :class:`SolveInfo` (fields (L,)).

    With ``spec.solver_choices`` the solve is ``solver_choices[solver_index]`` (``solver_index`` may be traced).
    """
    if spec.solver_choices:
        index = 0 if solver_index is None else solver_index
        return jax.vmap(lambda p: cayley_switch(generator(p, spec.hermitian), index, spec.solver_choices,
                                                iters=spec.iters, tol=tol))(params["layers"]["P"])
    return jax.vmap(lambda p: cayley(generator(p, spec.hermitian), solver=spec.solver, iters=spec.iters,
                                     tol=tol))(params["layers"]["P"])


def apply(params: dict, tokens: jax.Array, spec: SSMSpec, tol: Any = 1e-6,
          solver_index: Any = None) -> tuple[jax.Array, dict]:
    """Logits (batch, T, vocab) for integer ``tokens`` (batch, T), and per-layer ``aux`` (each (L,)).

    ``aux`` holds ``residual``, ``iterations``, ``unitary_dev``, ``spectral_radius``, ``state_norm`` (largest
    batch-mean ``||h_t||`` over t) and ``penalty`` (``||U^H U - I||_F^2``, differentiable).
    """
    us, info = propagators(params, spec, tol, solver_index)
    x = params["embed"][tokens].transpose(1, 0, 2)  # (T, batch, d): the recurrence scans the leading axis

    def layer(x, item):
        lp, u = item
        bx = _layer_norm(x).astype(lp["B"].dtype) @ lp["B"].T
        hs = _recur(u, bx, spec.recurrence)
        y = jnp.real(hs @ lp["C"].T)
        x = x + jax.nn.gelu(y) @ lp["W"].T + lp["b"]
        return x, jnp.max(jnp.mean(jnp.linalg.norm(hs, axis=-1), axis=1))

    x, state_norm = jax.lax.scan(layer, x, (params["layers"], us))
    logits = _layer_norm(x.transpose(1, 0, 2)) @ params["readout"] + params["readout_b"]
    deviation = jax.vmap(unitary_deviation)(us)
    aux = {"residual": info.residual, "iterations": info.iterations,
           "unitary_dev": jax.lax.stop_gradient(deviation).astype(jnp.float32),
           "spectral_radius": jax.vmap(spectral_radius)(us).astype(jnp.float32),
           "state_norm": jax.lax.stop_gradient(state_norm).astype(jnp.float32), "penalty": jnp.square(deviation)}
    return logits, aux


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in nats."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


# ------------------------------------------------------------------------------------------------ tasks


_CHARS = "".join(chr(c) for c in range(32, 127)) + "\n"  # printable ASCII and newline; anything else maps to one id


def char_lm_text() -> str:
    """The char-LM corpus: CPython's English help text, ``pydoc_data.topics``, every topic in sorted key order."""
    from pydoc_data.topics import topics  # ships with CPython: no download

    return "\n".join(topics[k] for k in sorted(topics))


def encode(text: str) -> np.ndarray:
    """Character ids: index in the printable-ASCII alphabet, ``len(alphabet)`` for any other character."""
    table = {c: i for i, c in enumerate(_CHARS)}
    return np.asarray([table.get(c, len(_CHARS)) for c in text], dtype=np.int32)


def char_lm_data(key: jax.Array, n: int, seq_len: int) -> dict:
    """``n`` random windows of ``seq_len + 1`` characters: ``tokens`` = first ``seq_len``, ``targets`` = next ones."""
    ids = jnp.asarray(encode(char_lm_text()))
    starts = jax.random.randint(key, (n,), 0, ids.shape[0] - seq_len - 1)
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice(ids, (s,), (seq_len + 1,)))(starts)
    return {"tokens": windows[:, :-1], "targets": windows[:, 1:]}


def copy_data(key: jax.Array, n: int, delay: int, copy_len: int) -> dict:
    """The copying-memory task: ``copy_len`` symbols, ``delay`` blanks, output the symbols after the delimiter.

    Input: symbols, ``delay - 1`` blanks, delimiter, ``copy_len`` blanks (length ``delay + 2 copy_len``); target:
    blanks, then the symbols in the last ``copy_len`` positions.
    """
    symbols = jax.random.randint(key, (n, copy_len), 1, COPY_ALPHABET + 1)
    blanks = jnp.zeros((n, delay - 1), jnp.int32)
    delimiter = jnp.full((n, 1), COPY_ALPHABET + 1, jnp.int32)
    tail = jnp.zeros((n, copy_len), jnp.int32)
    tokens = jnp.concatenate([symbols, blanks, delimiter, tail], axis=1)
    targets = jnp.concatenate([jnp.zeros((n, delay + copy_len), jnp.int32), symbols], axis=1)
    return {"tokens": tokens, "targets": targets}


def memoryless_ce(delay: int, copy_len: int) -> float:
    """Cross-entropy of the best memoryless strategy on the copying task: ``k log 8 / (T + 2k)`` nats per position.

    It predicts blanks until the delimiter, then uniform symbols; a loss at this value has learned nothing to copy.
    """
    return copy_len * math.log(COPY_ALPHABET) / (delay + 2 * copy_len)


def make_data(key: jax.Array, spec: SSMSpec) -> dict:
    """The task's data set (``n_examples`` sequences)."""
    if spec.task == "copy":
        return copy_data(key, spec.n_examples, spec.delay, spec.copy_len)
    return char_lm_data(key, spec.n_examples, spec.seq_len)


def check_spec(spec: SSMSpec) -> None:
    """Raise ValueError naming the first field of ``spec`` outside its allowed values."""
    _check_choice("solver", spec.solver, SOLVERS)
    _check_choice("task", spec.task, TASKS)
    _check_choice("recurrence", spec.recurrence, RECURRENCES)
    for s in spec.solver_choices:
        _check_choice("solver_choices", s, SOLVERS)
    for name in ("layers", "width", "state", "iters", "delay", "copy_len", "seq_len", "n_examples"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not spec.init_scale > 0:
        raise ValueError(f"init_scale must be > 0, got {spec.init_scale!r}")


def make_problem(spec: SSMSpec, key: jax.Array, *, unitary_lambda: Any = 0.0, tol: Any = 1e-6,
                 probe: int = 8, solver_index: Any = None) -> Problem:
    """The task as a :class:`~optlab.problems.base.Problem`: loss = cross-entropy + ``unitary_lambda · Σ_l ||U^H U - I||²_F``.

    ``metrics(params)`` gives per-layer arrays (L,) (``residual``, ``iterations``, ``unitary_dev``,
    ``spectral_radius``, ``state_norm`` on the first ``probe`` examples) and ``ce`` (task cross-entropy, nats) there.
    ``unitary_lambda``, ``tol`` and ``solver_index`` (with ``spec.solver_choices``) may be traced (grid axes).

    Example: ``make_problem(SSMSpec(task="char_lm"), jax.random.key(0)).data["tokens"].shape == (256, 32)``.
    """
    check_spec(spec)
    data = make_data(key, spec)
    probe_batch = jax.tree.map(lambda v: v[:probe], data)

    def loss(params, batch):
        logits, aux = apply(params, batch["tokens"], spec, tol, solver_index)
        return cross_entropy(logits, batch["targets"]) + unitary_lambda * jnp.sum(aux["penalty"])

    def metrics(params):
        logits, aux = apply(params, probe_batch["tokens"], spec, tol, solver_index)
        del aux["penalty"]  # the deviation itself is logged; its square adds nothing
        return {**aux, "ce": cross_entropy(logits, probe_batch["targets"])}

    return Problem(f"cayley-ssm-{spec.task}", lambda k: init_params(k, spec), loss, data, metrics)


# ------------------------------------------------------------------------------------------------ training recipe


def lr_multiplier(step: Any, *, kind: Any, warmup: Any, horizon: int) -> jax.Array:
    """The learning-rate multiplier at ``step``: linear warm-up ``(t + 1) / warmup``, times the scheduler's shape.

    ``kind`` is an index into ``SCHEDULERS`` (0 wsd: 1 until the last 10% of ``horizon``, then linear to 0; 1 cosine:
    half cosine from ``warmup`` to 0 at ``horizon``; 2 constant: 1). ``kind`` and ``warmup`` may be traced (ablation
    switches). A warm-up longer than the run never ends: the run's largest multiplier is then below 1.

    Example: ``lr_multiplier(49, kind=1, warmup=200, horizon=100)`` is 0.25 (step 50 of a 200-step ramp).
    """
    t = jnp.asarray(step, jnp.float32)
    warmup = jnp.asarray(warmup, jnp.float32)
    ramp = jnp.where(warmup > 0, jnp.minimum((t + 1.0) / jnp.maximum(warmup, 1.0), 1.0), 1.0)
    decay_start = (1.0 - WSD_DECAY_FRACTION) * horizon
    wsd = jnp.clip((horizon - t) / (horizon - decay_start), 0.0, 1.0)
    progress = jnp.clip((t - warmup) / jnp.maximum(horizon - warmup, 1.0), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    shape = jnp.select([kind == 0, kind == 1], [wsd, cosine], 1.0)
    return ramp * shape


def optimizer(learning_rate: Any, weight_decay: Any) -> optax.GradientTransformation:
    """AdamW with decoupled weight decay (optax: ``-lr (adam + wd · p)``); both may be traced. Complex leaves allowed."""
    return optax.adamw(learning_rate, weight_decay=weight_decay)


__all__ = ["COPY_VOCAB", "RECURRENCES", "SCHEDULERS", "SOLVERS", "SSMSpec", "SolveInfo", "TASKS", "apply", "cayley", "cayley_switch",
           "char_lm_data", "char_lm_text", "check_spec", "conjugate_gradient", "copy_data", "cross_entropy", "encode",
           "generator", "init_params", "lr_multiplier", "make_data", "make_problem", "memoryless_ce", "optimizer",
           "propagators", "real_parameter_count", "spectral_radius", "twin_state", "unitary_deviation", "vocab_size"]
