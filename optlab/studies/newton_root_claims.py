"""Claims of lab note 001 as pure functions of measured traces (NumPy arrays in, a :class:`Claim` out).

Each ``claim_*`` quotes the note in ``claimed``, computes ``measured`` from the traces it is given and takes its
verdict from a named rule of :mod:`optlab.studies.summary` (a :class:`~optlab.studies.summary.Threshold` or
:func:`~optlab.studies.summary.check`), so the logic can be checked on synthetic traces. Tolerances are the named
constants below; each rule's sentence in the claim detail is generated from them.
"""

from __future__ import annotations

import numpy as np

from optlab.diagnostics import VERDICTS
from optlab.studies import summary as sm
from optlab.studies.base import Claim

NOTE_START_RATIO = 9 / 1600  # the note's claimed |g_x|/|g_y| at the start of experiment 3 (a hypothesis to test)
EPS32 = float(np.finfo(np.float32).eps)
# experiment 1: float64 may leave the closed form by this many float64 ulps of the start; float32 agrees with
# float64 within this many float32 epsilons (relative)
HALVING_ULPS, PRECISION_EPS = 64, 4
RISE_TOL = 1e-6  # a loss step counts as a rise above this relative increase (float32 rounding stays below)
HALF_TOL, STRAIGHT_TOL = 0.01, 1e-5  # experiment 2: |rate - 1/2|; distance from the line / start distance
DOMINATES = 10.0  # "c (y - b)² >> (x - a)²" read as at least 10×
RATE_TOL, Y_RATE_TOL = 0.25, 0.1  # experiment 3: relative tolerance on the x shrink 1/(2c); |y rate - 1/2|
START_RATIO_TOL = 0.1  # experiment 3: relative distance from the note's start ratio
BACK_BELOW = 0.1  # experiment 3: share of steps after the ratio first reaches 1 that may fall below 1 again
KINK = 2.0  # experiment 3: a kink is a per-step log-slope changing by at least this factor
FIX_SPEEDUP = 2.0  # experiment 3: a per-leaf step removes the starvation when it reaches the floor this much sooner
REMOVES, REDUCES = 0.5, 0.9  # a fix removes the zig-zag below half of the shared step's, reduces it below 90 %
SMOOTH, MILD = 0.1, 0.5  # rise/drop (sum of loss rises / sum of drops) at or below: smooth; still a mild zig-zag
NO_ZIGZAG = 0.02  # a shared-step rise/drop below this leaves no zig-zag for a fix to remove

TEXT = {
    "1": "Newton-root step with learning rate 1 on f(x) = (x - 3)², float32 and float64 (`jax.enable_x64`).",
    "2": "Shared step on the symmetric quadratic from (10, 10); the path and both coordinate errors are measured.",
    "3": "Shared step on (x - 1)² + c (y - 2)². The key run is measured step by step; the grid runs c × scaling "
         "× start point, where `per_leaf_full` gives each coordinate the whole loss gap (the note's per-parameter "
         "formula) and `per_leaf_equal` half of it each. Steps to floor: first step after which the loss stays "
         "below 1e-10 × its initial value. Rising steps and rise/drop ignore steps below that floor.",
    "4": "One linear layer: `per_layer` is one group here, so it is the shared step; `per_leaf` splits weight and "
         "bias.",
    "5": "Full batch. Zig-zag is measured two ways: the "
         "share of steps whose loss rises, and rise/drop (sum of increases over sum of decreases; near 0 for a "
         "descent with plateau noise, near 1 for an oscillation); the claims use the median rise/drop over seeds. "
         "Verdicts come from `optlab.diagnostics.divergence` (an oscillating run whose last stretch stays above "
         "its best loss counts as diverged). The note's fix directions map to: 1 per_leaf, 2 per_layer, "
         "3 newton_root_hutchinson, 4 newton_root_adam. `polyak_sgd` runs with scaling = 1/lr (its step is "
         "computed from the scaled gradient) and its default step cap of 1.",
}


