"""run_grid over 4 forced host devices: sharded results equal unsharded ones, padding to the device count dropped."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from optlab import run_grid

    def fn(hparams, key):
        target = jax.random.normal(key, (4,))
        def step(x, _):
            return x - hparams["lr"] * 2 * (x - target), jnp.sum((x - target) ** 2)
        _, losses = jax.lax.scan(step, jnp.zeros(4), None, length=6)
        return {"final_loss": losses[-1], "loss": losses}

    axes = {"lr": [0.1, 0.2, 0.3]}
    plain = run_grid(fn, axes, seeds=2, progress=False)
    sharded = run_grid(fn, axes, seeds=2, mesh="auto", progress=False)
    chunked = run_grid(fn, axes, seeds=2, mesh="auto", chunk_size=3, progress=False)
    two = run_grid(fn, axes, seeds=2, mesh=Mesh(np.asarray(jax.devices()[:2]), ("cells",)), progress=False)
    print(json.dumps({
        "devices": jax.device_count(),
        "info": [r.info["n_devices"] for r in (sharded, chunked, two)],
        "output_devices": [r.info["output_devices"] for r in (plain, sharded, chunked, two)],
        "padded": [r.info["padded_cells"] for r in (plain, sharded, chunked, two)],
        "lengths": [len(r) for r in (plain, sharded, chunked, two)],
        "max_diff": max(
            float(np.max(np.abs(r.outputs[k] - plain.outputs[k])))
            for r in (sharded, chunked, two) for k in ("final_loss", "loss")
        ),
        "same_cells": all(r.cells == plain.cells for r in (sharded, chunked, two)),
    }))
    """
)


def test_sharded_grid_matches_unsharded_on_four_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    assert report["info"] == [4, 4, 2]
    assert report["output_devices"] == [1, 4, 4, 2]  # results were sharded over the mesh
    assert report["padded"] == [0, 2, 2, 0]  # 6 cells -> 8 (one chunk of 8; or chunks of 4: 4 + 2 padded)
    assert report["lengths"] == [6, 6, 6, 6]
    assert report["same_cells"]
    assert report["max_diff"] <= 1e-6
