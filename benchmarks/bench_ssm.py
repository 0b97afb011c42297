"""Training throughput (tokens/s) of the Cayley SSM: the recurrence as ``lax.scan`` vs ``lax.associative_scan``.

One timed unit is ``--steps`` AdamW steps of :mod:`optlab.problems.cayley_ssm` on the copying task inside one
jitted ``lax.scan`` (compile excluded: the first call is a warm-up). Tokens per step are ``batch × sequence
length``. Rows: each solver × state width × recurrence; the last column is associative / scan throughput.

Why the ratio can go either way: the scan does ``T`` sequential ``n × n`` mat-vecs (``O(n² T)`` work, ``T``
dependent steps); the associative form composes affine maps, carrying ``n × n`` matrices (``O(n³ T)`` work in
``log T`` dependent rounds). On a few CPU cores the extra work usually wins over the shorter dependency chain;
on an accelerator with long sequences it may not.

Usage::

    python benchmarks/bench_ssm.py            # widths 16 and 64, T = 50, all five solvers
    python benchmarks/bench_ssm.py --quick    # widths 8 and 16, two solvers, few steps
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from optlab.problems import cayley_ssm as cs


def make_runner(spec: cs.SSMSpec, steps: int, batch: int):
    """A jitted ``params, opt_state -> params, opt_state`` running ``steps`` full-batch AdamW steps."""
    problem = cs.make_problem(spec, jax.random.key(0), unitary_lambda=0.01)
    data = jax.tree.map(lambda v: v[:batch], problem.data)
    opt = cs.optimizer(1e-3, 0.01)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(problem.loss)(params, data)
        grads = jax.tree.map(jnp.conj, grads)  # optax's convention for complex leaves (see cayley_ssm)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    run = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), None, length=steps)[0])
    params = problem.init(jax.random.key(1))
    return run, params, opt.init(params), batch * data["tokens"].shape[1]


def tokens_per_second(spec: cs.SSMSpec, steps: int, batch: int, repeats: int) -> float:
    """Median over ``repeats`` of tokens / s (after one warm-up call that compiles)."""
    run, params, state, tokens = make_runner(spec, steps, batch)
    jax.block_until_ready(run(params, state))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(params, state))
        times.append(time.perf_counter() - start)
    return steps * tokens / statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        widths, solvers, steps, repeats, delay = (8, 16), ("exact", "cg"), 5, 3, 10
    else:
        widths, solvers, steps, repeats, delay = (16, 64), cs.SOLVERS, 20, 5, 40
    batch, layers = 16, 2
    print(f"Cayley SSM training, {layers} layers, batch {batch}, copying task T = {delay + 10}, {steps} steps/call "
          f"on {jax.devices()[0].platform}")
    print(f"{'solver':>10} {'state n':>8} {'scan tok/s':>12} {'assoc tok/s':>12} {'assoc/scan':>11}")
    for solver in solvers:
        for n in widths:
            spec = cs.SSMSpec(layers=layers, width=n, state=n, solver=solver, iters=20, delay=delay, copy_len=5,
                              n_examples=batch)
            speed = {r: tokens_per_second(spec._replace(recurrence=r), steps, batch, repeats) for r in cs.RECURRENCES}
            print(f"{solver:>10} {n:>8} {speed['scan']:>12.0f} {speed['associative']:>12.0f} "
                  f"{speed['associative'] / speed['scan']:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
