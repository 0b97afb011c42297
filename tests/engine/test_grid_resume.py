"""run_grid(resume=True): a grid continued from its per-cell checkpoints equals the uninterrupted grid bit for bit."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab.engine import fit, run_grid
from optlab.engine.checkpoint import CheckpointWarning
from optlab.engine.loop import EarlyStop, cell_dir

X = jnp.linspace(-1.0, 1.0, 24).reshape(12, 2)
DATA = {"x": X, "y": X @ jnp.array([2.0, -1.0]) + 0.5}
AXES = {"lr": [0.05, 0.8]}  # lr 0.8 overshoots and stalls: early stopping (patience 2) ends those cells mid-run
STEPS, EVERY = 8, 4


def mse(params, batch):
    return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def cell(hp, key):
    # Shuffled mini-batches (12 examples, batch 4): a resume that got the key or the batch order wrong would differ.
    params = {"w": jax.random.normal(key, (2,)), "b": jnp.zeros(())}
    res = fit(mse, params, optax.adam(hp["lr"]), steps=STEPS, data=DATA, batch_size=4, key=key,
              early_stop=EarlyStop(patience=jnp.where(hp["lr"] > 0.5, 2, 50)))
    return {"params": res.params, "best_params": res.best_params, "best_step": res.best_step,
            "best_loss": res.best_loss, "stopped_at": res.stopped_at, "trace": res.trace,
            "final_over_first": res.trace["loss"][-1] / res.trace["loss"][0]}


def grid(directory, **kwargs):
    return run_grid(cell, AXES, seeds=3, progress=False, checkpoint_every=EVERY, checkpoint_dir=directory,
                    **kwargs)


def assert_same(resumed, whole):
    assert resumed.complete and sorted(resumed.outputs) == sorted(whole.outputs)
    np.testing.assert_array_equal(resumed.index, whole.index)  # rows in the grid's order
    for name, values in whole.outputs.items():
        np.testing.assert_array_equal(resumed.outputs[name], values, err_msg=name)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    # Run in the folder every test then resumes in (a copy of the result is the tests' source): the checkpoint
    # folder is a static argument of the compiled grid, so runs at the same resume step and width share a compile.
    base = tmp_path_factory.mktemp("grid")
    result = grid(base / "work")
    shutil.copytree(base / "work", base / "whole")
    return base / "whole", result


@pytest.fixture
def work(whole):
    source, _ = whole
    directory = source.parent / "work"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(source, directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def keep_until(directory, cell_index, step):
    """What a kill leaves: only the cell's checkpoints up to ``step``."""
    for path in cell_dir(directory, cell_index).glob("checkpoint_*.eqx"):
        if int(path.stem.split("_")[1]) > step:
            path.unlink()


def test_uninterrupted_grid_stops_some_cells_early(whole):
    _, result = whole
    stopped = result.outputs["stopped_at"]
    assert ((stopped > 0) & (stopped < EVERY)).any() and (stopped == STEPS).any()


def test_resume_after_interruptions_is_bit_identical(whole, work):
    _, result = whole
    shutil.rmtree(cell_dir(work, 0))  # never started
    shutil.rmtree(cell_dir(work, 2))
    for i in (1, 4, 5):  # killed mid-run after the checkpoint at step 4 (cell 4 early stopped before it)
        keep_until(work, i, EVERY)
    # cell 3 finished (its checkpoint at the last step is kept): fn runs on its stored result only
    resumed = grid(work, resume=True)
    assert resumed.info["resumed"] == [0, EVERY, 0, STEPS, EVERY, EVERY]
    assert_same(resumed, result)
    # the resumed grid rewrote the removed checkpoints; a second resume finds every cell at its end
    again = grid(work, resume=True)
    assert again.info["resumed"] == [STEPS] * 6
    assert_same(again, result)


def test_resume_of_a_lone_cell_is_padded_and_bit_identical(whole, work):
    _, result = whole
    keep_until(work, 5, EVERY)
    resumed = grid(work, resume=True)
    assert resumed.info["resumed"] == [STEPS] * 5 + [EVERY]
    assert_same(resumed, result)


