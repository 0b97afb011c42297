"""Checkpoints: bit-identical resume, fresh-optimizer resume, listing, one run per directory, damaged files skipped
with a warning, and clear errors for bad files. (SIGKILL during saves: test_checkpoint_kill.py.)"""

import json
import threading
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.engine import EarlyStop, fit, schedules

from optlab.engine.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    TrainState,
    best_checkpoint,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    start_run,
    verify_checkpoint,
)

X = jnp.linspace(-1.0, 1.0, 16).reshape(8, 2)
DATA = {"x": X, "y": X @ jnp.array([2.0, -1.0]) + 0.5}
PARAMS = {"w": jnp.zeros(2), "b": jnp.zeros(())}


def mse(params, batch):
    return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def shuffled_run(steps, **kwargs):
    """Adam on shuffled mini-batches with a schedule: every piece of state a resume must restore."""
    return fit(mse, PARAMS, optax.adam(0.05), steps=steps, data=DATA, batch_size=3, key=jax.random.key(3),
               log_every=2, schedule=schedules.cosine(20, lr_min=0.1), early_stop=EarlyStop(50, 1e-4), **kwargs)


def assert_same_run(a, b):
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.best_params, b.best_params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)
    chex.assert_trees_all_equal(a.trace, b.trace)
    for field in ("best_step", "best_loss", "stopped_at", "skipped_steps"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_resume_is_bit_identical(tmp_path):
    uninterrupted = shuffled_run(20)
    interrupted = shuffled_run(12, checkpoint_every=4, checkpoint_dir=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"checkpoint_{s:06d}.eqx" for s in (4, 8, 12)]
    assert not list(tmp_path.glob("*.json"))  # one file per checkpoint: nothing to get out of step
    chex.assert_trees_all_equal(interrupted.trace, jax.tree.map(lambda r: r[:6], uninterrupted.trace))
    # Resume from before the last checkpoint, checkpointing again: chunks stay aligned to multiples of 4.
    resumed = shuffled_run(20, resume_from=tmp_path / "checkpoint_000008.eqx", checkpoint_every=4,
                           checkpoint_dir=tmp_path)
    assert_same_run(resumed, uninterrupted)
    assert read_meta(tmp_path / "checkpoint_000020.eqx")["step"] == 20


def test_early_stop_counters_survive_resume(tmp_path):
    forward = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                           lambda g, s, p=None: (optax.tree.full_like(g, 1.0), s))

    def run(**kwargs):  # p = 0, 1, 2, ...: loss (p - 3.2)^2 is best at step 3, patience 2 stops at step 5
        return fit(lambda p, b: (p - 3.2) ** 2, jnp.zeros(()), forward, steps=10, early_stop=EarlyStop(2), **kwargs)

    run(checkpoint_every=4, checkpoint_dir=tmp_path)
    resumed = run(resume_from=tmp_path / "checkpoint_000004.eqx")  # wait = 1 at step 4 must be restored
    assert int(resumed.stopped_at) == 5 and int(resumed.best_step) == 3 and float(resumed.params) == 5.0


def test_best_checkpoint_has_lowest_recorded_loss(tmp_path):
    result = fit(mse, PARAMS, optax.sgd(0.9), steps=12, data=DATA, checkpoint_every=3, checkpoint_dir=tmp_path)
    losses = {int(read_meta(p)["step"]): read_meta(p)["loss"] for p in list_checkpoints(tmp_path)}
    assert sorted(losses) == [3, 6, 9, 12]
    for step in (3, 6, 9):  # the recorded loss is the loss at the saved params: the next trace row
        np.testing.assert_allclose(losses[step], result.trace["loss"][step], rtol=1e-6)
    best = best_checkpoint(tmp_path)
    assert read_meta(best)["loss"] == min(losses.values())


