"""run_grid(compact_every=K): stopped cells are dropped between segments and the results equal the uncompacted grid.

Kept small for the suite (8 cells, 24 steps): compiles dominate (one per program width and segment length), so
each case is one plain and one compacted grid with few segments (re-packed 8 -> 4 and 8 -> 6), the two parametrized
cases share out the features that change the frozen tail, and one two-cell grid covers growing segments and the
last segment computing the outputs (no re-pack).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optlab
from optlab.engine import EarlyStop, cosine
from optlab.engine.compaction import bucket_width

STEPS = 24
X = jax.random.uniform(jax.random.key(0), (48, 1), minval=-1.0, maxval=1.0)
DATA = {"x": X, "y": 2.0 * X + 1.0}
AXES = {"lr": [0.3, 40.0], "patience": [2, 1000]}  # lr 40 overflows to inf; patience 1000 never stops


def _loss(p, batch):
    return jnp.mean((batch["x"] * p["w"] + p["b"] - batch["y"]) ** 2)


def _cell(batch_size, every=1, log_every=1, schedule=None, shuffle=False, whole_trace=True):
    def fn(hp, key):
        params = {"w": jax.random.normal(key, (1,)), "b": jnp.zeros(1)}
        res = optlab.fit(_loss, params, optax.sgd(hp["lr"]), steps=STEPS, key=key, data=DATA, batch_size=batch_size,
                         shuffle=shuffle, early_stop=EarlyStop(hp["patience"], 0.05, every=every),
                         log_every=log_every, schedule=schedule)
        # whole_trace=False keeps grad_norm without group_grad_norms: XLA then fuses the norm's reductions
        # differently, and the segments must carry just the columns fn uses to round the same way
        out = {"trace": res.trace} if whole_trace else {n: res.trace[n] for n in ("loss", "lr", "grad_norm")}
        return {**out, "best_loss": res.best_loss, "best_step": res.best_step, "stopped_at": res.stopped_at,
                "skipped": res.skipped_steps, "params": res.params, "best_params": res.best_params,
                "wait": res.state.wait, "step": res.state.step,
                "block_sum": res.state.stop_block.loss_sum if every > 1 else res.state.wait}

    return fn


def _assert_same(plain, compact):
    assert plain.cells == compact.cells and set(plain.outputs) == set(compact.outputs)
    for name in plain.outputs:
        np.testing.assert_array_equal(compact.outputs[name], plain.outputs[name], err_msg=name)


@pytest.mark.parametrize(
    "batch_size, every, log_every, schedule, compact_every, whole_trace, widths",
    [
        # fixed-order mini-batches: period 3; the schedule column per row; 4 cells stop by step 4
        (16, 1, 1, cosine(STEPS), 12, True, [4, 8]),
        # full batch (period 1), block early stopping (its running block sum keeps growing after the stop),
        # log_every > 1, a subset of the trace columns; cells stop at steps 12, 12, 16, 20: after 12 steps the 6
        # live cells are re-packed to width 6 (not a power of two); the cells stopping at 16 and 20 stay, frozen
        (None, 4, 2, None, 12, False, [6, 8]),
    ],
)
def test_compacted_grid_is_bit_identical_and_drops_stopped_cells(batch_size, every, log_every, schedule,
                                                                 compact_every, whole_trace, widths):
    fn = _cell(batch_size, every, log_every, schedule, whole_trace=whole_trace)
    plain = optlab.run_grid(fn, AXES, seeds=2, progress=False)
    compact = optlab.run_grid(fn, AXES, seeds=2, progress=False, compact_every=compact_every)
    _assert_same(plain, compact)
    stats = compact.info["compaction"][0]
    stopped = int(np.sum(plain.outputs["stopped_at"] < STEPS))
    assert stopped > 0 and 0 < stats["dropped"] <= stopped
    loss = plain.outputs["trace/loss" if whole_trace else "loss"]
    assert not np.all(np.isfinite(loss))  # the diverging lr is in the grid
    assert stats["lane_segments"] < stats["segments"] * 8  # dropped cells were not run to the end
    assert stats["widths"] == widths and stats["repacks"] == 1


def test_segments_grow_while_nothing_stops_and_the_last_segment_computes_the_outputs():
    # two cells, one stops (at step 4) but a width-2 program cannot shrink, so it stays: no re-pack, and the
    # last segment computes fn's outputs from the rows of the earlier ones (no finish program)
    fn = _cell(None, log_every=2, whole_trace=False)
    axes = {"lr": [0.3], "patience": [2, 1000]}
    plain = optlab.run_grid(fn, axes, seeds=1, progress=False)
    compact = optlab.run_grid(fn, axes, seeds=1, progress=False, compact_every=4)
    _assert_same(plain, compact)
    stats = compact.info["compaction"][0]
    assert sorted(plain.outputs["stopped_at"].tolist()) == [4, STEPS]
    # 4 steps (one stopped) so 4 again, none stopped so 8, then 16 cut to the last 8: 4 segments, not 6
    assert (stats["segments"], stats["repacks"], stats["dropped"], stats["widths"]) == (4, 0, 0, [2])
    assert stats["seconds"]["finish"] == 0.0


def test_shuffled_cells_stay_and_results_match():
    fn = _cell(16, shuffle=True)
    plain = optlab.run_grid(fn, AXES, seeds=1, progress=False)
    compact = optlab.run_grid(fn, AXES, seeds=1, progress=False, compact_every=4)  # segments end mid-epoch
    _assert_same(plain, compact)
    assert compact.info["compaction"][0]["dropped"] == 0  # every epoch draws other batches: no periodic tail


def test_compact_every_is_checked():
    fn = _cell(None, log_every=3)
    with pytest.raises(ValueError, match="compact_every"):
        optlab.run_grid(fn, AXES, seeds=1, progress=False, compact_every=4)
    with pytest.raises(ValueError, match="compact_every"):
        optlab.run_grid(fn, AXES, seeds=1, progress=False, compact_every=0)
    with pytest.raises(ValueError, match="compact_every and checkpoint_every"):
        optlab.run_grid(fn, AXES, progress=False, compact_every=3, checkpoint_every=3, checkpoint_dir="unused")
    with pytest.raises(ValueError, match="never called optlab.fit"):
        optlab.run_grid(lambda hp, key: {"x": hp["lr"]}, {"lr": [1.0]}, progress=False, compact_every=3)


def test_probe_cache_does_not_keep_fn_alive():
    import gc
    import weakref

    from optlab.engine import compaction

    fn = _cell(None, log_every=3)
    compaction.probe_layout(fn, ("key",), lambda layout: layout.update(total_rows=1))
    assert compaction.probe_layout(fn, ("key",), lambda layout: pytest.fail("probed twice")) == {"total_rows": 1}
    ref = weakref.ref(fn)
    del fn
    gc.collect()
    assert ref() is None


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 2048), st.sampled_from([1, 2, 4, 3]))
def test_bucket_width_is_a_bounded_bucket_multiple_of_devices(live, chunk, n_devices):
    chunk = max(chunk, live)
    width = bucket_width(live, chunk, n_devices)
    assert width >= live and width % n_devices == 0
    buckets = sorted({b for k in range(1, 13) for b in (1 << k, 3 << (k - 1))})  # 2, 3, 4, 6, 8, 12, ...
    base = min(next(b for b in buckets if b >= live), chunk)
    assert width == -(-base // n_devices) * n_devices
    if 2 < base < chunk:  # padding is under a third of the width (half with powers of two alone)
        assert base - live < base / 3
