"""Resume inside compiled programs: fit(start=TrainState) and resume_from under jit / vmap, per-cell grid checkpoints,
complex parameters, and skips counted inside the optimizer."""

import json
from typing import NamedTuple

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.engine import best_checkpoint, fit, list_checkpoints, run_grid
from optlab.engine.loop import cell_dir, load_state, start_state

X = jnp.linspace(-1.0, 1.0, 20).reshape(10, 2)
DATA = {"x": X, "y": X @ jnp.array([2.0, -1.0]) + 0.5}
PARAMS = {"w": jnp.zeros(2), "b": jnp.zeros(())}
KEY = jax.random.key(3)


def mse(params, batch):
    return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def run(steps, lr=0.05, **kwargs):
    # Shuffled mini-batches (10 examples, batch 3): a continuation that got the batch order wrong would differ.
    return fit(mse, PARAMS, optax.adam(lr), steps=steps, data=DATA, batch_size=3, key=KEY, **kwargs)


def stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def test_start_from_a_fit_state_continues_bit_identically():
    whole, first = run(20), run(12)
    rest = run(8, start=first.state)
    chex.assert_trees_all_equal(rest.params, whole.params)
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[12:], whole.trace), rest.trace)
    assert int(rest.state.step) == 20 and int(rest.stopped_at) == 20


def test_resume_from_path_works_under_jit_and_vmap(tmp_path):
    run(8, checkpoint_every=4, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint_000004.eqx"
    eager = run(8, resume_from=path)
    jitted = jax.jit(lambda: run(8, resume_from=path).params)()
    chex.assert_trees_all_close(jitted, eager.params, rtol=1e-6)
    # vmap over the learning rate: every cell resumes from the same file, then follows its own lr.
    batched = jax.vmap(lambda lr: run(8, lr=lr, resume_from=path).params)(jnp.array([0.05, 0.2]))
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], batched), eager.params, rtol=1e-5)
    assert not np.allclose(batched["w"][1], eager.params["w"])


def test_vmap_over_cells_start_states_and_fixes_is_one_program():
    # Three "cells" trained with different learning rates, then each resumed from its own best state with two fixes.
    lrs = jnp.array([0.01, 0.05, 0.2])
    first = jax.vmap(lambda lr: run(10, lr=lr))(lrs)
    starts = start_state(first.state.best_params, first.state.opt_state, step=first.state.best_step)

    def fn(hp, key):
        del key  # the data order comes from each state's key
        start = jax.tree.map(lambda a: a[hp["cell"]], starts)
        res = run(6, lr=hp["lr"], start=start)
        return {"final": res.trace["loss"][-1], "w": res.params["w"]}

    grid = run_grid(fn, {"cell": [0, 1, 2], "lr": [0.01, 0.1]}, progress=False)
    assert grid.info["programs"] == 1
    cells = [0, 0, 1, 1, 2, 2]
    assert [c["cell"] for c in grid.cells] == cells
    alone = run(6, lr=0.1, start=jax.tree.map(lambda a: a[2], starts))  # one cell by itself
    np.testing.assert_allclose(grid.outputs["w"][5], alone.params["w"], rtol=1e-5, atol=1e-7)
    assert len({tuple(np.round(w, 6)) for w in grid.outputs["w"]}) == 6  # each cell started from its own state


def test_start_state_fields_left_none_are_filled():
    first = run(4)
    chex.assert_trees_all_equal(run(4, start=start_state()).params, first.params)
    # opt_state None resets the moments: the same as reset_optimizer_state=True on a full state.
    reset = run(4, start=start_state(first.state.params, step=first.state.step, key=first.state.key))
    chex.assert_trees_all_equal(reset.params, run(4, start=first.state, reset_optimizer_state=True).params)
    assert not np.allclose(reset.params["w"], run(8).params["w"])  # the uninterrupted run kept its moments


def test_start_with_another_structure_or_resume_from_raises(tmp_path):
    with pytest.raises(ValueError, match="start.params"):
        run(2, start=start_state({"w": jnp.zeros(3), "b": jnp.zeros(())}))
    with pytest.raises(TypeError, match="start must be a TrainState"):
        run(2, start={"w": 1})
    with pytest.raises(ValueError, match="not both"):
        run(2, start=start_state(), resume_from=tmp_path / "checkpoint_000002.eqx")


