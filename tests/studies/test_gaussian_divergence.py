"""The Gaussian-image divergence study (lab note 004): bit-exact resume from the best checkpoint, the CLI run.

The fixes grid's own resume check (the unchanged fix repeats each baseline run bit for bit) is asserted on the
report of the CLI run, so one tiny study run covers both."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab import studies
from optlab.cli import main
from optlab.engine import loop
from optlab.engine.checkpoint import best_checkpoint
from optlab.problems import gaussian_image as gi
from optlab.studies import gaussian_divergence as gd

TINY = dict(size=12, n_gaussians=(4,), lr=1.0, rasterisers=("sum",), steps=60, log_every=5, checkpoint_every=20,
            seeds=2, gradient_of=("l2_only",), clamp=(1,), fixes=("none", "moment_reset"), fix_steps=20,
            step_every=10, patience=5,
            hyp_lrs=(1e-3, 1e-2), hyp_seeds=2, chunk=64)


def test_registered_under_its_cli_name():
    assert studies.get("gaussian-divergence") is gd.STUDY


def test_resume_from_the_best_checkpoint_is_bit_identical(tmp_path):
    target = gi.synthetic_target(12)
    loss = gi.make_loss(target, gradient_of="l2_only", chunk=64)
    params = gi.init_params(jax.random.key(0), 4, (12, 12))
    opt = gd._optimizer("adam", 1.0, (12, 12), 1.0)  # lr 1: the loss bounces, so the best is not the last step
    whole = loop.fit(loss, params, opt, steps=50, checkpoint_every=10, checkpoint_dir=tmp_path,
                     overwrite_checkpoints=True)
    state = loop.load_state(best_checkpoint(tmp_path), params, opt)
    step = int(state.step)
    assert 0 < step <= 45 and float(whole.trace["loss"][step]) < float(whole.trace["loss"][0])
    more = loop.fit(loss, params, opt, steps=5, start=state)
    np.testing.assert_array_equal(np.asarray(more.trace["loss"]), np.asarray(whole.trace["loss"][step:step + 5]))


def test_measured_step_of_a_fresh_adam_state_is_one_lr_per_entry():
    target = gi.synthetic_target(12)
    loss = gi.make_loss(target, chunk=64)
    opt = gd._optimizer("adam", 1e-2, (12, 12), 0.0)
    params = [gi.init_params(k, 4, (12, 12)) for k in jax.random.split(jax.random.key(1), 2)]
    states = [loop.start_state(p, opt.init(p), step=jnp.asarray(0, jnp.int32)) for p in params]
    out = gd.measured_steps(loss, params[0], opt, jax.tree.map(lambda *xs: jnp.stack(xs), *states), 1e-2)
    # Adam's first update is lr · g / (|g| + eps): |Δθ| / lr is 1 for every entry whose gradient is far above eps
    for group in gd.STEP_GROUPS:
        np.testing.assert_allclose(np.asarray(out[f"max/{group}"]), 1.0, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(out[f"median/{group}"]), 1.0, rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(out["step"]), [0, 0])


def test_bad_config_is_refused_before_any_work():
    config = dataclasses.replace(gd.GaussianDivergenceConfig.quick(), checkpoint_every=7)
    with pytest.raises(ValueError, match="checkpoint_every"):
        gd.run(config, progress=False)


def test_quick_study_writes_report_csv_config_and_figures(tmp_path):
    out = tmp_path / "run"
    text = {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in TINY.items()}
    sets = [a for k, v in text.items() for a in ("--set", f"{k}={v}")]
    assert main(["run", "gaussian-divergence", "--quick", *sets, "--out", str(out), "--no-progress"]) == 0
    for name in ("report.md", "results.csv", "config.yaml", "loss_terms.png", "fixes.png", "heatmap_lr_n.png",
                 "images.png", "degeneracy.png", "bias_correction.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "H1" in report and "H6" in report and "moment_reset" in report
    assert "measured median" in report and "/lr at best → end" in report
    assert "h1_probe" in (out / "results.csv").read_text()  # the measured steps are rows of the CSV too  # H1 is measured from the optimizer's own steps
    # the study measures its own bit-exact resume: "none" repeats each baseline run after its best checkpoint
    same, total = map(int, re.search(r"bit for bit in (\d+) of (\d+) runs", report).groups())
    assert total >= 1 and same == total
    first, first_total = map(int, re.search(r"first logged loss of (\d+) of (\d+)", report).groups())
    assert first_total >= 1 and first == first_total
    assert (out / "checkpoints").is_dir()
    # what a kill mid-baseline leaves (cell 0 saved up to step 20, cell 1 up to 40 of 60): the same command with the
    # same --out resumes both cells from there and writes the same results.csv byte for byte
    first_csv, checkpoints = (out / "results.csv").read_bytes(), out / "checkpoints"
    for cell, keep in ((0, 20), (1, 40)):
        for path in loop.cell_dir(checkpoints, cell).glob("checkpoint_*.eqx"):
            if int(path.stem.split("_")[1]) > keep:
                path.unlink()
    kept = loop.cell_dir(checkpoints, 0) / "checkpoint_000020.eqx"
    written = kept.stat().st_mtime_ns
    kept_stages = sorted(p.name for p in (out / "stages").iterdir())
    assert kept_stages == ["fixes.pkl", "hypotheses.pkl"]  # the finished later grids are kept, not run again
    assert main(["run", "gaussian-divergence", "--quick", *sets, "--out", str(out), "--no-progress"]) == 0
    assert (out / "results.csv").read_bytes() == first_csv
    assert kept.stat().st_mtime_ns == written  # resumed after it, not re-run from step 0 (which rewrites it)
    assert sorted(p.name for p in loop.cell_dir(checkpoints, 0).glob("checkpoint_*.eqx")) == [
        "checkpoint_000020.eqx", "checkpoint_000040.eqx", "checkpoint_000060.eqx"]


@pytest.mark.parametrize("ratio, verdict", [(1.2, "confirmed"), (1.05, "partly"), (0.9, "refuted")])
def test_final_over_start_needs_half_the_notes_excess_to_confirm(ratio, verdict):
    from optlab.studies import gaussian_divergence_claims as gc

    config = gd.GaussianDivergenceConfig()  # the note's lr 1e-3 and 10 000 steps: the claim is testable
    claim = gc._final_over_start_claim(config, np.full(8, ratio), np.zeros(8, int))
    assert claim.verdict == verdict, claim
    assert "1.11" in claim.detail and "1.22" in claim.claimed