def test_reset_optimizer_state_and_optimizer_switch(tmp_path):
    params_8 = fit(mse, PARAMS, optax.adam(0.05), steps=8, data=DATA, checkpoint_every=8,
                   checkpoint_dir=tmp_path).params
    path = tmp_path / "checkpoint_000008.eqx"

    reset = fit(mse, PARAMS, optax.adam(0.05), steps=16, data=DATA, resume_from=path, reset_optimizer_state=True)
    fresh = fit(mse, params_8, optax.adam(0.05), steps=8, data=DATA)  # fresh moments from the step-8 params
    chex.assert_trees_all_close(reset.params, fresh.params, rtol=1e-6, atol=1e-7)
    assert int(reset.opt_state[0].count) == 8  # moments restarted at the resume point (16 when kept)

    with pytest.warns(UserWarning, match="checkpoint_000008.eqx.*does not fit"):
        switched = fit(mse, PARAMS, optax.sgd(0.1), steps=16, data=DATA, resume_from=path,
                       metrics_fn=lambda p: {"b": p["b"]})
    sgd_only = fit(mse, params_8, optax.sgd(0.1), steps=8, data=DATA)
    chex.assert_trees_all_close(switched.params, sgd_only.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(switched.trace["loss"][8:], sgd_only.trace["loss"], rtol=1e-6)
    # A trace entry the stored run did not record is NaN for the stored rows.
    assert np.isnan(switched.trace["metrics/b"][:8]).all() and np.isfinite(switched.trace["metrics/b"][8:]).all()


def test_resume_inside_vmap_over_learning_rates(tmp_path):
    fit(mse, PARAMS, optax.adam(0.05), steps=4, data=DATA, checkpoint_every=4, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint_000004.eqx"

    def run(lr):
        return fit(mse, PARAMS, optax.sgd(lr), steps=8, data=DATA, resume_from=path,
                   reset_optimizer_state=True).trace["loss"]

    batched = jax.vmap(run)(jnp.array([0.05, 0.2]))
    np.testing.assert_allclose(batched[1], run(0.2), rtol=1e-6)
    np.testing.assert_array_equal(batched[0, :4], batched[1, :4])  # the stored rows are shared


def _saved(tmp_path):
    state = TrainState(
        step=jnp.array(6, jnp.int32),
        params={"w": jnp.arange(3, dtype=jnp.bfloat16)},
        opt_state=optax.adam(0.1).init({"w": jnp.arange(3, dtype=jnp.bfloat16)}),
        key=jax.random.key(7),
        best_params={"w": jnp.ones(3, jnp.bfloat16)},
        best_loss=jnp.array(0.5),
        best_step=jnp.array(4, jnp.int32),
        wait=jnp.array(2, jnp.int32),
        stopped_at=jnp.array(-1, jnp.int32),
        skipped=jnp.array(1, jnp.int32),
    )
    trace = {"loss": jnp.arange(3.0), "skipped": jnp.array([False, True, False])}
    return save_checkpoint(tmp_path / "checkpoint_000006", state, trace, loss=0.25, log_every=2), state, trace


def test_save_load_roundtrip(tmp_path):
    path, state, trace = _saved(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoints.lock", ".checkpoints.run",
                                                          "checkpoint_000006.eqx"]  # no temp files left
    loaded = load_checkpoint(path, state)
    chex.assert_trees_all_equal(jax.random.key_data(loaded.state.key), jax.random.key_data(state.key))
    chex.assert_trees_all_equal(loaded.state._replace(key=None), state._replace(key=None))
    chex.assert_trees_all_equal(loaded.trace, trace)
    assert loaded.meta["loss"] == 0.25 and loaded.meta["step"] == 6
    assert load_checkpoint(path, state._replace(opt_state=None)).state.opt_state is None


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-40] + b"\x00" + p.read_bytes()[-39:]), "file is corrupted"),
        (lambda p: p.write_bytes(p.read_bytes()[:60] + b"\x00" + p.read_bytes()[61:]), "header is corrupted"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\x00"), "extra bytes"),
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_bytes(b""), "truncated"),
        (lambda p: p.write_bytes(b"\x93NUMPY" + bytes(60)), "not an optlab checkpoint"),
    ],
    ids=["truncated", "payload-bit-flip", "header-bit-flip", "extra-bytes", "missing", "empty", "foreign"],
)
def test_damaged_checkpoint_names_file_and_reason(tmp_path, damage, match):
    path, state, _ = _saved(tmp_path)
    damage(path)
    with pytest.raises(CheckpointError, match=f"checkpoint_000006.*{match}"):
        load_checkpoint(path, state)


def test_structure_mismatch_is_reported(tmp_path):
    path, state, _ = _saved(tmp_path)
    wrong = state._replace(params={"w": jnp.zeros(4, jnp.bfloat16)})
    with pytest.raises(CheckpointError, match=r"checkpoint_000006.eqx.*structure mismatch.*\[3\].*\[4\]"):
        load_checkpoint(path, wrong)
    with pytest.raises(CheckpointError, match="checkpoint_000006.eqx.*structure mismatch in opt_state"):
        load_checkpoint(path, state._replace(opt_state=optax.sgd(0.1, momentum=0.9).init(state.params)))


