"""Experiment 6 of lab note 001: the Newton-root step on a real network (scikit-learn's digits, a ReLU MLP).

The note's hypothesis came from a real model: one shared ``step_scale = L/||g||²`` is dominated by the layer with
the largest gradient, starves the others and makes the loss zig-zag; per-layer scaling should remove it. Here the
digits MLP (:mod:`optlab.problems.digits`, e.g. 64→256→256→10) is trained full batch on the train split with the
shared step, the per-layer steps, the Adam-magnitude hybrid and AdamW: one ``run_grid`` of optimizer (static) ×
learning-rate multiplier (dynamic) × seeds. The seed draws the initialisation (the split is fixed), and every
optimizer starts from the same initialisation at the same seed, so optimizers compare seed by seed (paired).

Measured per run: the zig-zag of the training loss (:func:`optlab.studies.summary.summarize_grid`), test accuracy
and cross-entropy of the last iterate, and two imbalance ratios across the layers:

- ``starvation``: min over layers / max over layers of the relative distance each layer moved from its
  initialisation over the run, ``||θ_k(T) - θ_k(0)|| / ||θ_k(0)||`` (1: every layer moved alike; near 0: one layer
  barely moved, i.e. was starved of updates);
- ``grad_ratio``: :func:`optlab.diagnostics.starvation`'s ``min_max_ratio`` of per-layer gradient norms, mean
  over steps (the library's gradient-side definition).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optlab import diagnostics as dg
from optlab.engine.loop import fit
from optlab.optimizers import grouping
from optlab.problems import digits
from optlab.studies import newton_root_claims as nc
from optlab.studies import newton_root_figures as nf
from optlab.studies import summary as sm
from optlab.studies.base import Claim, Section

EXPERIMENT = "6"
# The note's fix directions that experiment 6 runs: 2 per layer, 4 hybrid (Adam magnitude, root-step length).
PER_LAYER = ("per_layer_full", "per_layer_equal")
HYBRID = ("newton_root_adam",)
SPLIT_SEED, SPLIT_CALIB, SPLIT_TEST = 0, 256, 360  # the split of the correction study's network (digits.load's)
TEXT = ("Full batch on the train split; the seed draws the initialisation (the same one for every optimizer), the "
        "split is fixed. Zig-zag is the median over seeds of rise/drop of the training loss (sum of increases over "
        "sum of decreases), as in experiment 5, whose thresholds the claims share. Starvation ratio: min / max over "
        "the layers of the relative distance each layer moved from its initialisation over the run "
        "(||θ_k(T) - θ_k(0)|| / ||θ_k(0)||; 1 = even, near 0 = a layer barely moved); gradient ratio: min / max of "
        "the per-layer gradient norms (`diagnostics.starvation`), mean over steps; table cells of both are medians "
        "over seeds. Test accuracy and loss are of the last iterate (nothing is selected on the test split).")


def check_config(config) -> None:
    """Cross-field rules of experiment 6's fields of a :class:`~optlab.studies.newton_root.NewtonRootConfig`."""
    if "global" not in config.net_optimizers:
        raise ValueError(f"net_optimizers must include 'global' (the baseline), got {config.net_optimizers}")
    if config.reference_lr not in config.net_learning_rates:
        raise ValueError(f"reference_lr={config.reference_lr} must be one of net_learning_rates="
                         f"{config.net_learning_rates}")
    sizes = config.net_sizes
    if len(sizes) < 3 or sizes[0] != digits.N_FEATURES or sizes[-1] != digits.N_CLASSES:
        raise ValueError(f"net_sizes must run from {digits.N_FEATURES} to {digits.N_CLASSES} with at least one hidden "
                         f"layer (two layers to compare), e.g. {digits.SIZES}; got {sizes}")
    available = digits.N_IMAGES - SPLIT_CALIB - SPLIT_TEST
    if config.net_train > available:
        raise ValueError(f"net_train={config.net_train} exceeds the {available} training rows of the split "
                         "(0 takes them all)")


