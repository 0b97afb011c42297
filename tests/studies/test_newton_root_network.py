"""Newton-root study, experiment 6 (digits MLP): layer moves, starvation ratio, claim logic and config rules.

The experiment end to end (grid, sections, rows) runs inside ``test_quick_study_end_to_end`` of
``test_newton_root_study.py``, so its programs compile once per test session.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.diagnostics import VERDICTS
from optlab.optimizers import grouping
from optlab.studies import newton_root as nr
from optlab.studies import newton_root_network as nn
from optlab.studies.base import Claim

CONV, DIV = VERDICTS.index("converged"), VERDICTS.index("diverged")


def _layers(n_layers):
    return {f"layer{k}": {"w": jnp.full((3, 2), 1.0 + k), "b": jnp.full(3, -0.5)} for k in range(n_layers)}


START = _layers(3)
IDS, N_LAYERS, _ = grouping.group_ids(START, "per_layer")


@jax.jit
def _moves_of_scaled(factors):
    # layer k scaled by (1 + a_k) has moved a_k of its own size, whatever its size
    moved = {name: {leaf: (1.0 + factors[k]) * value for leaf, value in layer.items()}
             for k, (name, layer) in enumerate(START.items())}
    moves = nn.layer_moves(moved, START, IDS, N_LAYERS)
    return moves, nn.starvation_ratio(moves)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 4.0)), min_size=3, max_size=3))  # float32: no subnormals
def test_layer_moves_are_relative_per_layer_and_the_ratio_is_min_over_max(factors):
    moves, ratio = _moves_of_scaled(jnp.asarray(factors, jnp.float32))
    np.testing.assert_allclose(moves, factors, rtol=1e-5, atol=1e-6)
    expected = min(factors) / max(factors) if max(factors) > 0 else 1.0
    assert 0.0 <= float(ratio) <= 1.0 and float(ratio) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_a_layer_that_never_moves_is_starved_and_no_move_is_even():
    assert float(_moves_of_scaled(jnp.array([0.0, 0.0, 1.0]))[1]) == 0.0
    assert float(_moves_of_scaled(jnp.zeros(3))[1]) == 1.0


def _stats(zz, final=0.1, starvation=0.5, verdict=CONV, seeds=4, spread=0.01):
    noise = spread * np.arange(seeds)  # differs by seed, so paired differences have a standard error
    return {"up_over_drop": zz + noise, "zigzag": np.full(seeds, min(zz, 0.5)), "final_loss": np.full(seeds, final),
            "initial_loss": np.full(seeds, 2.3), "verdict": np.full(seeds, verdict),
            "starvation": starvation + noise, "least_moved": np.zeros(seeds, int)}


def _at_ref(zz_global, zz_layer, *, layer_final=0.1, starvation_layer=0.9):
    return {"global": _stats(zz_global, starvation=0.1, verdict=DIV), "adamw": _stats(0.0),
            "per_layer_equal": _stats(zz_layer, final=layer_final, starvation=starvation_layer),
            "newton_root_adam": _stats(zz_layer)}


def test_claims_confirm_and_refute_on_synthetic_runs():
    zigzags, fixed = _at_ref(0.8, 0.05), _at_ref(0.8, 0.8, starvation_layer=0.1)
    for claim, expected in ((nn.claim_zigzag(zigzags), "confirmed"), (nn.claim_zigzag(_at_ref(0.0, 0.0)), "refuted"),
                            (nn.claim_fix("2. per-layer", nn.PER_LAYER, zigzags), "confirmed"),
                            (nn.claim_fix("2. per-layer", nn.PER_LAYER, fixed), "refuted"),
                            (nn.claim_starvation(zigzags), "confirmed"), (nn.claim_starvation(fixed), "inconclusive")):
        assert claim.experiment == "6" and claim.verdict == expected, claim
        assert claim.measured and "nan" not in claim.measured.replace("nan 0", "")
    better = nn.claim_paired("up_over_drop", "global", "adamw", zigzags, "c", "n")
    worse = nn.claim_paired("up_over_drop", "adamw", "global", zigzags, "c", "n")
    assert (better.verdict, worse.verdict) == ("confirmed", "refuted")
    assert "paired diff" in better.measured and "standard errors" in better.detail
    missing = nn.claim_paired("up_over_drop", "global", "momo_adam", zigzags, "c", "n")
    assert missing.verdict == "inconclusive" and "not run" in missing.measured


def test_a_per_layer_step_that_does_not_train_is_no_fix():
    claim = nn.claim_fix("2. per-layer", nn.PER_LAYER, _at_ref(0.8, 0.0, layer_final=5.0))
    assert claim.verdict == "refuted" and "does not train" in claim.measured


@pytest.mark.parametrize("zigzag, fix, expected", [
    ("confirmed", "confirmed", "confirmed"), ("confirmed", "partly", "partly"), ("confirmed", "refuted", "refuted"),
    ("refuted", "confirmed", "refuted"), ("inconclusive", "confirmed", "inconclusive"),
])
def test_overall_verdict_needs_both_parts(zigzag, fix, expected):
    part = lambda verdict: Claim("6", "c", "n", "m", verdict)  # noqa: E731
    claim = nn.claim_verdict(part(zigzag), part(fix))
    assert claim.verdict == expected and zigzag in claim.measured and fix in claim.measured


@pytest.mark.parametrize("changes, match", [
    ({"net_optimizers": ("per_layer_equal",)}, "net_optimizers"), ({"net_learning_rates": (0.3,)}, "reference_lr"),
    ({"net_sizes": (64, 10)}, "net_sizes"), ({"net_sizes": (32, 16, 10)}, "net_sizes"),
    ({"net_train": 5000}, "net_train"), ({"net_optimizers": ("global", "sgd")}, "net_optimizers"),
])
def test_bad_experiment_6_config_raises_before_any_work(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(nr.NewtonRootConfig.quick(), **changes).validate()


def test_net_train_cuts_the_training_split_only():
    config = dataclasses.replace(nr.NewtonRootConfig.quick(), net_train=100)
    cut, full = nn.splits(config), nn.splits(config, cut=False)
    assert cut.train[0].shape == (100, 64) and full.train[0].shape[0] > 100
    np.testing.assert_array_equal(cut.test[1], full.test[1])
    np.testing.assert_array_equal(cut.train[0], full.train[0][:100])