def test_resume_with_another_batch_size_raises(tmp_path):
    run(8, checkpoint_every=4, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size=3, got batch_size=2"):
        fit(mse, PARAMS, optax.adam(0.05), steps=8, data=DATA, batch_size=2, key=KEY,
            resume_from=tmp_path / "checkpoint_000004.eqx")


def cell_fit(hp, key):
    x0 = jax.random.normal(key, (2,))
    res = fit(lambda p, _: jnp.sum((p - 3.0) ** 2), x0, optax.sgd(hp["lr"]), steps=10)
    return {"final": res.trace["loss"][-1], "x": res.params}


def test_grid_keeps_per_cell_checkpoints_and_the_best_is_recoverable(tmp_path):
    # 2 lrs x 2 seeds = 4 cells in chunks of 3: the padding cell of the second chunk must not write anything.
    grid = run_grid(cell_fit, {"lr": [0.1, 1.05]}, seeds=2, chunk_size=3, progress=False, checkpoint_every=5,
                    checkpoint_dir=tmp_path)
    assert grid.info["checkpoint_cells"] == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.glob("cell_*")) == [f"cell_{i:06d}" for i in range(4)]
    index = json.loads((tmp_path / "cells.json").read_text())
    assert [(c["lr"], c["seed"]) for c in index] == [(0.1, 0), (0.1, 1), (1.05, 0), (1.05, 1)]
    for row, cell in enumerate(grid.cells):
        folder = cell_dir(tmp_path, grid.info["checkpoint_cells"][row])
        assert [p.name for p in list_checkpoints(folder)] == ["checkpoint_000005.eqx", "checkpoint_000010.eqx"]
        x0 = jax.random.normal(jax.random.key(cell["seed"]), (2,))
        last = load_state(list_checkpoints(folder)[-1], x0, optax.sgd(cell["lr"]))
        np.testing.assert_allclose(last.params, grid.outputs["x"][row], rtol=1e-6)
        assert int(last.step) == 10
    # lr 1.05 > 1 diverges on this parabola: its best saved state is the one at step 5, for lr 0.1 the last one.
    assert best_checkpoint(cell_dir(tmp_path, 0)).name == "checkpoint_000010.eqx"
    assert best_checkpoint(cell_dir(tmp_path, 2)).name == "checkpoint_000005.eqx"


def test_grid_without_checkpoints_is_unchanged(tmp_path):
    plain = run_grid(cell_fit, {"lr": [0.1, 0.5]}, progress=False)
    kept = run_grid(cell_fit, {"lr": [0.1, 0.5]}, progress=False, checkpoint_every=5, checkpoint_dir=tmp_path)
    chex.assert_trees_all_close(kept.outputs, plain.outputs, rtol=1e-6)
    assert "checkpoint_cells" not in plain.info


def traced_fit(steps):
    def fn(hp, key):
        res = fit(mse, PARAMS, optax.adam(hp["lr"]), steps=steps, data=DATA, batch_size=3, key=key)
        return {"loss": res.trace["loss"], "w": res.params["w"]}
    return fn


def test_grid_checkpoints_write_the_rows_so_far_and_change_no_bit(tmp_path):
    # 12 steps every 5: two full chunks (one scan) and a partial last one; each file holds the trace up to its step.
    plain = run_grid(traced_fit(12), {"lr": [0.05, 0.2]}, seeds=2, progress=False)
    kept = run_grid(traced_fit(12), {"lr": [0.05, 0.2]}, seeds=2, progress=False, checkpoint_every=5,
                    checkpoint_dir=tmp_path)
    chex.assert_trees_all_equal(kept.outputs, plain.outputs)
    for row in range(4):
        files = list_checkpoints(cell_dir(tmp_path, kept.info["checkpoint_cells"][row]))
        assert [p.name for p in files] == [f"checkpoint_{s:06d}.eqx" for s in (5, 10, 12)]
        for path, n in zip(files, (5, 10, 12)):
            stored = optlab.engine.checkpoint.read_leaves(path).trace["loss"]
            np.testing.assert_array_equal(stored, plain.outputs["loss"][row][:n])


def count_scans(jaxpr) -> int:
    found = 0
    for eqn in jaxpr.eqns:
        found += eqn.primitive.name == "scan"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += count_scans(sub)
    return found


def test_grid_checkpoints_compile_one_step_loop_whatever_their_number(tmp_path):
    # The chunks between checkpoints are one scan: 4 checkpoints and 40 give programs of the same size.
    def scans(steps):
        cell = optlab.engine.cell_checkpoints.GridCell(5, tmp_path, jnp.int32(0))
        with optlab.engine.cell_checkpoints.grid_cell(cell):
            jaxpr = jax.make_jaxpr(traced_fit(steps))({"lr": 0.1}, KEY)
        return count_scans(jaxpr.jaxpr)

    assert scans(200) == scans(20) > 0