def _rate(errors, mask=None) -> float:
    """Per-step contraction factor: exp of the least-squares slope of log|errors| over the masked steps."""
    errors = np.abs(np.asarray(errors, np.float64))
    steps = np.arange(errors.size)
    keep = (errors > 0) & np.isfinite(errors) & (np.ones(errors.size, bool) if mask is None else np.asarray(mask))
    if keep.sum() < 2:
        return float("nan")
    return float(np.exp(np.polyfit(steps[keep], np.log(errors[keep]), 1)[0]))


def _mean_std(values) -> str:
    # population std (ddof=0), as the tables always used, so the numbers stay comparable across runs
    return sm.mean_std(values, ddof=0)


def _median_text(values) -> str:
    # nanmedian, not summary.median_text: an inf rise/drop (a run that only rises) is a value, not missing
    return f"{_median({'v': values}, 'v'):.3g} (n={np.size(values)})"


def _median(stats: dict, key: str) -> float:
    """Median over seeds, NaN left out (inf kept: a blown-up seed counts as large)."""
    values = np.asarray(stats[key], np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def claim_halving(x64, x32, a: float, x0: float, step_scale64=None) -> Claim:
    """Experiment 1: the float64 trajectory equals ``a + (x0 - a)/2ⁿ`` to float64 rounding.

    Steps after the first zero step scale (the step's guard: it is 0 once ``||g||²`` is below float64 epsilon,
    as in ``optax.scale_by_polyak``) are left out of the comparison and reported.
    """
    x64, x32 = np.asarray(x64, np.float64), np.asarray(x32, np.float64)
    formula = a + (x0 - a) / 2.0 ** np.arange(x64.size)
    frozen = np.asarray(step_scale64).reshape(x64.size, -1)[:, 0] == 0 if step_scale64 is not None else None
    last = int(np.argmax(frozen)) if frozen is not None and frozen.any() else x64.size - 1
    dev64 = np.max(np.abs(x64 - formula)[: last + 1])
    dev32 = np.max(np.abs(x32 - formula)[: last + 1])
    rule = sm.Threshold(HALVING_ULPS * np.finfo(np.float64).eps * max(abs(x0), abs(a)), op="<=",
                        name="max float64 |x_n - formula|")
    stop = (f"; from step {last} the step is 0 (||g||² below float64 eps: the division guard), so |x - 3| "
            f"stays at {abs(x64[-1] - a):.2g}") if last < x64.size - 1 else ""
    return Claim("1", "trajectory x_n = 3 + (x0 - 3)/2ⁿ", "x_n = a + (x₀ - a)/2ⁿ, rate 1/2",
                 f"max |x_n - formula| = {dev64:.2g} (float64), {dev32:.2g} (float32) over steps 0-{last}; |x - 3|"
                 f" ×{_rate(x64[: last + 1] - a):.6f} per step{stop}", rule(dev64),
                 f"from x0 = {x0:g}; {rule.describe()} ({HALVING_ULPS} float64 ulps of the start)")


def claim_monotone(experiment: str, loss, floor: float) -> Claim:
    """The loss never rises (by more than ``RISE_TOL`` relative) while it is above ``floor``."""
    loss = np.asarray(loss, np.float64)
    before, after = loss[:-1], loss[1:]
    valid = np.isfinite(before) & np.isfinite(after) & (before > floor)
    rises = valid & (after > before * (1 + RISE_TOL))
    largest = f" (largest ×{np.max(after[rises] / before[rises]):.3g})" if rises.any() else ""
    claimed = {"1": "Monotonic convergence, no zig-zag", "2": "converges monotonically, identical to scalar case",
               "3": "No zig-zag (still quadratic); loss decreases monotonically"}[experiment]
    return Claim(experiment, "loss decreases monotonically (no zig-zag)", claimed,
                 f"{int(rises.sum())} of {int(valid.sum())} steps raise the loss{largest}", sm.check(not rises.any()),
                 f"a rise is a relative increase above {RISE_TOL:g}; steps with loss at or below {floor:.2g} ignored")


def claim_precision(x32, x64, a: float) -> Claim:
    """Experiment 1: float32 and float64 agree to float32 precision; report where the float32 error parts."""
    x32, x64 = np.asarray(x32, np.float64), np.asarray(x64, np.float64)
    e32, e64 = x32 - a, x64 - a
    worst = float(np.max(np.abs(x32 - x64) / np.maximum(np.abs(x64), np.finfo(np.float64).tiny)))
    parted = np.abs(e32 - e64) > 0.01 * np.abs(e64)
    part = int(np.argmax(parted)) if parted.any() else -1
    digits = -np.log10(worst) if worst > 0 else np.inf
    where = (f"the float32 error leaves float64's (> 1 % off) at step {part}, when |x - 3| = {abs(e64[part]):.2g}"
             f" = {abs(e64[part]) / (EPS32 * abs(x64[part])):.2g} float32 ulps of x") if part >= 0 else "never part"
    rule = sm.Threshold(PRECISION_EPS * EPS32, op="<=", name="max relative gap")
    return Claim("1", "float32 and float64 agree until float32 precision", "agree until ~7 decimal digits",
                 f"x agrees to {digits:.1f} digits at every step (max |x32 - x64| = {np.max(np.abs(x32 - x64)):.2g});"
                 f" {where}", rule(worst), f"{rule.describe()} ({PRECISION_EPS} float32 epsilons)")


def claim_rates_half(ex, ey, active) -> Claim:
    """Experiment 2: both coordinate errors contract by 1/2 per step."""
    rx, ry = _rate(ex, active), _rate(ey, active)
    rule = sm.Threshold(HALF_TOL, op="<=", name="max |rate - 1/2|")
    return Claim("2", "both coordinates contract by 1/2 per step", "both params converge at rate 1/2",
                 f"|x - 1| ×{rx:.4f}, |y - 2| ×{ry:.4f} per step", rule(max(abs(rx - 0.5), abs(ry - 0.5))),
                 f"log-linear fit over the steps above the float32 floor; {rule.describe()}")


def claim_straight_line(x, y, start, optimum, active) -> Claim:
    """Experiment 2: the path stays on the segment from ``start`` to ``optimum``."""
    points = np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], 1)[np.asarray(active)]
    start, optimum = np.asarray(start, np.float64), np.asarray(optimum, np.float64)
    length = np.linalg.norm(optimum - start)
    direction = (optimum - start) / length
    offsets = points - start
    distance = np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0])
    worst = float(distance.max()) if distance.size else float("nan")
    rule = sm.Threshold(STRAIGHT_TOL, op="<=", name="max distance / start distance")
    return Claim("2", "straight path from (10, 10) to (1, 2)", "straight-line trajectory from (10,10) to (1,2)",
                 f"max distance from the line {worst:.2g} ({worst / length:.2g} of the start distance {length:.3g})",
                 rule(worst / length), rule.describe())


