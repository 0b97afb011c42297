"""Benchmark: ``run_grid`` over ``optlab.fit`` against a Python loop of jitted single-config fits (and PyTorch).

Usage::

    python benchmarks/bench_grid.py            # grids of 16, 256, 1024 configs (several minutes on a laptop CPU)
    python benchmarks/bench_grid.py --quick    # smaller grids and fewer steps
    python benchmarks/bench_grid.py --only tiny --repeat 3 --shuffle   # tiny regimes, shuffled, best of 3

Two regimes, Adam, a grid of learning rates × seeds:

* tiny (the lab notes' sizes): linear regression y = 2x + 1 (2 parameters, 1000 points, batch 32, 3000 steps) and
  a 1→8→8→1 tanh MLP on y = sin(3x). ``run_grid`` runs ``fit`` with its full features on (trace, early stop, NaN
  guard); mini-batches in a fixed order unless ``--shuffle`` (fit then draws one permutation per epoch).
  Baselines: (a) a Python loop calling one jitted single-config ``fit`` (compiled once, called per
  config); (b) the same training as a PyTorch CPU loop (optional; skipped when torch is not installed).
  Reference ceiling ("bare"): the same Adam training as a hand-written ``lax.scan`` (same init, same batches, no
  trace, early stop or NaN guard), run through ``run_grid`` too, i.e. ``jit(vmap(scan))``; "fit/bare" is the
  price of fit's features under vmap.
* compute-bound: a 1→64→64→1 MLP on 256 points (full batch, 1000 steps): achieved matmul FLOP/s of the grid
  (forward + backward ≈ 3 × forward matmul FLOPs) as a share of this machine's measured float32 matmul peak
  (a jitted 2048×2048 matmul timed in the same run), and against (a). ``--compute-bare`` adds the bare reference
  there too (it takes as long as the fit grid).

Every timing is taken after compilation ("warm-up s" is the first call: compile + one chunk); with ``--repeat R``
each grid and each pass of baseline (a) is timed R times and the fastest is reported (the machine may be shared:
fit and bare are timed alternately, so both see the same load); "fit/bare" and the compute-bound share of the peak
use medians (fit/bare: the median over rounds of the round's fit / bare ratio).
Baselines that take long are timed on a few configs and extrapolated per config (the output says so); they run one
config at a time, so their time is linear in the number of configs.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optlab
from optlab.engine import EarlyStop

from bench_compaction import bench_compaction  # the compaction rows live in benchmarks/bench_compaction.py


def regression_data(n: int = 1000):
    x = jax.random.uniform(jax.random.key(0), (n, 1), minval=-1.0, maxval=1.0)
    return {"x": x, "y": 2.0 * x + 1.0}


def sine_data(n: int):
    x = jax.random.uniform(jax.random.key(0), (n, 1), minval=-1.0, maxval=1.0)
    return {"x": x, "y": jnp.sin(3.0 * x)}


def mlp_init(key, widths):
    keys = jax.random.split(key, len(widths) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, widths[:-1], widths[1:])
    ]


def mlp_apply(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def mse(params, batch):
    return jnp.mean((mlp_apply(params, batch["x"]) - batch["y"]) ** 2)


def make_cell(widths, data, steps, batch_size, shuffle=False):
    """A grid cell: init from the cell key, Adam(lr), fit with trace + early stop (+ fit's built-in NaN guard)."""

    def cell(hparams, key):
        init_key, data_key = jax.random.split(key)
        result = optlab.fit(
            mse,
            mlp_init(init_key, widths),
            optax.adam(hparams["lr"]),
            steps=steps,
            key=data_key,
            data=data,
            batch_size=batch_size,
            shuffle=shuffle,
            early_stop=EarlyStop(patience=steps // 2, min_delta=0.0),
        )
        return {"final_loss": result.trace["loss"][-1], "best_loss": result.best_loss, "loss": result.trace["loss"]}

    return cell


def make_bare_cell(widths, data, steps, batch_size, shuffle=False):
    """The reference: the cell's Adam training as a bare ``lax.scan`` (no fit: no trace, early stop or NaN guard).

    Same init and batches as ``fit`` (epoch ``e`` uses ``permutation(fold_in(data_key, e), n)`` when shuffling):
    an outer scan over epochs draws each permutation once, an inner scan runs the epoch's steps.
    """
    n = data["x"].shape[0]
    per_epoch = n // batch_size if batch_size else 1
    full_epochs, rest = divmod(steps, per_epoch)

    def cell(hparams, key):
        init_key, data_key = jax.random.split(key)
        params = mlp_init(init_key, widths)
        tx = optax.adam(hparams["lr"])

        def epoch(carry, index, n_steps):
            order = jax.random.permutation(jax.random.fold_in(data_key, index), n) if shuffle else None

            def step(carry, i):
                params, state = carry
                if batch_size is None:
                    batch = data
                elif shuffle:
                    rows = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
                    batch = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), data)
                else:
                    batch = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * batch_size, batch_size), data)
                loss, grads = jax.value_and_grad(mse)(params, batch)
                updates, state = tx.update(grads, state, params)
                return (optax.apply_updates(params, updates), state), loss

            return jax.lax.scan(step, carry, jnp.arange(n_steps))

        carry = (params, tx.init(params))
        carry, losses = jax.lax.scan(lambda c, e: epoch(c, e, per_epoch), carry, jnp.arange(full_epochs))
        losses = losses.reshape(-1)
        if rest:
            carry, tail = epoch(carry, full_epochs, rest)
            losses = jnp.concatenate([losses, tail])
        return {"final_loss": losses[-1], "loss": losses}

    return cell


