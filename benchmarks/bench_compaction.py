"""Benchmark: lane compaction (``run_grid(compact_every=K)``) against the same grid run uncompacted.

Usage::

    python benchmarks/bench_compaction.py --configs 1024 --steps 3000 --repeat 3
    python benchmarks/bench_grid.py --only compaction --sizes 1024 --repeat 3   # the same rows, from the grid bench

Two grids of linear regression (y = 2x + 1, 256 points, full batch, Adam, learning rates × 16 seeds): one where
75 % of the cells stop within the first ~2 % of the steps (a patience of ``steps // 50`` and a min_delta no step
can beat) and one where none stop. Each is run as one program (``chunk_size=None``) with and without
``compact_every``, alternately, ``--repeat`` times after a warm-up (compiles); the fastest of each is reported, with
the ratio of process CPU times (all threads; less sensitive than wall time to other processes on a shared
machine), whether every output is bit-identical, and where the compacted run's host time went (``run_grid``'s
``info["compaction"]["seconds"]``: segments = dispatch + waiting for the stop flags, repack, finish).
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


def _data(n: int):
    x = jax.random.uniform(jax.random.key(0), (n, 1), minval=-1.0, maxval=1.0)
    return {"x": x, "y": 2.0 * x + 1.0}


def _mse(params, batch):
    return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def make_stopping_cell(data, steps, stop_share):
    """Linear regression, full batch, Adam: a cell whose seed falls in the first ``stop_share`` stops early.

    Cells with a small patience (``steps // 50``) and a min_delta no Adam step can beat stop within the first
    ~2 % of the steps; the others run to the end (patience above ``steps``).
    """

    def cell(hparams, key):
        init_key, _ = jax.random.split(key)
        stops = jax.random.uniform(jax.random.fold_in(key, 1)) < stop_share
        result = optlab.fit(
            _mse,
            {"w": jax.random.normal(init_key, (1, 1)), "b": jnp.zeros(1)},
            optax.adam(hparams["lr"]),
            steps=steps,
            data=data,
            early_stop=EarlyStop(patience=jnp.where(stops, steps // 50, steps + 1), min_delta=jnp.where(stops, 1e9, 0.0)),
        )
        return {"final_loss": result.trace["loss"][-1], "stopped_at": result.stopped_at, "trace": result.trace}

    return cell


def _axes(n_configs: int, n_seeds: int = 16):
    n_seeds = min(n_seeds, n_configs)
    return {"lr": np.geomspace(1e-3, 1e-1, n_configs // n_seeds).tolist()}, n_seeds


def bench_compaction(n_configs, steps, repeats, compact_every):
    """Wall time of one grid with and without ``compact_every``: 75 % of cells stopping early, and none stopping.

    Returns:
      ``{grid name: {"plain": s, "compact": s, "cpu": {"plain": s, "compact": s}, "identical": bool, "stats":
      info["compaction"][0]}}`` (fastest wall and CPU times).
    """
    data = _data(256)
    print(f"\n## lane compaction: linear regression, 256 points full batch, {steps} steps, Adam, {n_configs} "
          f"configs, compact_every={compact_every}")  # fmt: skip
    print(f"{'grid':>24} {'plain s':>8} {'compact s':>9} {'speed-up':>8} {'cpu ratio':>9} {'stopped':>7} "
          f"{'dropped':>7} {'segments':>8} {'repacks':>7} {'widths':>12} {'seg s':>6} {'repack s':>8} {'finish s':>8} "
          f"identical")  # fmt: skip
    axes, seeds = _axes(n_configs)
    measured = {}
    for name, share in (("75 % stop in first 10 %", 0.75), ("none stop", 0.0)):
        cell = make_stopping_cell(data, steps, share)
        best = {"plain": float("inf"), "compact": float("inf")}
        cpu = dict(best)  # process CPU time (all threads): less sensitive than wall time to other processes
        results, stats = {}, None
        # the whole grid as one program (chunk_size=None), so re-packing narrows it; "auto" would run chunks of 256
        kinds = (("plain", {}), ("compact", {"compact_every": compact_every}))
        for kind, kw in kinds:  # warm-up: compile
            optlab.run_grid(cell, axes, seeds=seeds, progress=False, chunk_size=None, **kw)
        for _ in range(repeats):  # alternately, so both see the same load
            for kind, kw in kinds:
                start, start_cpu = time.perf_counter(), time.process_time()
                results[kind] = optlab.run_grid(cell, axes, seeds=seeds, progress=False, chunk_size=None, **kw)
                seconds = time.perf_counter() - start
                cpu[kind] = min(cpu[kind], time.process_time() - start_cpu)
                if seconds < best[kind]:
                    best[kind] = seconds
                    if kind == "compact":
                        stats = results[kind].info["compaction"][0]
        plain, compact = results["plain"], results["compact"]
        same = all(np.array_equal(plain.outputs[k], compact.outputs[k], equal_nan=True) for k in plain.outputs)
        stopped = int(np.sum(plain.outputs["stopped_at"] < steps))
        host = stats["seconds"]
        print(f"{name:>24} {best['plain']:8.3f} {best['compact']:9.3f} {best['plain'] / best['compact']:8.2f} "
              f"{cpu['plain'] / cpu['compact']:9.2f} {stopped:7d} {stats['dropped']:7d} {stats['segments']:8d} "
              f"{stats['repacks']:7d} {str(stats['widths']):>12} {host['segments']:6.3f} {host['repack']:8.3f} "
              f"{host['finish']:8.3f} {same}")  # fmt: skip
        measured[name] = {**best, "cpu": cpu, "identical": same, "stats": stats}
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=1024, help="cells per grid (learning rates x 16 seeds)")
    parser.add_argument("--steps", type=int, default=3000, help="fit steps per cell")
    parser.add_argument("--compact-every", type=int, default=None, help="first segment's steps (default steps/20)")
    parser.add_argument("--repeat", type=int, default=3, help="time each grid this many times, report the fastest")
    args = parser.parse_args()
    for name in ("configs", "steps", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; timings after "
          f"compilation; load average {os.getloadavg()[0]:.1f} (other processes make timings noisy)")  # fmt: skip
    bench_compaction(args.configs, args.steps, args.repeat, args.compact_every or max(args.steps // 20, 1))


if __name__ == "__main__":
    main()