def claim_starved_rates(ex, ey, x_term, y_term, c: float) -> Claim:
    """Experiment 3: while y dominates, y contracts ~1/2 and x only by 1 - 1/(2c) per step."""
    ex, ey = np.abs(np.asarray(ex, np.float64)), np.abs(np.asarray(ey, np.float64))
    x_term, y_term = np.asarray(x_term, np.float64), np.asarray(y_term, np.float64)
    dominated = ((y_term >= DOMINATES * x_term) & (x_term > 0))[:-1] & (ex[1:] > 0) & (ey[1:] > 0)
    claim, claimed = ("while y dominates, y contracts ~1/2 and x only by 1 - 1/(2c) per step",
                      "y converges quickly (rate ~1/2), x converges slowly (rate ~1/200)")
    if not dominated.any():
        return Claim("3", claim, claimed, "y never dominates the loss", "inconclusive")
    rx = float(np.exp(np.mean(np.log(ex[1:][dominated] / ex[:-1][dominated]))))
    ry = float(np.exp(np.mean(np.log(ey[1:][dominated] / ey[:-1][dominated]))))
    within = int(abs((1 - rx) - 1 / (2 * c)) <= RATE_TOL / (2 * c)) + int(abs(ry - 0.5) <= Y_RATE_TOL)
    rule = sm.Threshold(2, partly=1, name="rates within tolerance (of 2)")
    return Claim("3", claim, claimed,
                 f"over the {int(dominated.sum())} steps with c(y-2)² ≥ {DOMINATES:g}(x-1)²: |x - 1| ×{rx:.5f} "
                 f"(shrink {1 - rx:.3g} vs 1/(2c) = {1 / (2 * c):.3g}), |y - 2| ×{ry:.3f} per step", rule(within),
                 f"x within ±{RATE_TOL:.0%} of 1/(2c), y within ±{Y_RATE_TOL:g} of 1/2; {rule.describe()}; over the "
                 f"whole run |x - 1| shrinks ×{_rate(ex, ex > 1e-5 * ex[0]):.3f} per step")


