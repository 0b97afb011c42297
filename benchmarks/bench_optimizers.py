"""Per-step time of the Newton-root optimizers against optax baselines on an equinox MLP.

A step is ``grad + update + apply_updates`` under ``jit`` (params and optimizer state donated).
By default ``--steps`` steps run inside one jitted ``lax.scan``, as ``optlab.fit`` runs them; with
``--per-call`` every step is its own jitted call, as in a Python training loop. Optimizers are
timed round-robin, so a slow spell on a shared machine hits all of them alike; the table shows
the median over repeats of the per-step wall time and of the per-step process CPU time (all
threads; steadier than wall time when other processes compete for the cores), each also as a
ratio to ``optax.sgd``.

Why both modes: an optimizer whose step needs a norm of the *whole* gradient (Polyak,
Newton-root, clipping) keeps every gradient buffer alive until the norm is known, so XLA's
temporary buffer grows by the size of the gradients. On CPU a fresh allocation that large is
mmapped and page-faulted on every call; inside a scan it is allocated once per call of the whole
loop.

Usage::

    python benchmarks/bench_optimizers.py                # ~10M parameters, steps in a scan
    python benchmarks/bench_optimizers.py --per-call     # one jitted call per step
    python benchmarks/bench_optimizers.py --quick        # small smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from optlab.optimizers import newton_root, newton_root_adam

FULL_WIDTHS = (1024, 2048, 2048, 1024, 1024, 512)  # 9.97M parameters
QUICK_WIDTHS = (64, 128, 64, 32)


def make_mlp(widths: tuple[int, ...], key: jax.Array) -> eqx.nn.Sequential:
    keys = jax.random.split(key, len(widths) - 1)
    layers: list[eqx.Module] = []
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(eqx.nn.Linear(d_in, d_out, key=keys[i]))
        if i < len(widths) - 2:
            layers.append(eqx.nn.Lambda(jax.nn.relu))
    return eqx.nn.Sequential(layers)


def optimizers() -> dict[str, Callable[[], optax.GradientTransformationExtraArgs]]:
    plain = optax.with_extra_args_support
    return {
        "optax.sgd": lambda: plain(optax.sgd(1e-3)),
        "newton_root global": lambda: newton_root(0.5),
        "newton_root per_layer": lambda: newton_root(0.5, "per_layer"),
        "newton_root_adam": lambda: newton_root_adam(0.5),
        "optax.polyak_sgd": lambda: optax.polyak_sgd(max_learning_rate=1.0),
        "optax.adam": lambda: plain(optax.adam(1e-3)),
        "optax.contrib.momo_adam": lambda: optax.contrib.momo_adam(1e-2),
    }


def make_runner(opt: optax.GradientTransformationExtraArgs, static: eqx.Module, steps: int, per_call: bool):
    """Returns a jitted ``(params, state, x, y) -> (params, state, loss)`` doing 1 or ``steps`` steps."""

    def loss_fn(params, x, y):
        return jnp.mean((jax.vmap(eqx.combine(params, static))(x) - y) ** 2)

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    def scanned(params, state, x, y):
        def body(carry, _):
            params, state, _ = step(*carry, x, y)
            return (params, state), None

        (params, state), _ = jax.lax.scan(body, (params, state), None, length=steps)
        return params, state, loss_fn(params, x, y)

    # Donating params and state lets XLA update them in place, as a training loop would.
    return jax.jit(step if per_call else scanned, donate_argnums=(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small MLP and few repeats (smoke test)")
    parser.add_argument("--per-call", action="store_true", help="one jitted call per step instead of a lax.scan")
    parser.add_argument("--batch", type=int, default=8, help="batch size (small: the optimizer matters)")
    parser.add_argument("--repeats", type=int, default=None, help="timed chunks per optimizer")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed chunk")
    parser.add_argument("--only", default=None, help="comma-separated optimizer names to time (optax.sgd always)")
    args = parser.parse_args()
    widths = QUICK_WIDTHS if args.quick else FULL_WIDTHS
    repeats = args.repeats or (3 if args.quick else 12)
    steps = args.steps or (5 if args.quick else 10)

    chosen = optimizers()
    if args.only:
        names = {"optax.sgd", *(name.strip() for name in args.only.split(","))}
        unknown = names - set(chosen)
        if unknown:
            parser.error(f"--only: unknown {sorted(unknown)}; choose from {sorted(chosen)}")
        chosen = {name: factory for name, factory in chosen.items() if name in names}

    params, static = eqx.partition(make_mlp(widths, jax.random.key(0)), eqx.is_array)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (args.batch, widths[0]))
    y = jax.random.normal(ky, (args.batch, widths[-1]))
    calls = steps if args.per_call else 1

    runs = {}
    for name, factory in chosen.items():
        opt = factory()
        runner = make_runner(opt, static, steps, args.per_call)
        p, s = jax.tree.map(jnp.copy, params), opt.init(params)
        for _ in range(2):  # warm-up: compile, then settle
            p, s, loss = runner(p, s, x, y)
        jax.block_until_ready(loss)
        runs[name] = {"runner": runner, "carry": (p, s), "wall": [], "cpu": []}

    for _ in range(repeats):
        for run in runs.values():
            p, s = run["carry"]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                p, s, loss = run["runner"](p, s, x, y)
            jax.block_until_ready((p, loss))
            run["wall"].append((time.perf_counter() - start) / steps)
            run["cpu"].append((time.process_time() - start_cpu) / steps)
            run["carry"] = (p, s)

    wall = {name: statistics.median(run["wall"]) for name, run in runs.items()}
    cpu = {name: statistics.median(run["cpu"]) for name, run in runs.items()}
    mode = "one jitted call per step" if args.per_call else f"{steps} steps per jitted lax.scan"
    print(
        f"MLP widths {widths}: {n_params / 1e6:.2f}M params, batch {args.batch}, "
        f"device {jax.devices()[0].platform}, {mode}, {repeats} repeats x {steps} steps"
    )
    print(f"| {'optimizer':<26} | {'wall ms':>8} | {'x optax.sgd':>11} | {'CPU ms':>8} | {'x optax.sgd':>11} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 13}|{'-' * 10}|{'-' * 13}|")
    for name in runs:
        print(
            f"| {name:<26} | {1e3 * wall[name]:8.2f} | {wall[name] / wall['optax.sgd']:11.3f} "
            f"| {1e3 * cpu[name]:8.2f} | {cpu[name] / cpu['optax.sgd']:11.3f} |"
        )


if __name__ == "__main__":
    main()
