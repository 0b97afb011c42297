"""Checkpoints survive SIGKILL during saves: the newest loadable checkpoint is always intact, nothing is lost.

One helper process imports jax once and encodes a few checkpoints; for each trial it forks a writer that stores them
in a loop (the same paths overwritten again and again, through the real locked write path), and the test kills
that writer with SIGKILL at a random moment. After every kill the directory must hold only intact checkpoints,
every step written before must still be there, and ``best_checkpoint`` / ``latest_checkpoint`` must return files
that load with the values one of the saves wrote.
"""

import os
import random
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab.engine.checkpoint import (
    CheckpointWarning,
    TrainState,
    best_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL (POSIX)")

TRIALS = 20
STEPS = (1, 2, 3)
VERSIONS = (0, 1)  # each step is saved in two versions, so an overwrite really changes the file
RUN_ID = "killed-run"

# The writer only runs pure-Python file code after the fork (no jax calls), which is safe in a forked child.
SERVER = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp, optax
    from optlab.engine import checkpoint as ckpt

    def state(step, version):
        params = {"z": jnp.full(4, step * 10 + version, jnp.complex64) * (1 + 1j)}
        return ckpt.TrainState(jnp.array(step, jnp.int32), params, optax.adam(0.1).init(params), jax.random.key(0),
                               params, jnp.array(1.0), jnp.array(0, jnp.int32), jnp.array(0, jnp.int32),
                               jnp.array(-1, jnp.int32), jnp.array(0, jnp.int32))

    directory = sys.argv[1]
    blobs = [(step, ckpt.encode_checkpoint(state(step, version), {"loss": jnp.ones(step)},
                                           loss=step + version / 10, run_id=%(run_id)r))
             for version in %(versions)r for step in %(steps)r]
    print("ready", flush=True)
    for trial, line in enumerate(sys.stdin):
        if line.strip() != "go":
            break
        pid = os.fork()
        if pid == 0:
            try:  # each writer starts one save further on, so every step is written even by short-lived writers
                for i in range(trial, 10**9):
                    step, data = blobs[i %% len(blobs)]
                    ckpt.write_checkpoint(ckpt.checkpoint_path(directory, step), data)
            finally:
                os._exit(3)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status), flush=True)
    """
) % {"run_id": RUN_ID, "versions": VERSIONS, "steps": STEPS}


def _like():
    params = {"z": jnp.zeros(4, jnp.complex64)}
    return TrainState(jnp.array(0, jnp.int32), params, optax.adam(0.1).init(params), jax.random.key(0), params,
                      jnp.array(1.0), jnp.array(0, jnp.int32), jnp.array(0, jnp.int32), jnp.array(-1, jnp.int32),
                      jnp.array(0, jnp.int32))


def _readline(proc, selector, timeout=60.0):
    if not selector.select(timeout):
        raise AssertionError(f"checkpoint writer helper gave no answer in {timeout} s")
    line = proc.stdout.readline()
    assert line, f"checkpoint writer helper died: {proc.stderr.read()}"
    return line.strip()


def _check_intact(path, like):
    """The file loads, and holds exactly what one save of its step wrote."""
    loaded = load_checkpoint(path, like)
    step = int(loaded.state.step)
    version = round((loaded.meta["loss"] - step) * 10)
    assert version in VERSIONS and loaded.meta["run_id"] == RUN_ID
    expected = np.full(4, step * 10 + version, np.complex64) * (1 + 1j)
    np.testing.assert_array_equal(loaded.state.params["z"], expected)
    assert loaded.trace["loss"].shape == (step,)
    return step


def test_sigkill_during_saves_never_loses_or_returns_a_broken_checkpoint(tmp_path):
    like, rng = _like(), random.Random(0)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    seen: set[int] = set()
    killed_mid_save = 0
    try:
        assert _readline(proc, selector, timeout=120.0) == "ready"
        for _ in range(TRIALS):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            pid = int(_readline(proc, selector))
            # A random moment: from before the first save (lock not yet taken) to many saves in.
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(pid, signal.SIGKILL)
            assert int(_readline(proc, selector)) == signal.SIGKILL  # it was still saving when killed
            killed_mid_save += any(p.name.endswith(".tmp") for p in tmp_path.iterdir())

            with warnings.catch_warnings():
                warnings.simplefilter("error", CheckpointWarning)  # a damaged entry would be reported here
                listed = list_checkpoints(tmp_path)
                steps = {_check_intact(path, like) for path in listed}
                assert seen <= steps, f"a kill lost the checkpoints of steps {sorted(seen - steps)}"
                seen = steps
                if steps:
                    assert _check_intact(latest_checkpoint(tmp_path), like) == max(steps)
                    best = best_checkpoint(tmp_path)
                    assert _check_intact(best, like) == min(steps)
    finally:
        proc.kill()
        proc.wait()
    assert seen == set(STEPS)  # the writers got through whole cycles between kills
    assert killed_mid_save > 0  # some kills landed inside a write (a temp file was left behind) ...
    # ... and the next save by the same run cleans such leftovers up.
    save_checkpoint(tmp_path / "checkpoint_000009", load_checkpoint(list_checkpoints(tmp_path)[0], like).state,
                    run_id=RUN_ID)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert read_meta(tmp_path / "checkpoint_000009.eqx")["run_id"] == RUN_ID