def claim_sequential(ex, ey, c: float) -> Claim:
    """Experiment 3: x settles about c times later than y ("x converges 100x slower")."""
    def settle(e):
        e = np.abs(np.asarray(e, np.float64))
        stays = np.minimum.accumulate((e <= 1e-5 * e[0])[::-1])[::-1]
        return int(np.argmax(stays)) if stays.any() else -1

    sx, sy = settle(ex), settle(ey)
    claim = f"x settles ~c = {c:g} times later than y"
    if sx < 0 or sy <= 0:
        return Claim("3", claim, "x converges 100x slower than y",
                     f"settle steps x {sx if sx >= 0 else 'never'}, y {sy if sy >= 0 else 'never'}", "inconclusive")
    rule = sm.Threshold(c / 2, partly=2.0, name="settle-step ratio x/y")
    return Claim("3", claim, "x converges 100x slower than y",
                 f"errors stay below 1e-5 × start from step {sx} (x) and {sy} (y): ×{sx / sy:.2g}", rule(sx / sy),
                 rule.describe() + " (c/2 and 2)")


def claim_start_ratio(grad_x0: float, grad_y0: float, start, optimum, c: float) -> Claim:
    """Experiment 3: the measured |g_x|/|g_y| at the start against the note's 9/1600."""
    ratio = abs(float(grad_x0)) / abs(float(grad_y0))
    (x0, y0), (a, b) = start, optimum
    y_needed = b + abs(x0 - a) / (c * NOTE_START_RATIO)  # start y that would give the note's ratio at this x0
    half = abs(x0 - a) / abs(2 * c * (y0 - b))
    rule = sm.Threshold(START_RATIO_TOL, op="<=", name="|ratio / (9/1600) - 1|")
    return Claim("3", "|g_x|/|g_y| at the start", "starts near 9/1600 ≈ 0.006",
                 f"{ratio:.4g} at ({x0:g}, {y0:g}) (×{ratio / NOTE_START_RATIO:.2g} the note's value)",
                 rule(abs(ratio / NOTE_START_RATIO - 1)),
                 f"|2(x0-1)|/|2c(y0-2)|; {rule.describe()}; the note's value would need y0 = {y_needed:.4g} at "
                 f"x0 = {x0:g}; at ({x0:g}, {y0:g}) |x0-1|/|2c(y0-2)| = {half:.4g} (g_x without its factor 2)")