def grid_axes(n_configs: int, n_seeds: int = 16):
    n_seeds = min(n_seeds, n_configs)
    return {"lr": np.geomspace(1e-3, 1e-1, n_configs // n_seeds).tolist()}, n_seeds


def time_grids(cells, n_configs, chunk_size=None, repeats=1):
    """Per cell: (fastest warm ``run_grid`` seconds, warm-up seconds, last GridResult, median warm seconds, all).

    The warm-up runs a grid of one chunk (compile + run): run_grid reuses its compiled program for every chunk of
    the same size. The cells are timed alternately, ``repeats`` rounds, so they share the machine's load.
    """
    warm_n = n_configs if chunk_size is None else min(n_configs, chunk_size)
    warm_axes, warm_seeds = grid_axes(warm_n)
    axes, seeds = grid_axes(n_configs)
    first, times, results = [], [[] for _ in cells], [None] * len(cells)
    for cell in cells:
        start = time.perf_counter()
        optlab.run_grid(cell, warm_axes, seeds=warm_seeds, chunk_size=chunk_size, progress=False)
        first.append(time.perf_counter() - start)
    for _ in range(repeats):
        for i, cell in enumerate(cells):
            start = time.perf_counter()
            results[i] = optlab.run_grid(cell, axes, seeds=seeds, chunk_size=chunk_size, progress=False)
            times[i].append(time.perf_counter() - start)
    return [(min(t), f, r, float(np.median(t)), t) for t, f, r in zip(times, first, results)]


def median_ratio(times, reference):
    """Median over rounds of ``times[i] / reference[i]``: each round times both back to back, so load drift cancels."""
    return float(np.median(np.asarray(times) / np.asarray(reference)))


def time_loop_per_config(cell, n_measured, repeats=1):
    """(a): one jitted single-config function, compiled once, called per config; seconds per config (best pass)."""
    single = jax.jit(cell)
    # the warm-up argument has the loop's exact type (strong float32) so the loop never recompiles
    jax.block_until_ready(single({"lr": jnp.asarray(1e-2, jnp.float32)}, jax.random.key(0)))
    lrs = np.geomspace(1e-3, 1e-1, n_measured)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i, lr in enumerate(lrs):
            jax.block_until_ready(single({"lr": jnp.asarray(lr, jnp.float32)}, jax.random.key(i)))
        best = min(best, (time.perf_counter() - start) / n_measured)
    return best


def time_torch_per_config(widths, data, steps, batch_size, shuffle, n_measured):
    """(b): the same training in a PyTorch CPU loop; seconds per config, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.as_tensor(np.asarray(data["x"]))
    y = torch.as_tensor(np.asarray(data["y"]))
    start = time.perf_counter()
    for seed in range(n_measured):
        torch.manual_seed(seed)
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
        model = torch.nn.Sequential(*layers[:-1])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        n, per_epoch = x.shape[0], x.shape[0] // batch_size if batch_size else 1
        order = torch.arange(n)
        best = float("inf")
        for step in range(steps):
            if shuffle and batch_size and step % per_epoch == 0:
                order = torch.randperm(n)
            idx = order[(step % per_epoch) * batch_size : (step % per_epoch + 1) * batch_size] if batch_size else order
            loss = torch.mean((model(x[idx]) - y[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            if torch.isfinite(loss):  # the same per-step NaN guard and best tracking as fit
                opt.step()
            best = min(best, loss.item())
    return (time.perf_counter() - start) / n_measured


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(1), (size, size))
    matmul = jax.jit(lambda u: u @ u)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def matmul_flops_per_step(widths, n_examples: int) -> float:
    forward = sum(2 * n_examples * a * b for a, b in zip(widths[:-1], widths[1:]))
    return 3.0 * forward  # backward ≈ 2 × forward


def bench_tiny(name, widths, data, steps, batch_size, shuffle, sizes, n_loop, n_torch, repeats):
    cell = make_cell(widths, data, steps, batch_size, shuffle)
    bare = make_bare_cell(widths, data, steps, batch_size, shuffle)
    loop_s = time_loop_per_config(cell, n_loop, repeats)
    torch_s = time_torch_per_config(widths, data, steps, batch_size, shuffle, n_torch)
    print(f"\n## tiny: {name} ({sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))} params, "
          f"{data['x'].shape[0]} points, batch {batch_size}, shuffle={shuffle}, {steps} steps, Adam)")  # fmt: skip
    print(f"(a) jitted single-config fit in a Python loop: {loop_s * 1e3:.2f} ms/config (measured on {n_loop})")
    if torch_s is None:
        print("(b) PyTorch: skipped (torch is not installed)")
    else:
        print(f"(b) PyTorch CPU loop: {torch_s * 1e3:.1f} ms/config (measured on {n_torch}, extrapolated)")
    print("bare = the same training as a bare jit(vmap(lax.scan)) without fit (reference ceiling)")
    print(f"{'configs':>8} {'grid s':>9} {'warm-up s':>10} {'configs/s':>11} {'(a) s':>9} {'x vs (a)':>9} "
          f"{'bare s':>9} {'bare x (a)':>11} {'fit/bare':>9} {'x vs (b)':>10}  finite")  # fmt: skip
    for n in sizes:
        (seconds, first, result, _, fit_t), (bare_s, _, _, _, bare_t) = time_grids([cell, bare], n, repeats=repeats)
        vs_torch = f"{torch_s * n / seconds:10.0f}" if torch_s is not None else f"{'-':>10}"
        finite = int(np.isfinite(result.outputs["final_loss"]).sum())
        print(f"{n:8d} {seconds:9.3f} {first:10.2f} {n / seconds:11.1f} {loop_s * n:9.2f} "
              f"{loop_s * n / seconds:9.1f} {bare_s:9.3f} {loop_s * n / bare_s:11.1f} "
              f"{median_ratio(fit_t, bare_t):9.2f} "
              f"{vs_torch}  {finite}/{n}")  # fmt: skip


def bench_compute(sizes, steps, n_loop, peak, repeats, with_bare, chunk_size=64):
    """The compute-bound MLP grid's matmul FLOP/s as a share of the matmul peak measured in the same run.

    The peak is measured again after each grid size and the larger one is used (a busy machine lowers a short
    peak measurement more than a long grid, which would flatter the share); shares use the median grid time.
    """
    widths, n_examples = (1, 64, 64, 1), 256
    data = sine_data(n_examples)
    cell = make_cell(widths, data, steps, None)
    cells = [cell, make_bare_cell(widths, data, steps, None)] if with_bare else [cell]
    flops = matmul_flops_per_step(widths, n_examples) * steps
    loop_s = time_loop_per_config(cell, n_loop, repeats)
    print(f"\n## compute-bound: 1->64->64->1 MLP, {n_examples} points full batch, {steps} steps, Adam, "
          f"chunks of {chunk_size} configs")  # fmt: skip
    print(f"matmul FLOPs per config (fwd+bwd ~ 3x fwd): {flops / 1e9:.2f} GFLOP; "
          f"peak (jitted 2048x2048 f32 matmul) before the grids: {peak / 1e9:.1f} GFLOP/s")  # fmt: skip
    print(f"(a) jitted single-config fit in a Python loop: {loop_s * 1e3:.1f} ms/config (measured on {n_loop}), "
          f"{flops / loop_s / 1e9:.2f} GFLOP/s = {flops / loop_s / peak:.1%} of peak")  # fmt: skip
    print(f"{'configs':>8} {'grid s':>9} {'median s':>9} {'warm-up s':>10} {'GFLOP/s':>9} {'peak':>7} "
          f"{'of peak':>8} {'x vs (a)':>9} {'bare s':>9} {'fit/bare':>9}")  # fmt: skip
    for n in sizes:
        timings = time_grids(cells, n, chunk_size, repeats=repeats)
        seconds, first, _, median, fit_t = timings[0]
        peak = max(peak, matmul_peak())
        achieved = flops * n / median
        bare = (f"{timings[1][3]:9.3f} {median_ratio(fit_t, timings[1][4]):9.2f}" if with_bare
                else f"{'-':>9} {'-':>9}")  # fmt: skip
        print(f"{n:8d} {seconds:9.3f} {median:9.3f} {first:10.2f} {achieved / 1e9:9.2f} {peak / 1e9:7.1f} "
              f"{achieved / peak:8.1%} {loop_s * n / median:9.1f} {bare}")  # fmt: skip


SWEEP_WIDTHS = (1, 4, 16, 64, 256, 1024)


def bench_sweep(n_configs, tiny_steps, compute_steps, repeats, plot_path=None):
    """configs/s against the vmap width (``chunk_size``) for the three regimes, and where ``"auto"`` lands.

    Every width of a regime is timed in the same run (alternately, ``repeats`` rounds, fastest kept) after a warm-up
    call that compiles it; the loop is baseline (a). Returns {regime: {width or "auto": seconds}}.
    """
    regimes = [
        ("tiny: linear regression", make_cell((1, 1), regression_data(), tiny_steps, 32), tiny_steps),
        ("tiny: 1->8->8->1 MLP", make_cell((1, 8, 8, 1), sine_data(1000), tiny_steps, 32), tiny_steps),
        ("compute: 1->64->64->1 MLP", make_cell((1, 64, 64, 1), sine_data(256), compute_steps, None), compute_steps),
    ]
    axes, seeds = grid_axes(n_configs)
    widths = [w for w in SWEEP_WIDTHS if w <= n_configs]
    print(f"\n## width sweep: {n_configs} configs, configs/s against chunk_size (vmap width); auto = the default")
    print(f"{'regime':>26} {'steps':>6} {'width':>6} {'grid s':>8} {'configs/s':>10} {'x loop':>7} {'/ best':>7}")
    measured = {}
    for name, cell, steps in regimes:
        loop_s = time_loop_per_config(cell, 4, repeats)
        kinds = [*widths, "auto"]
        for kind in kinds:  # warm-up: compile each width (and run the cost model once for auto)
            optlab.run_grid(cell, axes, seeds=seeds, chunk_size=kind, progress=False)
        best = {kind: float("inf") for kind in kinds}
        chosen = None
        for _ in range(repeats):
            for kind in kinds:
                start = time.perf_counter()
                result = optlab.run_grid(cell, axes, seeds=seeds, chunk_size=kind, progress=False)
                best[kind] = min(best[kind], time.perf_counter() - start)
                chosen = result.info["chunk_size"] if kind == "auto" else chosen
        fastest = min(best[w] for w in widths)
        for kind in kinds:
            label = f"auto={chosen}" if kind == "auto" else str(kind)
            print(f"{name:>26} {steps:6d} {label:>6} {best[kind]:8.3f} {n_configs / best[kind]:10.1f} "
                  f"{loop_s * n_configs / best[kind]:7.2f} {best[kind] / fastest:7.2f}")  # fmt: skip
        measured[name] = {"loop": loop_s * n_configs, "chosen": chosen, **best}
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, row in measured.items():
            line = ax.plot(widths, [n_configs / row[w] for w in widths], marker="o", label=name)[0]
            ax.plot([row["chosen"]], [n_configs / row["auto"]], marker="*", markersize=14, color=line.get_color())
            ax.axhline(n_configs / row["loop"], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set(xscale="log", yscale="log", xlabel="vmap width (chunk_size)", ylabel="configs / s",
               title=f"run_grid width sweep, {n_configs} configs (star: auto, dotted: loop)")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_path, dpi=120)
        print(f"plot: {plot_path}")
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller grids and fewer steps")
    parser.add_argument("--sizes", default=None, help="comma-separated grid sizes (default 16,256,1024; quick 16,64)")
    parser.add_argument(
        "--shuffle", action="store_true", help="tiny problems: fit's shuffled mini-batches (default: fixed order)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="time each grid this many times, report the fastest")
    parser.add_argument(
        "--compute-bare", action="store_true", help="compute-bound: also time the bare reference (slow)"
    )
    parser.add_argument("--only", default=None,
                        help="comma-separated regimes to run: tiny, compute, compaction, sweep (default: all)")
    parser.add_argument("--compute-steps", type=int, default=None,
                        help="steps of the compute-bound regime (default 1000, quick 200; time is linear in steps)")
    parser.add_argument("--sweep-steps", default="300,30",
                        help="width sweep: steps of the tiny and the compute-bound regimes (per-config time is "
                             "linear in steps)")
    parser.add_argument("--plot", default=None, help="width sweep: write the configs/s plot (PNG) here")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    only = None if args.only is None else set(args.only.split(","))
    if only is not None and not only <= {"tiny", "compute", "compaction", "sweep"}:
        parser.error(f"--only: regimes must be among tiny, compute, compaction, sweep, got {args.only!r}")
    if args.compute_steps is not None and args.compute_steps < 1:
        parser.error(f"--compute-steps must be >= 1, got {args.compute_steps}")
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else [16, 64] if args.quick else [16, 256, 1024]
    tiny_steps, compute_steps = (500, 200) if args.quick else (3000, 1000)
    compute_steps = args.compute_steps or compute_steps
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; "
          f"grid = learning rates x seeds (16 seeds, or fewer for small grids); timings after compilation; "
          f"load average {os.getloadavg()[0]:.1f} (other processes make timings noisy)")  # fmt: skip
    for name, widths, data in [
        ("linear regression y = 2x + 1", (1, 1), regression_data()),
        ("1->8->8->1 MLP", (1, 8, 8, 1), sine_data(1000)),
    ]:
        if only is None or "tiny" in only:
            bench_tiny(name, widths, data, tiny_steps, 32, args.shuffle, sizes, 16, 2, args.repeat)
    if only is None or "compaction" in only:
        bench_compaction(sizes[-1], tiny_steps, args.repeat, tiny_steps // 20)
    if only is None or "sweep" in only:
        tiny_sweep, compute_sweep = (int(s) for s in args.sweep_steps.split(","))
        bench_sweep(sizes[-1], tiny_sweep, compute_sweep, args.repeat, args.plot)
    if only is None or "compute" in only:
        bench_compute(sizes, compute_steps, 4, matmul_peak(), args.repeat, args.compute_bare)


if __name__ == "__main__":
    main()