def splits(config, cut: bool = True) -> digits.Splits:
    """The fixed digits split, its train part cut to ``net_train`` rows (0 or ``cut=False``: all of them)."""
    data = digits.load(SPLIT_SEED, calib=SPLIT_CALIB, test=SPLIT_TEST)
    if cut and config.net_train:
        x, y = data.train
        data = data._replace(train=(x[: config.net_train], y[: config.net_train]))
    return data


def layer_moves(params, start, ids, n_layers: int) -> jax.Array:
    """Relative distance each layer moved: ``||θ_k - θ_k(0)|| / ||θ_k(0)||`` per layer, shape ``(n_layers,)``.

    Args:
        params: current parameters (a pytree of arrays or an equinox Module).
        start: the initial parameters, same structure.
        ids, n_layers: the per-layer split from :func:`optlab.optimizers.grouping.group_ids`.

    Example:
        >>> p0 = {"a": {"w": jnp.ones(2)}, "b": {"w": jnp.ones(2)}}
        >>> p = {"a": {"w": jnp.full(2, 2.0)}, "b": {"w": jnp.ones(2)}}
        >>> layer_moves(p, p0, (0, 1), 2).tolist()
        [1.0, 0.0]
    """
    params, start = eqx.filter(params, eqx.is_inexact_array), eqx.filter(start, eqx.is_inexact_array)
    moved = grouping.group_sq_norms(jax.tree.map(jnp.subtract, params, start), ids, n_layers)
    size = grouping.group_sq_norms(start, ids, n_layers)
    # a layer initialised at 0 has no scale to be relative to: its move counts as absolute
    return jnp.sqrt(moved / jnp.where(size > 0, size, 1.0))


def starvation_ratio(moves) -> jax.Array:
    """min / max over the last axis (layers) of ``moves``; 1 where no layer moved (nothing starved)."""
    moves = jnp.asarray(moves)
    largest = moves.max(axis=-1)
    return jnp.where(largest > 0, moves.min(axis=-1) / jnp.where(largest > 0, largest, 1.0), 1.0)


def network_grid(config):
    """Experiment 6 as ``(cell, axes, seeds, static)`` for :func:`optlab.engine.grid.run_grid`."""
    # newton_root imports this module for its table of experiments, so its optimizer table is imported here
    from optlab.studies.newton_root import make_optimizer

    problem = digits.problem(splits(config), sizes=config.net_sizes)
    # shapes only: drawing a real network here would compile and run eager ops before the grid
    ids, n_layers, _ = grouping.group_ids(jax.eval_shape(problem.init, jax.random.key(0)), "per_layer")

    def cell(hp, key):
        init_key, opt_key = jax.random.split(key)
        start = problem.init(init_key)
        optimizer = make_optimizer(hp["optimizer"], hp["learning_rate"], adam_base_lr=config.adam_base_lr,
                                   key=opt_key)
        result = fit(problem.loss, start, optimizer, steps=config.net_steps, data=problem.data,
                     metrics_fn=lambda p: {"moves": layer_moves(p, start, ids, n_layers)})
        final, loss = problem.metrics(result.params), result.trace["loss"]
        moves = layer_moves(result.params, start, ids, n_layers)
        return {"final_loss": problem.value(result.params), "floor": jnp.zeros_like(loss[0]), "loss": loss,
                "initial_loss": loss[0], "first_step": loss[1] / loss[0], "test_accuracy": final["test_accuracy"],
                "test_loss": final["test_loss"], "starvation": starvation_ratio(moves),
                "least_moved": jnp.argmin(moves),
                "grad_ratio": jnp.nanmean(dg.starvation(result.trace["group_grad_norms"]).min_max_ratio),
                "moves": result.trace["metrics/moves"]}

    axes = {"optimizer": list(config.net_optimizers), "learning_rate": list(config.net_learning_rates)}
    return cell, axes, config.seeds, ["optimizer"]