def claim_ratio_grows(grad_x, grad_y, active) -> Claim:
    """Experiment 3: |g_x|/|g_y| grows toward 1 as y settles (and x then dominates)."""
    grad_x, grad_y = np.abs(np.asarray(grad_x, np.float64)), np.abs(np.asarray(grad_y, np.float64))
    ratio = np.divide(grad_x, grad_y, out=np.full(grad_x.shape, np.inf), where=grad_y > 0)
    active = np.asarray(active, bool)
    reached = active & (ratio >= 1)
    claim = "|g_x|/|g_y| grows toward 1 as y settles"
    if not reached.any():
        return Claim("3", claim, "grows toward 1 as y settles",
                     f"never reaches 1 (max {np.nanmax(ratio[active]):.3g})", "refuted")
    first = int(np.argmax(reached))
    later = active & (np.arange(ratio.size) > first)
    back = float(np.mean(ratio[later] < 1)) if later.any() else 0.0
    rule = sm.Threshold(BACK_BELOW, partly=1.0, op="<=", name="share of later steps below 1")
    return Claim("3", claim, "grows toward 1 as y settles",
                 f"first reaches 1 at step {first}; below 1 again in {back:.0%} of the later steps", rule(back),
                 rule.describe())


def claim_kink(loss, x_term, y_term, active) -> Claim:
    """Experiment 3: the loss slope changes at the handover (first step where (x-1)² ≥ c(y-2)²)."""
    loss, active = np.asarray(loss, np.float64), np.asarray(active, bool)
    handover = np.asarray(x_term) >= np.asarray(y_term)
    last = int(np.flatnonzero(active).max()) if active.any() else 0
    k = int(np.argmax(handover)) if handover.any() else -1
    if k < 1 or k >= last:
        return Claim("3", "kink when y finishes and x takes over", "loss decreases ... with a 'kink'",
                     "no handover inside the run", "inconclusive")
    window = min(max(k, 10), last - k)
    before = (loss[k] / loss[0]) ** (1 / k)
    after = (loss[k + window] / loss[k]) ** (1 / window)
    kink = abs(np.log(before)) >= KINK * abs(np.log(after)) or abs(np.log(after)) >= KINK * abs(np.log(before))
    return Claim("3", "kink when y finishes and x takes over", "loss decreases ... with a 'kink' when y finishes",
                 f"handover at step {k}; loss ×{before:.3g} per step before, ×{after:.3g} over the next {window}",
                 sm.check(kink), f"kink = per-step log-slope changes by at least {KINK:g}×")


def claim_fix_quadratic(steps_to_floor: dict, c: float, total: int) -> Claim:
    """Experiment 3 grid: does a per-leaf step (the note's fix 1) remove the starvation at curvature ``c``?"""
    def cost(s):  # never reaching the floor counts as longer than the run
        return total + 1 if s < 0 else s

    shared = steps_to_floor[(c, "global")]
    fixes = {s: steps_to_floor[(c, s)] for s in ("per_leaf_full", "per_leaf_equal") if (c, s) in steps_to_floor}
    best = min(fixes, key=lambda s: cost(fixes[s]))
    rule = sm.Threshold(FIX_SPEEDUP, partly=1.0, partly_op=">", name="speed-up of the better per-leaf variant")
    def steps(n):
        return f"never within {total}" if n < 0 else str(n)

    listed = ", ".join(f"{s} {steps(n)}" for s, n in fixes.items())
    return Claim("3", f"per-leaf steps remove the starvation (c = {c:g})", "fix 1: per-parameter scaling",
                 f"steps to floor: global {steps(shared)}, {listed}",
                 rule(cost(shared) / cost(fixes[best])), rule.describe() + " (a run that never reaches it costs "
                 f"{total + 1} steps)")


def claim_linreg_converges(stats: dict) -> Claim:
    """Experiment 4: the shared step converges on the (quadratic) linear-regression loss."""
    hit = sm.reached(stats["steps_to_floor"])
    rule = sm.Threshold(1.0, partly=0.0, partly_op=">", name="share of seeds reaching the floor")
    return Claim("4", "converges (quadratic loss)", "theoretically should converge monotonically",
                 f"{sm.reached_text(stats['steps_to_floor'], what='seeds reach 1e-10 × initial loss')}; final loss "
                 f"{_mean_std(stats['final_loss'])}", rule(hit.k / hit.n), rule.describe())


