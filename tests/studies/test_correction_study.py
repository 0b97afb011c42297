"""The correction study (lab note 000) on its quick config: every cell has rows, every claim a valid verdict."""

import dataclasses

import pytest
from matplotlib.figure import Figure

from optlab.studies import get
from optlab.studies.base import VERDICTS
from optlab.studies.correction import STUDY, CorrectionConfig


@pytest.fixture(scope="module")
def result():
    return STUDY.run(CorrectionConfig.quick(), progress=False)


def test_registered_under_its_cli_name():
    assert get("correction") is STUDY


def test_rows_cover_every_cell_and_seed(result):
    config = CorrectionConfig.quick()
    magnitudes = set(config.magnitude) | set(config.sweep)
    fixed = [r for r in result.rows if r["grid"] == "fixed"]
    assert len(fixed) == len(magnitudes) * len(config.fraction) * config.seeds
    assert {(r["magnitude"], r["fraction"]) for r in fixed} == {(m, f) for m in magnitudes for f in config.fraction}
    for r in fixed:
        assert r["final_error"] <= r["initial_error"] * (1 + 1e-6)  # a correction never raises calibration error
        assert 0 <= r["applied_share"] <= 1
    methods = [r for r in result.rows if r["grid"] == "methods"]
    assert len(methods) == config.seeds * len(config.ceiling_layers)
    for r in methods:  # nothing beats the exact masked least squares on calibration inputs
        for key in ("fixed_best", "optimal", "optimal_bounded", "sparsegpt", "admm"):
            assert r[f"{key}/reduction"] <= r["ceiling/reduction"] * (1 + 1e-3) + 1e-7, key


def test_claims_have_valid_verdicts_and_measured_numbers(result):
    claims = result.claims
    assert len(claims) >= 6
    for claim in claims:
        assert claim.verdict in VERDICTS
        assert any(ch.isdigit() for ch in claim.measured)
    texts = " ".join(c.claim for c in claims)
    for needle in ("beats", "stops earlier", "diminishing", "optimal", "sweet spot", "paradox"):
        assert needle in texts


def test_sections_hold_tables_and_figures(result):
    figures = {name: fig for s in result.sections for name, fig in s.figures.items()}
    for name in ("correction_reduction.png", "correction_applied_share.png", "correction_stopped_early.png",
                 "correction_diminishing_ratio.png", "correction_ceiling.png", "correction_sweep.png"):
        assert isinstance(figures[name], Figure)
    ceiling = result.sections[1]
    assert "published" in ceiling.text.lower() and "5.12" in ceiling.text
    shares = [row[2] for row in ceiling.tables[0].rows]
    assert shares[-1].startswith("100.0")  # the ceiling is 100 % of itself


def test_cli_grid_override_and_validation():
    config = STUDY.make_config(quick=True, grid={"magnitude": "0.01,0.02"}, seeds=3)
    assert config.magnitude == (0.01, 0.02) and config.seeds == 3
    with pytest.raises(ValueError, match="fraction"):
        dataclasses.replace(CorrectionConfig.quick(), fraction=(0.0,)).validate()
    with pytest.raises(ValueError, match="layer"):
        dataclasses.replace(CorrectionConfig.quick(), layer="conv").validate()