@pytest.mark.parametrize("calls", [0, 2])
def test_grid_checkpoints_need_exactly_one_fit_per_cell(tmp_path, calls):
    def fn(hp, key):
        out = {"x": hp["lr"]}
        for _ in range(calls):
            out["x"] = fit(lambda p, _: jnp.sum(p**2), jnp.ones(2), optax.sgd(hp["lr"]), steps=2).params
        return out

    with pytest.raises(ValueError, match="never called|twice"):
        run_grid(fn, {"lr": [0.1]}, progress=False, checkpoint_every=2, checkpoint_dir=tmp_path)


class CountingState(NamedTuple):
    skipped: jax.Array  # () int32: updates this optimizer refused


def refusing_sgd(lr):
    """SGD that refuses (zero update, counts it) every update whose gradient norm exceeds 1."""

    def update(g, state, params=None):
        refuse = optax.tree.norm(g) > 1.0
        step = optax.tree.scale(jnp.where(refuse, 0.0, -lr), g)
        return step, CountingState(state.skipped + refuse.astype(jnp.int32))

    return optax.GradientTransformation(lambda p: CountingState(jnp.zeros((), jnp.int32)), update)


def test_skips_counted_inside_the_optimizer_are_skipped_steps():
    # |grad| = 2|p - 3|: from p = 0 every update is refused, from p = 2.9 none is.
    far = fit(lambda p, _: (p - 3.0) ** 2, jnp.zeros(()), refusing_sgd(0.1), steps=6)
    near = fit(lambda p, _: (p - 3.0) ** 2, jnp.array(2.9), refusing_sgd(0.1), steps=6)
    assert int(far.skipped_steps) == 6 and bool(far.trace["skipped"].all())
    assert int(near.skipped_steps) == 0 and not bool(near.trace["skipped"].any())


TARGET = jnp.array([1.0 + 2.0j, -0.5 + 0.25j])
A = jnp.array([[1.0, 0.5j], [-0.25j, 1.0 + 0.5j], [0.3, -1.0]], jnp.complex64)


def complex_lsq(z, _):
    return jnp.sum(jnp.abs(A @ z - A @ TARGET) ** 2)


def test_adam_on_complex_least_squares_matches_optax_directly():
    z0, tx = jnp.zeros(2, jnp.complex64), optax.adam(0.05)
    result = fit(complex_lsq, z0, tx, steps=300)
    z, state = z0, tx.init(z0)
    for _ in range(300):  # the optax convention: conjugate jax.grad of a real loss before the optimizer
        updates, state = tx.update(jnp.conj(jax.grad(complex_lsq)(z, None)), state, z)
        z = optax.apply_updates(z, updates)
    assert result.params.dtype == jnp.complex64
    np.testing.assert_allclose(result.params, z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.params, TARGET, atol=2e-2)


def test_newton_root_step_on_complex_parameters():
    z0 = jnp.zeros(2, jnp.complex64)
    result = fit(complex_lsq, z0, optlab.newton_root(0.5), steps=60, dtype="complex64")
    assert result.params.dtype == jnp.complex64 and int(result.skipped_steps) == 0
    # One damped Newton-root step by hand: p - lr * L / ||g||^2 * conj(grad).
    g = jnp.conj(jax.grad(complex_lsq)(z0, None))
    step = z0 - 0.5 * complex_lsq(z0, None) / jnp.sum(jnp.abs(g) ** 2) * g
    np.testing.assert_allclose(fit(complex_lsq, z0, optlab.newton_root(0.5), steps=1).params, step, rtol=1e-5)
    assert float(result.trace["loss"][-1]) < 1e-3 * float(result.trace["loss"][0])


def test_complex_leaves_keep_their_imaginary_part_and_half_precision_is_refused():
    params = {"z": jnp.array([1.0 + 1.0j]), "r": jnp.array([1.0])}
    result = fit(lambda p, _: jnp.sum(jnp.abs(p["z"]) ** 2 + p["r"] ** 2), params, optax.sgd(0.0), steps=1)
    assert result.params["z"].dtype == jnp.complex64 and result.params["r"].dtype == jnp.float32
    chex.assert_trees_all_equal(result.params, params)
    with pytest.raises(ValueError, match="no complex twin"):
        fit(lambda p, _: jnp.sum(jnp.abs(p) ** 2), jnp.ones(2, jnp.complex64), optax.sgd(0.1), steps=1,
            dtype="float16")