def claim_linreg_mild(stats: dict) -> Claim:
    """Experiment 4: at most a mild zig-zag (w–b coupling through the data)."""
    size = _median(stats, "up_over_drop")
    rule = sm.Threshold(SMOOTH, partly=MILD, op="<=", name="median rise/drop over seeds")
    return Claim("4", "at most a mild zig-zag from w-b coupling", "possible mild zig-zag due to w-b coupling",
                 f"rising steps {_mean_std(stats['zigzag'])}, rise/drop {size:.3g} (median)", rule(size),
                 rule.describe())


def claim_linreg_fix(stats: dict) -> Claim:
    """Experiment 4: per-leaf steps (the note's fix 1) against the shared step on the coupled linear model."""
    shared = np.asarray(stats["global"]["steps_to_floor"])
    parts, best_speedup = [], 0.0
    for name in [s for s in stats if s.startswith("per_leaf")]:
        steps = np.asarray(stats[name]["steps_to_floor"])
        parts.append(f"{name}: {sm.reached_text(steps, what='seeds reach the floor')}; "
                     f"{sm.counts_text(stats[name]['verdict'])}")
        if (steps >= 0).all() and (shared >= 0).all():
            best_speedup = max(best_speedup, float(np.median(shared) / max(np.median(steps), 1)))
    if not parts:
        return Claim("4", "per-leaf steps converge at least as well", "fix 1: per-parameter scaling", "not run",
                     "inconclusive")
    rule = sm.Threshold(1.0, partly=0.0, partly_op=">", name="best median speed-up")
    return Claim("4", "per-leaf steps converge at least as well as the shared step", "fix 1: per-parameter scaling",
                 f"global: {sm.reached_text(shared, what='seeds reach the floor')}; " + "; ".join(parts),
                 rule(best_speedup), rule.describe() + " (a speed-up needs a per-leaf variant that reaches the floor "
                 "on every seed)")


def claim_mlp_zigzag(at_ref: dict) -> Claim:
    """Experiment 5: the shared step zig-zags on the x² MLP (more than AdamW when AdamW ran).

    Zig-zag size is the median over seeds of rise/drop (sum of loss increases over sum of decreases): it tells a
    real oscillation from float noise on a plateau, which the share of rising steps does not.
    """
    shared = _median(at_ref["global"], "up_over_drop")
    adamw = _median(at_ref["adamw"], "up_over_drop") if "adamw" in at_ref else float("nan")
    return Claim("5", "the shared step zig-zags on the x² MLP", "most likely to show zig-zag",
                 f"global: rise/drop {shared:.3g} (median), rising steps {_mean_std(at_ref['global']['zigzag'])}; "
                 f"adamw rise/drop {adamw:.3g}",
                 sm.check(shared >= SMOOTH and not shared <= adamw, partly=shared > 0),
                 f"confirmed if the loss rises by ≥ {SMOOTH:g} of what it drops (median over seeds) and more than "
                 "with adamw; partly if it rises at all")


