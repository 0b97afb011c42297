"""One process of the multi-process grid test: ``python distributed_worker.py PROCESS N PORT OUT``.

With N > 1 it joins a ``jax.distributed`` job on 127.0.0.1:PORT (gloo collectives on CPU, one CPU device per
process) and runs the grid sharded over every process's device (``mesh="auto"``); with N = 1 it runs the same grid
in one process without a mesh. Each process writes what it got back to ``OUT.<process>.json``.
"""

from __future__ import annotations

import json
import sys

import jax

# XLA:CPU has no cross-process collectives of its own: gloo is the implementation jax ships for CPU.
jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process: int, n_processes: int, port: int, out: str) -> None:
    if n_processes > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n_processes,
                                   process_id=process, initialization_timeout=60)
    import jax.numpy as jnp
    import numpy as np
    import optax

    import optlab
    from optlab.engine.grid import run_grid

    def cell(hp, key):
        x = jax.random.normal(key, (4,))
        opt = optax.sgd(hp["lr"]) if hp["opt"] == "sgd" else optax.adam(hp["lr"])
        res = optlab.fit(lambda p, _: jnp.sum((p - 1.0) ** 2), x, opt, steps=20)
        return {"final": res.trace["loss"][-1], "loss": res.trace["loss"]}

    # 3 lr × 3 seeds = 9 cells per static value: not a multiple of the 2 devices, so the padding path runs too.
    # Chunks of 4 cells over 2 processes put 2 cells on each device: the single-process run uses chunks of 2, the
    # same vmap width per device, so both compile the same per-device program and agree bit for bit.
    res = run_grid(cell, {"opt": ["sgd", "adam"], "lr": [0.01, 0.1, 0.3]}, seeds=3, static=["opt"],
                   mesh="auto" if n_processes > 1 else None, chunk_size=2 * n_processes, progress=False)
    record = {
        "process": jax.process_index(),
        "devices": len(jax.devices()),
        "info": {k: v for k, v in res.info.items() if k != "seconds"},
        "rows": res.to_rows(),
        "loss": np.asarray(res.outputs["loss"]).tolist(),
    }
    with open(f"{out}.{process}.json", "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
