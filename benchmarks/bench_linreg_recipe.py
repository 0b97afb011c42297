"""Runs per second of the linreg-recipe factorial vs a Python loop over one jitted single run (not a test).

Usage: ``.venv/bin/python benchmarks/bench_linreg_recipe.py [--switches lr,warmup,clip,init] [--seeds 4] [--n 1000]``
"""

from __future__ import annotations

import argparse
import time

import jax

from optlab.studies import linreg_recipe as lr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", default="lr,warmup,clip,init")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--loop-runs", type=int, default=8)
    args = parser.parse_args()
    config = lr.LinregRecipeConfig(n=args.n, seeds=args.seeds, switches=tuple(args.switches.split(",")))
    runs = 2 ** len(config.switches) * config.seeds

    from optlab import ablation

    cell = lr.make_cell(config)  # one cell object: run_grid reuses its compiled program on the second call
    base = {k: v for k, v in lr.baseline(config).items() if k not in config.switches}
    switches = lr.make_switches(config, config.switches)
    ablation.factorial(cell, switches, seeds=config.seeds, base=base, progress=False)  # compile
    start = time.perf_counter()
    ablation.factorial(cell, switches, seeds=config.seeds, base=base, progress=False)
    grid_rate = runs / (time.perf_counter() - start)

    hp = lr.baseline(config)
    one = jax.jit(lambda key: cell(hp, key))
    jax.block_until_ready(one(jax.random.key(0)))  # compile
    start = time.perf_counter()
    for s in range(args.loop_runs):
        jax.block_until_ready(one(jax.random.key(s)))
    loop_rate = args.loop_runs / (time.perf_counter() - start)
    print(f"factorial: {runs} runs, {grid_rate:.1f} runs/s; python loop over one jitted run: {loop_rate:.1f} runs/s; "
          f"ratio {grid_rate / loop_rate:.1f}x")


if __name__ == "__main__":
    main()