def claim_fix(name: str, members, at_ref: dict) -> Claim:
    """Experiment 5: fix direction ``name`` against the shared step (zig-zag = median rise/drop).

    Its member with the smallest zig-zag among those that train (median final loss below the median initial loss)
    is compared; a member that blows up does not count as a fix.
    """
    claim, claimed = f"fix {name} removes the zig-zag", "potential fix direction (if coupling is confirmed)"
    ran = [m for m in members if m in at_ref]
    if not ran:
        return Claim("5", claim, claimed, "not run", "inconclusive")
    trains = [m for m in ran if _median(at_ref[m], "final_loss") < _median(at_ref[m], "initial_loss")]
    blown = [f"{m} (median final loss {_median(at_ref[m], 'final_loss'):.3g})" for m in ran if m not in trains]
    if not trains:
        return Claim("5", claim, claimed, f"does not train: {', '.join(blown)}", "refuted")
    best = min(trains, key=lambda m: _median(at_ref[m], "up_over_drop"))
    zz, zz_shared = _median(at_ref[best], "up_over_drop"), _median(at_ref["global"], "up_over_drop")
    loss, loss_shared = _median(at_ref[best], "final_loss"), _median(at_ref["global"], "final_loss")
    rule = sm.Threshold(REMOVES, partly=REDUCES, op="<=", name="rise/drop ÷ global's")
    # a shared step without zig-zag leaves nothing to remove
    verdict = "inconclusive" if zz_shared < NO_ZIGZAG else rule(zz / zz_shared)
    return Claim("5", claim, claimed,
                 f"{best}: rise/drop {zz:.3g} vs global {zz_shared:.3g}; median final loss {loss:.3g} vs "
                 f"{loss_shared:.3g} (×{loss / loss_shared:.3g}); {sm.counts_text(at_ref[best]['verdict'])}",
                 verdict, f"{rule.describe()}; inconclusive if global's rise/drop < {NO_ZIGZAG:g}; members run: "
                 f"{', '.join(ran)}" + (f"; blown up: {', '.join(blown)}" if blown else ""))


def claim_adamw_smooth(at_ref: dict) -> Claim:
    """Experiment 5: AdamW converges smoothly (the note's reference behaviour)."""
    if "adamw" not in at_ref:
        return Claim("5", "AdamW converges smoothly", "converges smoothly with AdamW", "not run", "inconclusive")
    stats = at_ref["adamw"]
    size = _median(stats, "up_over_drop")
    codes = np.asarray(stats["verdict"]).astype(int)
    stable = not np.isin(codes, [VERDICTS.index("diverged"), VERDICTS.index("nan")]).any()
    smooth = size <= SMOOTH
    return Claim("5", "AdamW converges smoothly", "converges smoothly with AdamW",
                 f"rise/drop {size:.3g} (median), rising steps {_mean_std(stats['zigzag'])}; median final loss "
                 f"{_median(stats, 'final_loss'):.3g}; {sm.counts_text(codes)}",
                 sm.check(smooth and stable, partly=smooth or stable),
                 f"smooth: rise/drop ≤ {SMOOTH:g}; stable: no diverged/nan seed; confirmed if both, partly if one")


def damping_text(grid, reference_lr: float) -> str:
    """One measured sentence: the shared step's zig-zag and final loss at each learning rate (a damping baseline)."""
    parts = []
    for lr in grid.axes["learning_rate"]:
        out = grid.select(optimizer="global", learning_rate=lr).outputs
        parts.append(f"lr × {lr:g}: rise/drop {_median(out, 'up_over_drop'):.3g}, median final loss "
                     f"{_median(out, 'final_loss'):.3g}")
    return (f"Measured baseline (not a fix direction of the note): the shared step with a smaller learning rate: "
            f"{'; '.join(parts)}. Claims compare at lr × {reference_lr:g}.")


def grid_table(grid, by, title: str, extra=(), steps_to_floor: bool = False):
    """The per-combination table of a grid: final loss, ``extra`` metrics, zig-zag, [steps to floor], verdicts."""
    columns = [("final loss (mean ± std)", "final_loss", _mean_std),
               ("final loss (median)", "final_loss", _median_text),
               *((name.replace("_pct", " %").replace("_", " "), name, _mean_std) for name in extra),
               ("rising steps", "zigzag", _mean_std), ("rise/drop (median)", "up_over_drop", _median_text),
               *([("steps to floor", "steps_to_floor", "reached")] if steps_to_floor else []),
               ("verdicts", "verdict", "verdicts")]
    return sm.grid_table(grid, by, columns, title=title)