# ------------------------------------------------------------------------------------------------ claims


def _median(stats: dict, key: str) -> float:
    return nc._median(stats, key)  # NaN left out, inf kept: a run that only rises counts as a large zig-zag


def _best_trained(members, at_ref: dict) -> str | None:
    """The member with the smallest median zig-zag among those that train (median final < median initial loss)."""
    trains = [m for m in members if m in at_ref and _median(at_ref[m], "final_loss") < _median(at_ref[m],
                                                                                              "initial_loss")]
    return min(trains, key=lambda m: _median(at_ref[m], "up_over_drop")) if trains else None


def claim_zigzag(at_ref: dict) -> Claim:
    """The shared step zig-zags on the digits MLP: median rise/drop ≥ ``SMOOTH`` (partly: above ``NO_ZIGZAG``)."""
    size = _median(at_ref["global"], "up_over_drop")
    rule = sm.Threshold(nc.SMOOTH, partly=nc.NO_ZIGZAG, op=">=", partly_op=">", name="global's median rise/drop")
    return Claim(EXPERIMENT, "the shared step zig-zags on a real network",
                 "the PLT training shows zig-zag with this optimizer (a real model)",
                 f"global: rise/drop {size:.3g} (median), rising steps {sm.mean_std(at_ref['global']['zigzag'])}; "
                 f"{sm.counts_text(at_ref['global']['verdict'])}", rule(size), rule.describe())


def claim_paired(metric: str, a: str, b: str, at_ref: dict, claim: str, claimed: str) -> Claim:
    """``metric(a) - metric(b) > 0`` seed by seed (:class:`~optlab.studies.summary.PairedDifference`)."""
    if a not in at_ref or b not in at_ref:
        return Claim(EXPERIMENT, claim, claimed, f"not run ({a if a not in at_ref else b})", "inconclusive")
    rule = sm.PairedDifference()
    first, second = at_ref[a][metric], at_ref[b][metric]
    return Claim(EXPERIMENT, claim, claimed, f"{metric} {a} − {b}: {rule.text(first, second)}", rule(first, second),
                 rule.describe(f"{metric}({a}) − {metric}({b})") + "; pairs with a non-finite side are dropped")


def claim_fix(name: str, members, at_ref: dict) -> Claim:
    """Fix direction ``name`` removes the zig-zag: experiment 5's rule (:func:`newton_root_claims.claim_fix`)."""
    return dataclasses.replace(nc.claim_fix(name, members, at_ref), experiment=EXPERIMENT)


def claim_starvation(at_ref: dict) -> Claim:
    """Per-layer scaling evens the layers' updates: its starvation ratio beats the shared step's, seed by seed."""
    best = _best_trained(PER_LAYER, at_ref) or next((m for m in PER_LAYER if m in at_ref), None)
    claim, claimed = ("the shared step starves a layer; per-layer steps even it out",
                      "later layers get starved updates (the single step_scale cannot fit all layers)")
    if best is None:
        return Claim(EXPERIMENT, claim, claimed, "no per-layer variant run", "inconclusive")
    out = claim_paired("starvation", best, "global", at_ref, claim, claimed)
    least = np.bincount(np.asarray(at_ref["global"]["least_moved"], int)).tolist()
    measured = (f"starvation ratio (median) global {_median(at_ref['global'], 'starvation'):.3g}, {best} "
                f"{_median(at_ref[best], 'starvation'):.3g}; {out.measured}; least-moved layer under the shared step "
                f"(seeds per layer 0, 1, ...): {least}")
    return dataclasses.replace(out, measured=measured)


def claim_verdict(zigzag: Claim, fix: Claim) -> Claim:
    """The issue's question in one line: confirmed when both parts are, refuted when either is, else partly."""
    parts = (zigzag.verdict, fix.verdict)
    holds = None if "inconclusive" in parts else parts == ("confirmed", "confirmed")
    return Claim(EXPERIMENT, "the shared step zig-zags on a real network and per-layer scaling removes it",
                 "the shared step_scale causes the zig-zag; fix 2: per-layer step_scale",
                 f"zig-zag: {zigzag.verdict}; per-layer fix: {fix.verdict}",
                 sm.check(holds, partly="refuted" not in parts),
                 "confirmed if both claims above are confirmed, refuted if either is refuted, inconclusive if either "
                 "is inconclusive, partly otherwise")