def test_fit_reports_bad_resume(tmp_path):
    fit(mse, PARAMS, optax.sgd(0.1), steps=4, data=DATA, log_every=2, checkpoint_every=2, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint_000004.eqx"
    with pytest.raises(ValueError, match="step 4, beyond steps=2"):
        fit(mse, PARAMS, optax.sgd(0.1), steps=2, data=DATA, log_every=2, resume_from=path)
    with pytest.raises(ValueError, match="log_every=2"):
        fit(mse, PARAMS, optax.sgd(0.1), steps=8, data=DATA, resume_from=path)
    with pytest.raises(CheckpointError, match="checkpoint_000004.eqx.*structure mismatch"):
        fit(mse, {"w": jnp.zeros(3), "b": jnp.zeros(())}, optax.sgd(0.1), steps=8, data=DATA, log_every=2,
            resume_from=path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="checkpoint_000004.eqx.*truncated"):
        fit(mse, PARAMS, optax.sgd(0.1), steps=8, data=DATA, log_every=2, resume_from=path)


def test_checkpointing_inside_vmap_raises(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every cannot be used inside"):
        jax.vmap(lambda lr: fit(mse, PARAMS, optax.sgd(lr), steps=2, data=DATA, checkpoint_every=2,
                                checkpoint_dir=tmp_path).params)(jnp.array([0.1, 0.2]))


def test_best_checkpoint_of_empty_dir_raises(tmp_path):
    assert list_checkpoints(tmp_path / "none") == []
    with pytest.raises(CheckpointError, match="no checkpoint"):
        best_checkpoint(tmp_path)


def _state(params, step=6):
    return TrainState(
        step=jnp.array(step, jnp.int32), params=params, opt_state=optax.adam(0.1).init(params), key=jax.random.key(7),
        best_params=params, best_loss=jnp.array(0.5), best_step=jnp.array(4, jnp.int32), wait=jnp.array(0, jnp.int32),
        stopped_at=jnp.array(-1, jnp.int32), skipped=jnp.array(0, jnp.int32),
    )


def _save_losses(directory, losses, run_id="run-a"):
    params = {"w": jnp.zeros(2)}
    return [save_checkpoint(checkpoint_path(directory, step), _state(params, step), loss=loss, run_id=run_id)
            for step, loss in losses.items()]


def _flip_payload(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_complex64_leaves_round_trip(tmp_path):
    params = {"z": jnp.array([1 + 2j, -3.5 + 0.25j], jnp.complex64), "r": jnp.ones(2, jnp.float32)}
    state = _state(params)
    path = save_checkpoint(tmp_path / "checkpoint_000006", state, {"loss": jnp.arange(3.0)}, loss=0.1)
    loaded = load_checkpoint(path, state)
    assert loaded.state.params["z"].dtype == jnp.complex64 and loaded.state.opt_state[0].mu["z"].dtype == jnp.complex64
    chex.assert_trees_all_equal(loaded.state._replace(key=None), state._replace(key=None))
    assert any(path.endswith("['z']") and dtype == "complex64" for path, _, dtype in read_meta(path)["layout"]["state"])


@settings(max_examples=40, deadline=None)
@given(position=st.floats(0.0, 1.0, exclude_max=True), byte=st.integers(1, 255))
def test_any_changed_byte_is_detected(tmp_path_factory, position, byte):
    path, state, _ = _saved(tmp_path_factory.mktemp("flip"))
    data = bytearray(path.read_bytes())
    data[int(position * len(data))] ^= byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint_000006.eqx cannot be loaded"):
        load_checkpoint(path, state)
    with pytest.warns(CheckpointWarning, match="checkpoint_000006.eqx"):
        assert list_checkpoints(path.parent) == []


def test_best_and_latest_skip_damaged_with_a_warning(tmp_path):
    paths = _save_losses(tmp_path, {3: 0.3, 6: 0.1, 9: 0.2, 12: 0.4})
    _flip_payload(paths[1])  # the lowest loss: its header still reads, only the full check catches it
    paths[3].write_bytes(paths[3].read_bytes()[:-3])  # the newest: truncated
    with pytest.warns(CheckpointWarning, match=r"checkpoint_000006.eqx \(file is corrupted"):
        assert best_checkpoint(tmp_path) == paths[2]
    with pytest.warns(CheckpointWarning, match=r"2 damaged.*000006.eqx.*checkpoint_000012.eqx \(file is truncated"):
        assert list_checkpoints(tmp_path) == [paths[0], paths[2]]
    with pytest.warns(CheckpointWarning, match="checkpoint_000012.eqx"):
        assert latest_checkpoint(tmp_path) == paths[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list_checkpoints(tmp_path / "absent") == []
    for path in paths:
        path.write_bytes(b"")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no checkpoint in .* is intact"):
        best_checkpoint(tmp_path)


def test_a_directory_belongs_to_one_run(tmp_path):
    _save_losses(tmp_path, {2: 0.5, 4: 0.4}, run_id="run-a")
    with pytest.raises(CheckpointError, match=r"holds checkpoints of another run \(run run-a: checkpoint_000002.eqx, "
                                              r"checkpoint_000004.eqx\); this run is run-b.*overwrite=True"):
        _save_losses(tmp_path, {2: 0.1}, run_id="run-b")
    with pytest.raises(CheckpointError, match="another run"):
        start_run(tmp_path)
    assert start_run(tmp_path, resume_from=tmp_path / "checkpoint_000004.eqx") == "run-a"  # a resume continues it
    assert start_run(tmp_path, overwrite=True) != "run-a"
    assert [read_meta(p)["loss"] for p in list_checkpoints(tmp_path)] == [0.5, 0.4]  # nothing was touched
    _save_losses(tmp_path, {6: 0.3})  # the same run adds and overwrites its own
    save_checkpoint(checkpoint_path(tmp_path, 8), _state({"w": jnp.zeros(2)}, 8), loss=0.2)  # no id: joins run-a
    assert {read_meta(p)["run_id"] for p in list_checkpoints(tmp_path)} == {"run-a"}
    save_checkpoint(checkpoint_path(tmp_path, 2), _state({"w": jnp.zeros(2)}, 2), loss=0.1, run_id="run-b",
                    overwrite=True)
    remaining = [(p.name, read_meta(p)["run_id"]) for p in list_checkpoints(tmp_path)]
    assert remaining == [("checkpoint_000002.eqx", "run-b")]
    for path in list_checkpoints(tmp_path):  # a directory emptied by hand is free again
        path.unlink()
    _save_losses(tmp_path, {2: 0.1}, run_id="run-c")


def test_fit_refuses_another_runs_directory(tmp_path):
    fit(mse, PARAMS, optax.sgd(0.1), steps=4, data=DATA, checkpoint_every=2, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another run.*overwrite_checkpoints=True"):
        fit(mse, PARAMS, optax.adam(0.1), steps=2, data=DATA, checkpoint_every=2, checkpoint_dir=tmp_path)
    fit(mse, PARAMS, optax.adam(0.1), steps=2, data=DATA, checkpoint_every=2, checkpoint_dir=tmp_path,
        overwrite_checkpoints=True)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_000002.eqx"]  # run 1's step 4 is gone
    assert "mu" in str(read_meta(tmp_path / "checkpoint_000002.eqx")["layout"]["opt_state"])  # adam's, not sgd's


def test_threads_of_two_runs_never_mix(tmp_path):
    barrier, errors = threading.Barrier(4), []

    def writer(run_id, steps):
        barrier.wait()
        try:
            _save_losses(tmp_path, {s: s / 10 for s in steps}, run_id=run_id)
        except CheckpointError as err:
            errors.append((run_id, str(err)))

    threads = [threading.Thread(target=writer, args=args) for args in
               (("run-a", (1, 2, 3)), ("run-b", (1, 2, 3)), ("run-a", (4, 5, 6)), ("run-b", (4, 5, 6)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        owners = {read_meta(p)["run_id"] for p in list_checkpoints(tmp_path)}
    assert len(owners) == 1 and {run for run, _ in errors} == {"run-a", "run-b"} - owners
    assert len(list_checkpoints(tmp_path)) in (3, 6) and not list(tmp_path.glob(".*.tmp"))


def test_stale_temp_files_are_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".checkpoint_000004.eqx.k1ll3d.tmp"
    other = tmp_path / ".report.md.x.tmp"  # not a checkpoint's: left alone
    stale.write_bytes(b"half a checkpoint")
    other.write_bytes(b"")
    assert list_checkpoints(tmp_path) == []  # never listed
    _save_losses(tmp_path, {2: 0.5})
    assert not stale.exists() and other.exists()


def test_old_two_file_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint_000004.eqx"
    path.write_bytes(b"\x93NUMPY\x01\x00" + bytes(100))
    path.with_suffix(".json").write_text(json.dumps({"format": 1, "step": 4}))
    with pytest.raises(CheckpointError, match="checkpoint_000004.eqx.*old two-file format"):
        load_checkpoint(path, _state({"w": jnp.zeros(2)}))
    with pytest.warns(CheckpointWarning, match="checkpoint_000004.eqx .*old two-file format"):
        assert list_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointError, match="run format 1: checkpoint_000004.eqx"):
        _save_losses(tmp_path, {2: 0.5})


def test_bad_arguments_are_refused(tmp_path):
    state = _state({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="run_id must be"):
        save_checkpoint(tmp_path / "c", state, run_id="../x")
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        save_checkpoint(tmp_path / "c", state, overwrite="yes")
    with pytest.raises(TypeError, match="state must be a TrainState"):
        save_checkpoint(tmp_path / "c", {"w": 1})
    with pytest.raises(ValueError, match="not traced"):
        jax.jit(lambda s: save_checkpoint(tmp_path / "c", s) and 0)(state)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # refused before any file was touched
    assert verify_checkpoint(save_checkpoint(tmp_path / "c", state))["step"] == 6
