"""fit(): the scan loop against hand-written Python loops of the same optax steps, plus its guards."""

from typing import NamedTuple

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optlab
from optlab.engine import EarlyStop, batching, fit, schedules

X = jnp.linspace(-1.0, 1.0, 12).reshape(6, 2)
Y = X @ jnp.array([2.0, -1.0]) + 0.5
DATA = {"x": X, "y": Y}
PARAMS = {"dense": {"w": jnp.zeros(2), "b": jnp.zeros(())}}


def mse(params, batch):
    pred = batch["x"] @ params["dense"]["w"] + params["dense"]["b"]
    return jnp.mean((pred - batch["y"]) ** 2)


def python_loop(loss, params, tx, steps, batch_of=lambda t: None, *, skip=lambda t: False, extra=False):
    """The reference: a plain Python loop of optax steps (losses before each update)."""
    tx = optax.with_extra_args_support(tx)

    @jax.jit
    def step(params, state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        kwargs = dict(value=value, grad=grads, value_fn=lambda p: loss(p, batch)) if extra else {}
        updates, new_state = tx.update(grads, state, params, **kwargs)
        return optax.apply_updates(params, updates), new_state, value

    state, losses = tx.init(params), []
    for t in range(steps):
        new_params, new_state, value = step(params, state, batch_of(t))
        losses.append(value)
        if not skip(t):
            params, state = new_params, new_state
    return params, jnp.stack(losses)


def constant_step(size):
    """A transformation whose update is `size` everywhere (moves params at constant speed)."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(), lambda g, state, params=None: (optax.tree.full_like(g, size), state)
    )


class RecordState(NamedTuple):
    step_scale: jax.Array  # (2,) [value, 2 * value] seen by the last update
    value_fn_gap: jax.Array  # () value_fn(params) - value


def recording_sgd(lr):
    """SGD that stores the `value=` it got and checks `value_fn=` against it."""

    def update(g, state, params=None, *, value, value_fn, **extra):
        del extra  # grad= is not needed here
        new = RecordState(jnp.stack([value, 2 * value]), value_fn(params) - value)
        return optax.tree.scale(-lr, g), new

    return optax.GradientTransformationExtraArgs(lambda p: RecordState(jnp.zeros(2), jnp.zeros(())), update)


@pytest.mark.parametrize("tx", [optax.sgd(0.2), optax.adam(0.05), optax.sgd(0.1, momentum=0.9)],
                         ids=["sgd", "adam", "momentum"])
def test_full_batch_matches_python_loop(tx):
    result = fit(mse, PARAMS, tx, steps=25, data=DATA)
    params, losses = python_loop(mse, PARAMS, tx, 25, lambda t: DATA)
    chex.assert_trees_all_close(result.params, params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.trace["loss"], losses, rtol=1e-5, atol=1e-7)
    assert int(result.stopped_at) == 25 and int(result.skipped_steps) == 0


def test_fixed_order_minibatches_match_python_loop():
    tx = optax.adam(0.05)
    result = fit(mse, PARAMS, tx, steps=14, data=DATA, batch_size=4, shuffle=False)
    # 6 examples, batch 4: one batch per epoch (the last partial batch is dropped), always rows 0..3.
    params, losses = python_loop(mse, PARAMS, tx, 14, lambda t: jax.tree.map(lambda a: a[:4], DATA))
    chex.assert_trees_all_close(result.params, params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.trace["loss"], losses, rtol=1e-5)


def _batch_sums(shuffle, key=None):
    # grad of -p * sum(batch) is -sum(batch): grad_norm reveals each step's batch; data 2^i makes sums decodable.
    data = 2.0 ** jnp.arange(10)
    result = fit(lambda p, b: -p * jnp.sum(b), jnp.zeros(()), optax.sgd(1.0), steps=9, data=data, batch_size=3,
                 shuffle=shuffle, key=key)
    return np.asarray(result.trace["grad_norm"]).astype(np.int64).reshape(3, 3)  # (epoch, step in epoch)


def test_fixed_order_batches():
    np.testing.assert_array_equal(_batch_sums(False), np.tile([7, 56, 448], (3, 1)))


def test_shuffled_batches_cover_each_epoch_once():
    sums = _batch_sums(True, jax.random.key(0))
    for epoch in sums:
        a, b, c = (int(v) for v in epoch)
        assert a & b == 0 and a & c == 0 and b & c == 0  # no example twice within an epoch
        assert [bin(v).count("1") for v in (a, b, c)] == [3, 3, 3]
        assert bin(a | b | c).count("1") == 9  # 9 of 10 examples: the partial last batch is dropped
    assert len({tuple(epoch) for epoch in sums}) > 1  # a new permutation per epoch
    np.testing.assert_array_equal(sums, _batch_sums(True, jax.random.key(0)))  # a function of the key


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch_size", [3, 4])
def test_next_batch_from_any_start_equals_batch_at(shuffle, batch_size):
    # The order carried through a scan (drawn once per epoch) gives the batches batch_at draws from (key, step).
    data = {"x": jnp.arange(20.0).reshape(10, 2), "i": jnp.arange(10)}
    key = jax.random.key(7)

    @jax.jit
    def carried(start):
        def body(order, t):
            batch, order = batching.next_batch(data, t, key, order, batch_size, shuffle)
            return order, batch
        order = batching.init_order(data, start, key, batch_size, shuffle)
        return jax.lax.scan(body, order, start + jnp.arange(11))[1]

    for start in (0, 2, 7):  # at an epoch start and mid-epoch (3 or 2 batches per epoch)
        expected = jax.vmap(lambda t: batching.batch_at(data, t, key, batch_size, shuffle))(start + jnp.arange(11))
        chex.assert_trees_all_equal(carried(jnp.int32(start)), expected)


def test_shuffled_batches_depend_only_on_key_and_step(tmp_path):
    # grad of -p * sum(batch) is -sum(batch), so grad_norm is the batch sum; 10 examples, batch 3: 3 steps per
    # epoch, so chunks of 4 steps and the resume at step 8 start mid-epoch.
    data, key = 2.0 ** jnp.arange(10), jax.random.key(5)

    def run(**kwargs):
        return fit(lambda p, b: -p * jnp.sum(b), jnp.zeros(()), optax.sgd(1.0), steps=14, data=data, batch_size=3,
                   key=key, **kwargs)

    whole = run()
    sums = [float(jnp.sum(batching.batch_at(data, t, key, 3, True))) for t in range(14)]
    np.testing.assert_array_equal(whole.trace["grad_norm"], sums)
    chunked = run(checkpoint_every=4, checkpoint_dir=tmp_path)
    resumed = run(resume_from=tmp_path / "checkpoint_000008.eqx")
    for other in (chunked, resumed):
        chex.assert_trees_all_equal(other.trace, whole.trace)
        chex.assert_trees_all_equal(other.params, whole.params)


def test_vmapped_fit_keeps_the_epoch_redraw_a_branch():
    # The step counter is the same in every grid cell, so vmap keeps the once-per-epoch redraw a cond; a batched
    # predicate would have become a select that draws a permutation every step.
    def run(lr, key):
        return fit(mse, PARAMS, optax.sgd(lr), steps=7, data=DATA, batch_size=2, key=key).params

    jaxpr = jax.make_jaxpr(jax.vmap(run))(jnp.ones(2), jax.random.split(jax.random.key(0), 2))
    assert "cond[" in str(jaxpr)


def test_log_every_rows_equal_every_step_rows():
    # A window computes its row at its first step only: every entry equals the per-step trace sampled there.
    kwargs = dict(steps=12, data=DATA, batch_size=2, key=jax.random.key(2), schedule=schedules.cosine(12),
                  metrics_fn=lambda p: {"b": p["dense"]["b"]})
    tx = optlab.newton_root(0.5, scaling="per_layer")
    every, sparse = fit(mse, PARAMS, tx, **kwargs), fit(mse, PARAMS, tx, log_every=4, **kwargs)
    assert set(sparse.trace) == set(every.trace)
    for name in every.trace:
        if name != "skipped":
            np.testing.assert_array_equal(sparse.trace[name], every.trace[name][::4], err_msg=name)
    chex.assert_trees_all_equal(sparse.params, every.params)
    chex.assert_trees_all_equal(sparse.best_params, every.best_params)


def test_polyak_sgd_receives_value():
    tx = optax.polyak_sgd(max_learning_rate=1.0)
    result = fit(mse, PARAMS, tx, steps=10, data=DATA)
    params, losses = python_loop(mse, PARAMS, tx, 10, lambda t: DATA, extra=True)
    chex.assert_trees_all_close(result.params, params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.trace["loss"], losses, rtol=1e-5)


def test_line_search_receives_grad_and_value_fn():
    tx = optax.chain(optax.sgd(2.0), optax.scale_by_backtracking_linesearch(max_backtracking_steps=10))
    result = fit(mse, PARAMS, tx, steps=6, data=DATA)
    params, losses = python_loop(mse, PARAMS, tx, 6, lambda t: DATA, extra=True)
    chex.assert_trees_all_close(result.params, params, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(losses) < 0)  # the line search accepted only decreasing steps


def test_value_fn_is_the_current_batch_loss_and_step_scale_is_recorded():
    result = fit(mse, PARAMS, recording_sgd(0.1), steps=8, data=DATA, batch_size=2, key=jax.random.key(1))
    assert int(result.opt_state.value_fn_gap) == 0
    np.testing.assert_allclose(result.trace["step_scale"][:, 0], result.trace["loss"], rtol=1e-6)
    np.testing.assert_allclose(result.trace["step_scale"][:, 1], 2 * result.trace["loss"], rtol=1e-6)
    assert "step_scale" not in fit(mse, PARAMS, optax.sgd(0.1), steps=2, data=DATA).trace


def test_schedule_multiplies_update_and_is_traced():
    sched = schedules.warmup_cosine(3, 12, lr_min=0.1)
    result = fit(mse, PARAMS, optax.adam(0.1), steps=12, data=DATA, schedule=sched)
    scaled = optax.chain(optax.adam(0.1), optax.scale_by_schedule(sched))
    params, losses = python_loop(mse, PARAMS, scaled, 12, lambda t: DATA)
    chex.assert_trees_all_close(result.params, params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.trace["lr"], jax.vmap(sched)(jnp.arange(12)), rtol=1e-6)
    np.testing.assert_array_equal(fit(mse, PARAMS, optax.sgd(0.1), steps=3, data=DATA).trace["lr"], 1.0)


def test_clip_matches_optax_chain():
    result = fit(mse, PARAMS, optax.sgd(0.3), steps=10, data=DATA, clip=0.5)
    params, _ = python_loop(mse, PARAMS, optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.3)), 10,
                            lambda t: DATA)
    chex.assert_trees_all_close(result.params, params, rtol=1e-5, atol=1e-6)
    assert float(result.trace["grad_norm"][0]) > 0.5  # clipping was active; the trace keeps the raw norm


def test_weight_decay_is_adamw_convention():
    lr, wd = 0.05, 0.3
    start = {"dense": {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}}
    ours = fit(mse, start, optax.adam(lr), steps=15, data=DATA, weight_decay=lr * wd)
    reference = fit(mse, start, optax.adamw(lr, weight_decay=wd), steps=15, data=DATA)
    chex.assert_trees_all_close(ours.params, reference.params, rtol=1e-5, atol=1e-6)


def _overshoot(early_stop):
    # p moves 0, 1, 2, ...; loss (p - 3.2)^2 is lowest at step 3 (p = 3), then rises.
    return fit(lambda p, b: (p - 3.2) ** 2, jnp.zeros(()), constant_step(1.0), steps=10, early_stop=early_stop)


def test_early_stop_freezes_and_keeps_best():
    result = _overshoot(EarlyStop(patience=2))
    assert int(result.stopped_at) == 5 and int(result.best_step) == 3
    assert float(result.params) == 5.0 and float(result.best_params) == 3.0  # updates 0..4 applied, then frozen
    np.testing.assert_allclose(result.best_loss, 0.04, rtol=1e-5)
    np.testing.assert_allclose(result.trace["loss"][5:], (5 - 3.2) ** 2, rtol=1e-6)
    free = _overshoot(None)
    assert float(free.params) == 10.0 and int(free.stopped_at) == 10 and float(free.best_params) == 3.0


def test_early_stop_min_delta():
    # Improvements 10.24 -> 4.84 (> 5? no: 5.4 yes) -> 1.44 (3.4 < 5) -> 0.04 (1.4 < 5): wait hits 2 at step 3.
    result = _overshoot(EarlyStop(patience=2, min_delta=5.0))
    assert int(result.stopped_at) == 3 and int(result.best_step) == 3 and float(result.params) == 3.0


def _block_reference(losses, every, patience, min_delta):
    """Epoch-loop early stopping in float32: (stopped_at, per-step best step over the applied steps)."""
    best, wait, stopped = np.float32(np.inf), 0, len(losses)
    for j in range(len(losses) // every):
        total = np.float32(0.0)
        for v in losses[j * every:(j + 1) * every]:
            total = np.float32(total + v)
        mean = np.float32(total / np.float32(every))
        wait = 0 if mean < np.float32(best - np.float32(min_delta)) else wait + 1
        best = min(best, mean)
        if wait >= patience:
            stopped = (j + 1) * every  # the block is completed, then the run freezes
            break
    return stopped, int(np.argmin(losses[:stopped]))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), every=st.sampled_from([2, 3]))
def test_block_early_stop_matches_epoch_loop(seed, every):
    # loss = the batch's value (data shuffle off, batch 1), params move by +1 per applied update: params count the
    # applied updates. Quarter-integer losses make block sums exact and ties frequent. One vmapped fit over cases
    # with traced patience / min_delta.
    rng = np.random.default_rng(seed)
    steps, cases = 4 * every, 12
    losses = rng.integers(0, 12, size=(cases, steps)).astype(np.float32) / 4
    patience = rng.integers(1, 4, size=cases).astype(np.int32)
    min_delta = rng.choice(np.float32([0.0, 0.25, 0.6]), size=cases)

    def run(seq, pat, delta):
        return fit(lambda p, b: b[0] + 0.0 * p, jnp.zeros(()), constant_step(1.0), steps=steps, data=seq,
                   batch_size=1, shuffle=False, early_stop=EarlyStop(pat, delta, every=every))

    result = jax.vmap(run)(jnp.asarray(losses), jnp.asarray(patience), jnp.asarray(min_delta))
    for i in range(cases):
        stopped, best_step = _block_reference(losses[i], every, int(patience[i]), float(min_delta[i]))
        assert int(result.stopped_at[i]) == stopped == float(result.params[i])
        assert int(result.best_step[i]) == best_step  # best_* still track the per-step best
        np.testing.assert_array_equal(result.trace["loss"][i], losses[i])


def test_block_early_stop_freezes_at_block_end():
    # Block means of the overshoot losses (every 2): 7.54, 0.74, 1.04 -> no improvement in block 2, patience 1:
    # the block's two updates are applied and the run freezes at step 6 (per-step test: frozen at step 5).
    result = _overshoot(EarlyStop(patience=1, every=2))
    assert int(result.stopped_at) == 6 and float(result.params) == 6.0 and int(result.best_step) == 3
    np.testing.assert_allclose(result.state.stop_block.best_mean, (1.44 + 0.04) / 2, rtol=1e-6)
    assert int(result.state.wait) == 1


def test_early_stop_every_one_is_the_per_step_program():
    plain, explicit = _overshoot(EarlyStop(2)), _overshoot(EarlyStop(2, every=1))
    chex.assert_trees_all_equal(plain.state, explicit.state)
    assert plain.state.stop_block is None  # no extra leaves: checkpoints keep their layout


def test_block_early_stop_resume_mid_block_is_bit_identical(tmp_path):
    # Blocks of 3 steps, checkpoints every 4: each resume starts mid-block with a partial sum in the state.
    stop = EarlyStop(2, 1e-2, every=3)

    def run(steps, **kwargs):
        return fit(mse, PARAMS, optax.adam(0.1), steps=steps, data=DATA, batch_size=2, key=jax.random.key(1),
                   early_stop=stop, **kwargs)

    whole = run(24)
    assert int(whole.stopped_at) < 24 and int(whole.stopped_at) % 3 == 0  # the test exercises a block stop
    run(8, checkpoint_every=4, checkpoint_dir=tmp_path)
    resumed = run(24, resume_from=tmp_path / "checkpoint_000004.eqx")
    chex.assert_trees_all_equal((resumed.state, resumed.trace), (whole.state, whole.trace))
    state = optlab.engine.loop.load_state(tmp_path / "checkpoint_000004.eqx", PARAMS, optax.adam(0.1),
                                          early_stop=stop)
    assert float(state.stop_block.loss_sum) > 0  # step 4 is mid-block: the partial sum is stored
    continued = run(20, start=state)
    chex.assert_trees_all_equal(continued.state, whole.state)
    chex.assert_trees_all_equal(continued.trace, jax.tree.map(lambda r: r[4:], whole.trace))


def test_nan_loss_step_is_skipped_and_state_kept():
    x = jnp.array([1.0, jnp.nan, 2.0, 3.0, 1.0])
    loss = lambda p, b: jnp.sum((p - b) ** 2)  # noqa: E731
    tx = optax.adam(0.1)
    result = fit(loss, jnp.zeros(()), tx, steps=5, data=x, batch_size=1, shuffle=False)
    params, _ = python_loop(loss, jnp.zeros(()), tx, 5, lambda t: x[t:t + 1], skip=lambda t: t == 1)
    assert bool(jnp.isfinite(result.params)) and int(result.skipped_steps) == 1
    np.testing.assert_array_equal(result.trace["skipped"], [False, True, False, False, False])
    np.testing.assert_allclose(result.params, params, rtol=1e-6)
    assert np.isfinite(float(result.best_loss))


def test_nonfinite_update_is_skipped():
    cube = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                        lambda g, s, p=None: (jax.tree.map(lambda v: -0.1 * v**3, g), s))
    x = jnp.array([1.0, 1e13, 1.0, 1.0])  # grad 2e13 is finite, its cube overflows float32
    loss = lambda p, b: jnp.sum((p - b) ** 2)  # noqa: E731
    result = fit(loss, jnp.zeros(()), cube, steps=4, data=x, batch_size=1, shuffle=False)
    params, _ = python_loop(loss, jnp.zeros(()), cube, 4, lambda t: x[t:t + 1], skip=lambda t: t == 1)
    np.testing.assert_array_equal(result.trace["skipped"], [False, True, False, False])
    np.testing.assert_allclose(result.params, params, rtol=1e-6)


@pytest.mark.parametrize(("dtype", "lr"), [("float16", 1e-4), ("bfloat16", 1e-3)])
def test_half_precision_update_below_resolution_freezes(dtype, lr):
    loss = lambda p, b: jnp.sum((p - 2.0) ** 2)  # noqa: E731  grad -2 at p = 1: update 2 * lr < ulp(1) / 2
    half = fit(loss, jnp.ones(3), optax.sgd(lr), steps=20, dtype=dtype)
    assert half.params.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(half.params, np.float32), 1.0)
    assert float(fit(loss, jnp.ones(3), optax.sgd(lr), steps=20).params[0]) > 1.0
    # A traced learning rate (float32) must not upcast the parameter add either.
    traced = jax.vmap(lambda r: fit(loss, jnp.ones(3), optax.sgd(r), steps=5, dtype=dtype).params)(
        jnp.array([lr, lr / 2]))
    np.testing.assert_array_equal(np.asarray(traced, np.float32), 1.0)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_loss_scale_power_of_two_is_exact_and_overflow_skips():
    plain = fit(mse, PARAMS, optax.sgd(0.1), steps=5, data=DATA, dtype="float16")
    scaled = fit(mse, PARAMS, optax.sgd(0.1), steps=5, data=DATA, dtype="float16", loss_scale=256.0)
    chex.assert_trees_all_equal(plain.params, scaled.params)
    np.testing.assert_array_equal(plain.trace["loss"], scaled.trace["loss"])  # trace holds the unscaled loss
    overflow = fit(mse, PARAMS, optax.sgd(0.1), steps=5, data=DATA, dtype="float16", loss_scale=2.0**16)
    assert int(overflow.skipped_steps) == 5
    chex.assert_trees_all_equal(overflow.params, jax.tree.map(lambda a: a.astype(jnp.float16), PARAMS))


def test_float64_needs_x64_and_runs_with_it():
    with pytest.raises(ValueError, match="float64.*enable_x64"):
        fit(mse, PARAMS, optax.sgd(0.1), steps=2, data=DATA, dtype="float64")
    with jax.enable_x64(True):
        result = fit(mse, PARAMS, optax.sgd(0.1), steps=2, data=DATA, dtype="float64")
        assert result.params["dense"]["w"].dtype == jnp.float64 and result.trace["loss"].dtype == jnp.float64


def test_vmap_over_learning_rate_equals_separate_calls():
    lrs = jnp.array([0.01, 0.2])
    keys = jax.random.split(jax.random.key(0), 2)

    def run(lr, key):
        return fit(mse, PARAMS, optax.adam(lr), steps=12, data=DATA, batch_size=2, key=key).trace["loss"]

    batched = jax.jit(jax.vmap(run))(lrs, keys)  # fit inside an outer jit and vmap, hyperparameters traced
    for i in range(2):
        np.testing.assert_allclose(batched[i], run(float(lrs[i]), keys[i]), rtol=1e-5)


def test_log_every_samples_window_starts_and_flags_skips():
    x = jnp.array([1.0, 2.0, jnp.nan, 3.0, 1.0, 2.0])
    loss = lambda p, b: jnp.sum((p - b) ** 2)  # noqa: E731
    every = fit(loss, jnp.zeros(()), optax.sgd(0.1), steps=6, data=x, batch_size=1, shuffle=False)
    sparse = fit(loss, jnp.zeros(()), optax.sgd(0.1), steps=6, data=x, batch_size=1, shuffle=False, log_every=3)
    np.testing.assert_allclose(sparse.trace["loss"], every.trace["loss"][::3], rtol=1e-6)
    np.testing.assert_array_equal(sparse.trace["skipped"], [True, False])  # step 2 lies in the first window
    np.testing.assert_array_equal(sparse.params, every.params)


def test_group_grad_norms_follow_grouping():
    params = {"l1": {"w": jnp.ones(2), "b": jnp.ones(())}, "l2": {"w": 2 * jnp.ones(3)}}
    loss = lambda p, b: sum(jnp.sum(v**2) for v in jax.tree.leaves(p)) / 2  # noqa: E731  grad = params
    norms = {g: fit(loss, params, optax.sgd(0.0), steps=1, groups=g).trace["group_grad_norms"][0]
             for g in ("per_layer", "per_leaf")}
    np.testing.assert_allclose(norms["per_layer"], [np.sqrt(3.0), np.sqrt(12.0)], rtol=1e-6)
    np.testing.assert_allclose(norms["per_leaf"], [1.0, np.sqrt(2.0), np.sqrt(12.0)], rtol=1e-6)
    labels = {"l1": {"w": "a", "b": "b"}, "l2": {"w": "a"}}
    by_label = fit(loss, params, optax.sgd(0.0), steps=1, groups=labels).trace
    # Groups are numbered in first-seen (flattening) order: l1.b ("b") comes before l1.w ("a").
    np.testing.assert_allclose(by_label["group_grad_norms"][0], [1.0, np.sqrt(14.0)], rtol=1e-6)
    np.testing.assert_allclose(by_label["grad_norm"][0], np.sqrt(15.0), rtol=1e-6)


class Affine(eqx.Module):
    weight: jax.Array
    bias: jax.Array
    activation: object  # a function: a non-array leaf that fit must pass through untouched
    n_calls: jax.Array  # an integer leaf: not trained


def test_metrics_and_equinox_module_with_non_array_leaves():
    model = Affine(jnp.zeros(2), jnp.zeros(()), jnp.tanh, jnp.zeros((), jnp.int32))
    loss = lambda m, b: jnp.mean((m.activation(b["x"] @ m.weight + m.bias) - jnp.tanh(b["y"])) ** 2)  # noqa: E731
    result = fit(loss, model, optax.sgd(0.5), steps=6, data=DATA, log_every=2,
                 metrics_fn=lambda m: {"bias": m.bias, "w0": m.weight[0]})
    assert isinstance(result.params, Affine) and result.params.activation is jnp.tanh
    assert result.params.n_calls.dtype == jnp.int32 and result.trace["metrics/bias"].shape == (3,)
    params, _ = python_loop(lambda w, b: loss(eqx.combine(w, eqx.filter(model, eqx.is_inexact_array, inverse=True)),
                                              b), eqx.filter(model, eqx.is_inexact_array), optax.sgd(0.5), 4,
                            lambda t: DATA)
    np.testing.assert_allclose(result.trace["metrics/w0"][2], params.weight[0], rtol=1e-5)


def test_newton_root_gets_value_and_its_step_scale_is_recorded():
    result = fit(mse, PARAMS, optlab.newton_root(0.5, scaling="global"), steps=5, data=DATA)
    # Global Newton-root step with f_min = 0: step_scale = loss / ||g||^2, recorded per row.
    assert result.trace["step_scale"].shape == (5, 1)
    expected = result.trace["loss"] / result.trace["grad_norm"] ** 2
    np.testing.assert_allclose(result.trace["step_scale"][:, 0], expected, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.0}, TypeError, "steps"),
        ({"steps": 10, "log_every": 3}, ValueError, "log_every=3 must divide steps=10"),
        ({"batch_size": 7, "key": jax.random.key(0)}, ValueError, "batch_size=7 exceeds"),
        ({"batch_size": 2}, ValueError, "key is required"),
        ({"dtype": "int8"}, ValueError, "dtype='int8'.*allowed"),
        ({"clip": -1.0}, ValueError, "clip"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"loss_scale": 0.0}, ValueError, "loss_scale"),
        ({"early_stop": 3}, TypeError, "early_stop"),
        ({"early_stop": EarlyStop(0)}, ValueError, "patience"),
        ({"early_stop": EarlyStop(2, every=0)}, ValueError, "early_stop.every"),
        ({"early_stop": EarlyStop(2, every=2.0)}, TypeError, "early_stop.every"),
        ({"groups": "per_row"}, ValueError, "groups='per_row'"),
        ({"checkpoint_every": 2}, ValueError, "checkpoint_dir"),
        ({"checkpoint_every": 3, "checkpoint_dir": "x", "log_every": 2}, ValueError, "multiple of log_every"),
        ({"reset_optimizer_state": True}, ValueError, "resume_from"),
        ({"shuffle": 1}, TypeError, "shuffle"),
        ({"schedule": 0.1}, TypeError, "schedule"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    kwargs = {"steps": 4, "data": DATA, **kwargs}
    with pytest.raises(error, match=match):
        fit(mse, PARAMS, optax.sgd(0.1), **kwargs)


def test_batch_size_without_data_raises():
    with pytest.raises(ValueError, match="batch_size needs data"):
        fit(mse, PARAMS, optax.sgd(0.1), steps=2, batch_size=2)