# ------------------------------------------------------------------------------------------------ section


def _percent(values) -> str:
    return sm.mean_std(np.asarray(values, np.float64) * 100, "{:.1f}")


def network_table(grid, title: str):
    """Experiment 6 per optimizer × learning rate: accuracy, losses, zig-zag, starvation, verdicts."""
    columns = [("test accuracy %", "test_accuracy", _percent), ("test loss", "test_loss", "mean_std"),
               ("train loss (median)", "final_loss", nc._median_text),
               ("loss after step 1 ÷ initial (median)", "first_step", "median"),
               ("rising steps", "zigzag", "mean_std"),
               ("rise/drop (median)", "up_over_drop", nc._median_text),
               ("starvation ratio (median)", "starvation", "median"),
               ("gradient ratio (median)", "grad_ratio", "median"), ("verdicts", "verdict", "verdicts")]
    return sm.grid_table(grid, ["optimizer", "learning_rate"], columns, title=title)


def network_sections(config, grid) -> list[Section]:
    """Experiment 6's section (claims, table, figures) from its finished, summarised grid."""
    ref = config.reference_lr
    at_ref = {o: grid.select(optimizer=o, learning_rate=ref).outputs for o in config.net_optimizers}
    zigzag = claim_zigzag(at_ref)
    layer_fix = claim_fix("2. per-layer", PER_LAYER, at_ref)
    best = _best_trained(PER_LAYER, at_ref) or next((m for m in PER_LAYER if m in at_ref), "per_layer_equal")
    claims = [zigzag,
              claim_paired("up_over_drop", "global", "adamw", at_ref, "the shared step zig-zags more than AdamW",
                           "converges smoothly with AdamW (per-parameter adaptive rates)"),
              layer_fix,
              claim_paired("up_over_drop", "global", best, at_ref, f"{best} zig-zags less than the shared step",
                           "fix 2: compute step_scale per layer"),
              claim_fix("4. hybrid (Adam magnitude)", HYBRID, at_ref), claim_starvation(at_ref),
              claim_verdict(zigzag, layer_fix)]
    sizes = "→".join(map(str, config.net_sizes))
    n_train = len(splits(config).train[1])
    table = network_table(grid, f"Experiment 6: digits MLP {sizes}, {n_train} training images, {config.net_steps} "
                          f"full-batch steps, over {config.seeds} seeds (learning_rate multiplies the base rate: 1 "
                          f"for Newton-root, {config.adam_base_lr:g} for adamw)")
    shown = [o for o in ("global", best) if o in at_ref]
    figures = {"exp6_loss_by_optimizer.png": nf.loss_bands_figure(
                   {o: out["loss"] for o, out in at_ref.items()}, f"Experiment 6: digits MLP {sizes}, lr × {ref:g}"),
               "exp6_layer_moves.png": nf.layer_moves_figure(
                   {o: at_ref[o]["moves"][0] for o in shown}, "Experiment 6, seed 0: relative distance moved per "
                   "layer"),
               "exp6_test_accuracy_heatmap.png": grid.heatmap(
                   "optimizer", "learning_rate", "test_accuracy", agg="nanmedian", title="median test accuracy",
                   xlabel="learning rate × base", ylabel="optimizer", fmt="{:.3f}")}
    text = (f"Digits (scikit-learn, 8×8 images, 10 classes), ReLU MLP {sizes}. " + TEXT + "\n\n"
            + nc.damping_text(grid, ref))
    return [Section(f"Experiment 6: a real network (digits MLP {sizes})", text, tables=[table], claims=claims,
                    figures=figures)]