def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(whole, work):
    _, result = whole
    latest = cell_dir(work, 5) / f"checkpoint_{STEPS:06d}.eqx"
    latest.write_bytes(latest.read_bytes()[:-7])  # a torn write
    with pytest.warns(CheckpointWarning, match="damaged"):
        resumed = grid(work, resume=True)
    assert resumed.info["resumed"] == [STEPS] * 5 + [EVERY]
    assert_same(resumed, result)


def test_resume_on_an_empty_folder_is_a_fresh_run(whole, work):
    _, result = whole
    shutil.rmtree(work)
    fresh = grid(work, resume=True)
    assert fresh.info["resumed"] == [0] * 6
    assert_same(fresh, result)


def test_another_grids_cell_index_is_refused_before_any_work(work):
    directory = work
    before = sorted(p.name for p in directory.rglob("*"))
    index = json.loads((directory / "cells.json").read_text())

    def never(hp, key):
        raise AssertionError("the cell function ran")

    with pytest.raises(ValueError, match=r"checkpoint_dir .* another grid's cells.json \(cell 0 is"):
        run_grid(never, {"lr": [0.01, 0.8]}, seeds=3, progress=False, checkpoint_every=EVERY,
                 checkpoint_dir=directory, resume=True)
    with pytest.raises(ValueError, match="holds 6 cells, this grid has 4"):
        run_grid(never, AXES, seeds=2, progress=False, checkpoint_every=EVERY, checkpoint_dir=directory,
                 resume=True)
    assert json.loads((directory / "cells.json").read_text()) == index  # untouched
    assert sorted(p.name for p in directory.rglob("*")) == before


@pytest.mark.parametrize("change, message", [({"log_every": 2}, "log_every=1"), ({"batch_size": 3}, "batch order"),
                                             ({"steps": 4}, "beyond steps=4")])
def test_a_cell_function_that_no_longer_fits_its_checkpoints_is_refused(work, change, message):
    keep_until(work, 1, EVERY)

    def changed(hp, key):
        params = {"w": jax.random.normal(key, (2,)), "b": jnp.zeros(())}
        options = {"steps": STEPS, "data": DATA, "batch_size": 4, "key": key, **change}
        return {"loss": fit(mse, params, optax.adam(hp["lr"]), **options).trace["loss"]}

    with pytest.raises(ValueError, match=message):
        run_grid(changed, AXES, seeds=3, progress=False, checkpoint_every=EVERY, checkpoint_dir=work, resume=True)


def test_resume_needs_checkpoints_and_a_bool():
    with pytest.raises(ValueError, match="checkpoint_every and checkpoint_dir"):
        run_grid(cell, AXES, progress=False, resume=True)
    with pytest.raises(TypeError, match="resume must be True or False"):
        run_grid(cell, AXES, progress=False, checkpoint_every=EVERY, checkpoint_dir="unused", resume="yes")


SHARDED = textwrap.dedent(
    """
    import json, pathlib, shutil, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from optlab.engine import fit, run_grid
    from optlab.engine.loop import cell_dir

    def fn(hp, key):
        res = fit(lambda p, _: jnp.sum((p - 3.0) ** 2), jax.random.normal(key, (3,)), optax.adam(hp["lr"]), steps=6)
        return {"params": res.params, "loss": res.trace["loss"]}

    root = pathlib.Path(sys.argv[1])
    run = lambda **kw: run_grid(fn, {"lr": [0.1, 0.3]}, seeds=2, mesh="auto", progress=False, checkpoint_every=2,
                                checkpoint_dir=root / "work", **kw)
    whole = run()
    shutil.copytree(root / "work", root / "whole")
    shutil.rmtree(cell_dir(root / "work", 1))
    for path in cell_dir(root / "work", 2).glob("checkpoint_00000[46].eqx"):
        path.unlink()
    resumed = run(resume=True)
    print(json.dumps({"devices": jax.device_count(), "resumed": resumed.info["resumed"],
                      "same": all(np.array_equal(resumed.outputs[k], whole.outputs[k]) for k in whole.outputs)}))
    """
)


def test_resume_sharded_over_two_devices_is_bit_identical(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"devices": 2, "resumed": [6, 0, 2, 6], "same": True}
