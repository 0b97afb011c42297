"""Per-step time of the Newton-root optimizers against optax baselines on an equinox MLP.

A step is one jitted ``grad + update + apply_updates`` (params and optimizer state donated),
timed on whatever device JAX picks (CPU by default). Optimizers are timed round-robin, so a
slow spell on a shared machine hits all of them alike; the table shows the median over repeats
and each median as a ratio to ``optax.sgd``.

Usage::

    python benchmarks/bench_optimizers.py            # ~10M parameters
    python benchmarks/bench_optimizers.py --quick    # small smoke run
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


def make_step(opt: optax.GradientTransformationExtraArgs, static: eqx.Module):
    def loss_fn(params, x, y):
        model = eqx.combine(params, static)
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    # Donating params and state lets XLA update them in place, as a training loop would.
    return jax.jit(step, donate_argnums=(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small MLP and few repeats (smoke test)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (small: the optimizer matters)")
    parser.add_argument("--repeats", type=int, default=None, help="timed chunks per optimizer")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed chunk")
    args = parser.parse_args()
    widths = QUICK_WIDTHS if args.quick else FULL_WIDTHS
    repeats = args.repeats or (3 if args.quick else 15)
    steps = args.steps or (5 if args.quick else 10)

    model = make_mlp(widths, jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (args.batch, widths[0]))
    y = jax.random.normal(ky, (args.batch, widths[-1]))

    runs = {}
    for name, factory in optimizers().items():
        opt = factory()
        step = make_step(opt, static)
        p = jax.tree.map(jnp.copy, params)
        s = opt.init(p)
        for _ in range(3):  # warm-up: compile, then settle
            p, s, loss = step(p, s, x, y)
        jax.block_until_ready(loss)
        runs[name] = [step, p, s, []]

    for _ in range(repeats):
        for name, run in runs.items():
            step, p, s, times = run
            start = time.perf_counter()
            for _ in range(steps):
                p, s, loss = step(p, s, x, y)
            jax.block_until_ready((p, loss))
            times.append((time.perf_counter() - start) / steps)
            run[1], run[2] = p, s

    medians = {name: statistics.median(run[3]) for name, run in runs.items()}
    base = medians["optax.sgd"]
    print(f"MLP widths {widths}: {n_params / 1e6:.2f}M params, batch {args.batch}, device {jax.devices()[0].platform}, "
          f"median of {repeats} x {steps} steps")
    print(f"| {'optimizer':<26} | {'ms/step':>8} | {'x optax.sgd':>11} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 13}|")
    for name, median in medians.items():
        print(f"| {name:<26} | {1e3 * median:8.2f} | {median / base:11.3f} |")


if __name__ == "__main__":
    main()
