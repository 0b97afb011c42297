"""Speed of the 2-D Gaussian image fit (lab note 004): iterations / s of one run, configs·iterations / s of a
vmapped grid, and how time and memory grow with N and the image size (not a test).

The note's Rust baseline ran 150–185 it/s at N = 50 on 64×64 (its own number, on its own machine). Memory is the
peak of XLA's temporary buffers for one step's value and gradient (``compiled.memory_analysis()``), which the
pixel chunking bounds.

Grid against loop (``--widths``): the study's own baseline cell (:func:`optlab.studies.gaussian_divergence.
baseline_cell`: fused loss with the traced ``gradient_of`` and clamp switches, metrics every 10 steps) run once
under plain ``jit``, then as ``run_grid`` chunks of each width (cells alternate the switches and seeds); the grid's
second call is timed (its first compiles). ``ratio`` = grid configs·it/s ÷ one run's it/s: above 1 the grid beats
running the cells one after another. Times are wall clock and process CPU time (``cpu``: less sensitive to other
jobs on a shared machine; XLA uses every core it can, so ``cpu`` rates are per core-second).

Two scaling sweeps, each from one point: N (``--ns``) on a 64×64 image, and the image side (``--sizes``) at N = 50.

Usage: ``.venv/bin/python benchmarks/bench_gaussian.py [--steps 500] [--grid-steps 200] [--widths 8,64,192]
[--ns 50,200,1000,5000] [--sizes 64,128,256] [--rasteriser sum]``
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from optlab.engine import loop
from optlab.engine.grid import run_grid
from optlab.problems import gaussian_image as gi
from optlab.studies import gaussian_divergence as gd


def _fit(n: int, size: int, steps: int, chunk: int, rasteriser: str = "sum"):
    target = gi.synthetic_target(size)
    loss = gi.make_loss(target, rasteriser=rasteriser, chunk=chunk)
    opt = optax.adam(1e-3)

    def run(key):
        res = loop.fit(loss, gi.init_params(key, n, (size, size)), opt, steps=steps, log_every=steps)
        # depend on the final parameters: the trace row alone is step 0's loss, and XLA would drop the other steps
        return res.trace["loss"] + 0.0 * sum(v.sum() for v in jax.tree.leaves(res.params))

    return run, loss


def _rate(fn, *args, repeat: int = 1, min_seconds: float = 0.0) -> float:
    """Seconds per call of ``fn(*args)`` after its compile: the median of ``repeat`` calls, more while the calls
    together take less than ``min_seconds`` (short rows on a shared machine are otherwise one noisy sample)."""
    jax.block_until_ready(fn(*args))  # compile
    times: list[float] = []
    while len(times) < repeat or sum(times) < min_seconds:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _step_memory_mib(loss, n: int, size: int) -> float:
    params = gi.init_params(jax.random.key(0), n, (size, size))
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    stats = compiled.memory_analysis()
    return float(getattr(stats, "temp_size_in_bytes", 0)) / 2 ** 20 if stats is not None else float("nan")


def _scaling_row(n: int, size: int, steps: int, chunk: int, rasteriser: str) -> str:
    run, loss = _fit(n, size, steps, chunk, rasteriser)
    seconds = _rate(jax.jit(run), jax.random.key(0), repeat=3, min_seconds=2.0)
    return (f"  N={n:5d} {size:3d}x{size:<3d}: {steps / seconds:8.1f} it/s, {1e3 * seconds / steps:8.2f} ms/it, "
            f"{_step_memory_mib(loss, n, size):8.1f} MiB temp")


def _timed(fn, *args) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, time.process_time() - cpu


def _grid_rows(steps: int, widths: list[int], chunk: int, rasteriser: str) -> None:
    """The study's baseline cell: one run under jit, then run_grid chunks of each width; prints the ratios."""
    config = gd.GaussianDivergenceConfig(steps=steps, checkpoint_every=steps, n_gaussians=(50,), chunk=chunk)
    cell = gd.baseline_cell(config, gi.synthetic_target(64))
    hp = {"n": 50, "rasteriser": rasteriser, "gradient_of": jnp.float32(0.0), "clamp": jnp.int32(1)}
    one = jax.jit(lambda key: cell(hp, key))
    _timed(one, jax.random.key(0))  # compile
    wall, cpu = _timed(one, jax.random.key(1))
    print(f"study cell, one run ({steps} steps, metrics every {config.log_every}): {steps / wall:.0f} it/s wall, "
          f"{steps / cpu:.0f} it/s cpu", flush=True)
    for width in widths:
        axes = {"n": [50], "rasteriser": [rasteriser], "gradient_of": [0.0, 1.0], "clamp": [0, 1]}
        seeds = max(width // 4, 1)

        def grid():
            return run_grid(cell, axes, seeds=seeds, static=["n", "rasteriser"], progress=False, chunk_size=width)

        grid()  # compiles the width's program; the second call reuses it
        g_wall, g_cpu = _timed(grid)
        cells = 4 * seeds
        print(f"  grid width {width:4d} ({cells} cells): {cells * steps / g_wall:6.0f} configs·it/s wall "
              f"(ratio {cells * steps / g_wall / (steps / wall):4.2f}), {cells * steps / g_cpu:6.0f} cpu "
              f"(ratio {cells * steps / g_cpu / (steps / cpu):4.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--grid-steps", type=int, default=200, help="steps of each cell in the grid-vs-loop rows")
    parser.add_argument("--widths", default="8,64,192", help="grid widths (cells per chunk); empty: no grid rows")
    parser.add_argument("--ns", default="50,200,1000,5000", help="N sweep, on a 64x64 image")
    parser.add_argument("--sizes", default="64,128,256", help="image-side sweep, at N = 50")
    parser.add_argument("--chunk", type=int, default=gi.DEFAULT_CHUNK)
    parser.add_argument("--rasteriser", default="sum", choices=gi.RASTERISERS)
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), rasteriser {args.rasteriser}, "
          f"chunk {args.chunk}")

    run, _ = _fit(50, 64, args.steps, args.chunk, args.rasteriser)
    seconds = _rate(jax.jit(run), jax.random.key(0))
    print(f"one run, N=50, 64x64, plain Adam + fused loss: {args.steps / seconds:.0f} it/s "
          f"(note's Rust baseline: 150-185 it/s)")
    if args.widths:
        _grid_rows(args.grid_steps, [int(v) for v in args.widths.split(",")], args.chunk, args.rasteriser)

    # value_and_grad + Adam per step; memory: peak XLA temporaries of one value_and_grad
    steps = max(args.steps // 10, 5)
    print(f"scaling in N at 64x64 ({steps} steps a call; median of >= 3 calls and >= 2 s):")
    for n in (int(v) for v in args.ns.split(",")):
        print(_scaling_row(n, 64, steps, args.chunk, args.rasteriser), flush=True)
    print(f"scaling in image size at N=50 ({steps} steps a call; median of >= 3 calls and >= 2 s):")
    for size in (int(v) for v in args.sizes.split(",")):
        print(_scaling_row(50, size, steps, args.chunk, args.rasteriser), flush=True)


if __name__ == "__main__":
    main()
