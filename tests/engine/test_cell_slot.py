import pytest

import optlab
from optlab.engine.cell_slot import CellSlot


def test_a_second_take_in_one_cell_is_refused_and_names_the_feature():
    slot = CellSlot("t", "run_grid(feature=...)", "do this instead")
    with slot.holding("v") as holder:
        assert slot.take() == "v"
        with pytest.raises(ValueError, match=r"run_grid\(feature=\.\.\.\).*twice; do this instead"):
            slot.take()
    assert holder.taken and slot.take() is None  # the scope is closed


def test_nested_scopes_restore_the_outer_value():
    slot = CellSlot("t", "f")
    with slot.holding(1) as outer:
        with slot.holding(2) as inner:
            assert slot.take() == 2
        assert slot.take() == 1
    assert outer.taken and inner.taken


def test_a_compacted_cell_that_calls_fit_twice_is_refused():
    import jax.numpy as jnp
    import optax

    def fn(hp, key):
        for _ in range(2):
            optlab.fit(lambda p, _: jnp.sum(p**2), jnp.ones(2), optax.sgd(hp["lr"]), steps=6)
        return {"x": hp["lr"]}

    with pytest.raises(ValueError, match=r"compact_every=.*twice"):
        optlab.run_grid(fn, {"lr": [0.1, 0.2]}, progress=False, compact_every=3)
