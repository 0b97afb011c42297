"""The correction study (lab note 000) on its quick config: every cell has rows, every claim a valid verdict."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from matplotlib.figure import Figure

from optlab.studies import get
from optlab.studies.correction import STUDY, CorrectionConfig


@pytest.fixture(scope="module")
def result():
    # The digits section has its own tiny test below (test_network_section_*): the quick config's network would
    # compile ~40 programs here.
    return STUDY.run(dataclasses.replace(CorrectionConfig.quick(), network=False), progress=False)


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


def test_claims_have_measured_numbers(result):
    claims = result.claims
    assert len(claims) >= 6
    for claim in claims:
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


def _tiny(**changes):
    """A config small enough for a second or two per run."""
    base = CorrectionConfig(d_in=16, d_out=8, n=24, seeds=3, magnitude=(0.01, 0.02), fraction=(0.1, 0.25),
                            sweep=(1.0,), ceiling_layers=("synthetic",), network=False)
    return dataclasses.replace(base, **changes)


def test_every_mean_std_in_tables_and_claims_shows_its_n(result):
    cells = [str(c) for s in result.sections for t in s.tables for row in t.rows for c in row]
    cells += [c.measured for c in result.claims]
    for text in cells:
        assert text.count("±") <= text.count("(n="), text
    titles = [t.title for s in result.sections for t in s.tables]
    assert len(titles) == len(set(titles))  # each table once


def test_one_seed_makes_paired_claims_inconclusive_without_printing_pm():
    res = STUDY.run(_tiny(seeds=1), progress=False)
    beats = next(c for c in res.claims if "beats" in c.claim)
    assert beats.verdict == "inconclusive"  # one seed has no standard error
    assert next(c for c in res.claims if "sweet spot" in c.claim).verdict == "inconclusive"
    assert all("±" not in c.measured for c in res.claims)


def test_interrupt_before_the_grid_returns_an_empty_incomplete_result():
    from optlab.engine import interrupt

    config = _tiny()
    with interrupt.interrupt_scope():
        interrupt.mark_interrupted()  # as after an earlier grid of the same run was stopped by Ctrl-C
        res = STUDY.run(config, progress=False)
    assert not res.complete and res.claims == [] and res.rows == []
    grid_cells = len(set(config.magnitude) | set(config.sweep)) * len(config.fraction) * config.seeds
    assert (res.cells_done, res.cells_total) == (0, grid_cells + config.seeds)
    assert res.incomplete_line() == f"INCOMPLETE: 0 of {grid_cells + config.seeds} cells"


def test_partly_finished_grid_keeps_its_rows_and_computes_no_claim(monkeypatch):
    from optlab.studies import correction

    real = correction.run_grid

    def stopped_half_way(*args, **kwargs):  # what run_grid returns when Ctrl-C lands between chunks
        grid = real(*args, **kwargs)
        keep = len(grid) // 2
        outputs = {k: v[:keep] for k, v in grid.outputs.items()}
        return dataclasses.replace(grid, index=grid.index[:keep], outputs=outputs, complete=False,
                                   info={**grid.info, "cells_total": len(grid)})

    monkeypatch.setattr(correction, "run_grid", stopped_half_way)
    config = _tiny()
    res = STUDY.run(config, progress=False)
    grid_cells = len(set(config.magnitude) | set(config.sweep)) * len(config.fraction) * config.seeds
    assert not res.complete and res.claims == []
    assert (res.cells_done, res.cells_total) == (grid_cells // 2, grid_cells + config.seeds)
    assert len(res.rows) == grid_cells // 2 and all(r["grid"] == "fixed" for r in res.rows)
    table = res.sections[0].tables[0]
    assert len(table.rows) == len({(r["magnitude"], r["fraction"]) for r in res.rows})


def _tiny_network(tmp_path):
    return dataclasses.replace(CorrectionConfig.quick(), network_sizes=(64, 16, 10), network_steps=50,
                               network_seeds=2, network_calib_pool=64, network_calib_rows=32,
                               network_sparsities=(0.5,), network_patterns=(), network_magnitudes=(0.01, 0.2),
                               network_fractions=(0.5, 1.0), network_calibration=("sequential",),
                               network_cache=str(tmp_path))


def test_network_section_table_claims_and_test_split_never_reaches_selection(tmp_path, monkeypatch):
    from optlab.problems import digits
    from optlab.studies import correction_network as cn

    config = _tiny_network(tmp_path)
    config.validate()
    test_x = digits.load(0, calib=config.network_calib_pool).test[0]
    seen = []
    real_select = cn.select_fixed_cell

    def spy(*args, **kwargs):  # records every array the selection code receives
        seen.extend(a for a in jax.tree.leaves((args, kwargs)) if hasattr(a, "shape"))
        return real_select(*args, **kwargs)

    monkeypatch.setattr(cn, "select_fixed_cell", spy)
    found = cn.measure(config)
    assert seen and not any(a.shape == test_x.shape and bool(jnp.all(a == test_x)) for a in seen)
    section = cn.section(config, found)
    accuracy = section.tables[0]
    assert [row[0] for row in accuracy.rows] == list(cn.ROW_NAMES.values())
    assert accuracy.headers == ["method", "50 %"]
    shares = section.tables[2].rows
    assert shares[-1][1].startswith("100.0")  # the ceiling recovers all of itself
    texts = " ".join(c.claim for c in section.claims)
    for needle in ("95", "recovers accuracy", "sweet spot", "stops earlier"):
        assert needle in texts
    rows = cn.rows(found)
    assert len(rows) == len(cn.ROW_NAMES) * config.network_seeds
    by = {(r["method"], r["seed"]): r for r in rows}
    for seed in range(config.network_seeds):  # the ceiling's share bounds every method that keeps its mask
        for method in ("greedy_fixed", "greedy_optimal", "sparsegpt", "admm"):
            assert by[method, seed]["share"] <= by["least_squares", seed]["share"] + 1e-3


def test_network_config_rules():
    with pytest.raises(ValueError, match="network_calib_rows"):
        dataclasses.replace(CorrectionConfig.quick(), network_calib_rows=600).validate()
    with pytest.raises(ValueError, match="network_patterns"):
        dataclasses.replace(CorrectionConfig.quick(), network_patterns=("3:4",)).validate()


def test_ctrl_c_inside_the_network_section_starts_no_new_program(tmp_path, monkeypatch):
    from optlab.engine import interrupt
    from optlab.studies import correction_network

    real, calls = correction_network.select_fixed_cell, []

    def select_then_ctrl_c(*args, **kwargs):  # Ctrl-C lands while the first column's grid runs
        calls.append(kwargs["sparsity"])
        interrupt.mark_interrupted()
        return real(*args, **kwargs)

    monkeypatch.setattr(correction_network, "select_fixed_cell", select_then_ctrl_c)
    config = dataclasses.replace(_tiny_network(tmp_path), network_sparsities=(0.5, 0.6))
    with interrupt.interrupt_scope():
        found = correction_network.measure(config)
    assert found["interrupted"] and len(calls) == 1  # the other columns never started
    assert found["modes"] == {}  # a mode whose columns did not all run is not reported
