"""Layers to correct: synthetic transformer-like inputs, a trained MLP layer, and file round trips."""

import jax
import numpy as np
import pytest

from optlab.problems.pruned_layer import Layer, layer_error, load_layer, mlp_layer, save_layer, synthetic_layer


def test_synthetic_layer_is_deterministic_and_transformer_like():
    layer = synthetic_layer(jax.random.key(0), 64, 32, 200)
    again = synthetic_layer(jax.random.key(0), 64, 32, 200)
    np.testing.assert_array_equal(layer.x, again.x)
    assert layer.x.shape == (200, 64) and layer.w.shape == (64, 32) and layer.x_test.shape == (200, 64)
    x = np.asarray(layer.x)
    rms = np.sqrt((x**2).mean(axis=0))
    assert rms.max() > 5 * np.median(rms)  # a few outlier channels
    z = (x - x.mean(0)) / x.std(0)
    assert np.median((z**4).mean(0)) > 3.5  # heavy tails (Gaussian: 3)
    corr = np.corrcoef(x[:, rms < 2 * np.median(rms)].T)
    assert np.abs(corr[np.triu_indices_from(corr, 1)]).mean() > 0.1  # correlated features


def test_mlp_layer_is_a_trained_layer_with_its_own_activations():
    layer = mlp_layer(jax.random.key(1), 32, 16, 64, steps=50)
    assert layer.x.shape == (64, 32) and layer.w.shape == (32, 16) and layer.x_test.shape == (64, 32)
    assert np.all(np.isfinite(layer.x)) and np.all(np.isfinite(layer.w))
    assert (np.asarray(layer.x) < 0).any()  # GELU activations, not raw Gaussian inputs
    assert float(layer_error(layer.x, layer.w, layer.w)) == 0.0


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_roundtrip(tmp_path, suffix):
    layer = synthetic_layer(jax.random.key(2), 16, 8, 20)
    corrected = np.asarray(layer.w) * 0.5
    path = save_layer(tmp_path / f"layer{suffix}", layer, w_corrected=corrected)
    loaded = load_layer(path)
    for name in Layer._fields:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(layer, name))
    if suffix == ".npz":
        np.testing.assert_array_equal(np.load(path)["w_corrected"], corrected)


def test_load_user_file_with_torch_layout_and_no_test_rows(tmp_path):
    x, w_out_in = np.ones((5, 4), np.float32), np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "user.npz", acts=x, weight=w_out_in)
    layer = load_layer(tmp_path / "user.npz", x_key="acts", w_key="weight", w_layout="out_in")
    np.testing.assert_array_equal(layer.w, w_out_in.T)
    assert layer.x_test.shape == (0, 4)


def test_load_errors_name_the_problem(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.ones((5, 4)), weights=np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"no array\(s\) \['w'\].*holds \['weights', 'x'\]"):
        load_layer(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", x=np.ones((5, 4)), w=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"matching d_in.*\(5, 4\).*\(3, 2\)"):
        load_layer(tmp_path / "shape.npz")
    (tmp_path / "layer.txt").write_text("")
    with pytest.raises(ValueError, match=".npz or .safetensors"):
        load_layer(tmp_path / "layer.txt")
    with pytest.raises(FileNotFoundError):
        load_layer(tmp_path / "missing.npz")
