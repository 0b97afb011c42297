"""The digits problem: splits, the MLP, fit can train it, the weight cache."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.problems import digits

SMALL = (64, 32, 10)  # the real net is (64, 256, 256, 10); the study checks its >= 95 % on the full size


def test_splits_are_disjoint_scaled_and_fixed_by_seed():
    splits = digits.load(0, calib=100, test=200)
    (x_tr, y_tr), (x_ca, y_ca), (x_te, y_te) = splits
    assert x_tr.shape == (1797 - 300, 64) and x_ca.shape == (100, 64) and x_te.shape == (200, 64)
    assert x_tr.dtype == jnp.float32 and y_tr.dtype == jnp.int32
    assert float(jnp.min(x_tr)) >= 0.0 and float(jnp.max(x_tr)) == 1.0
    every = np.concatenate([np.asarray(x) for x, _ in splits])
    assert len(np.unique(every, axis=0)) > 1700  # the rows partition the 1797 images (a few images repeat)
    again = digits.load(0, calib=100, test=200)
    chex.assert_trees_all_equal(splits, again)
    other = digits.load(1, calib=100, test=200)
    assert not np.array_equal(np.asarray(other.test[1]), np.asarray(splits.test[1]))
    # the test rows do not depend on the calibration size
    chex.assert_trees_all_equal(digits.load(0, calib=50, test=200).test, splits.test)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"calib": 0}, {"test": 1.5}, {"calib": 1000, "test": 900}])
def test_load_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)) if len(kwargs) == 1 else "calib \\+ test"):
        digits.load(**kwargs)


def test_mlp_rejects_sizes_that_do_not_fit_the_data():
    with pytest.raises(ValueError, match="sizes"):
        digits.mlp(jax.random.key(0), (32, 10))


def test_fit_trains_the_small_mlp_past_94_percent_on_the_test_split():
    splits = digits.load(0)
    model = digits.trained(0, cache_dir=None, sizes=SMALL, steps=200, learning_rate=1e-2)
    assert float(digits.accuracy(model, *splits.test)) >= 0.94
    assert float(digits.cross_entropy(model, *splits.test)) < 0.3


def test_problem_plugs_into_fit_and_reports_test_metrics():
    task = digits.problem(digits.load(0), sizes=SMALL)
    run = optlab.fit(task.loss, task.init(jax.random.key(0)), optax.adam(1e-2), steps=20, data=task.data,
                     metrics_fn=task.metrics)
    loss = run.trace["loss"]
    assert float(loss[-1]) < float(loss[0])
    assert set(task.metrics(run.params)) == {"train_accuracy", "test_accuracy", "test_loss"}


def test_trained_weights_are_cached_by_config(tmp_path):
    first = digits.trained(0, cache_dir=tmp_path, sizes=SMALL, steps=3)
    files = list(tmp_path.glob("digits-*.eqx"))
    assert len(files) == 1
    again = digits.trained(0, cache_dir=tmp_path, sizes=SMALL, steps=3)
    chex.assert_trees_all_equal(first, again)
    digits.trained(0, cache_dir=tmp_path, sizes=SMALL, steps=4)
    assert len(list(tmp_path.glob("digits-*.eqx"))) == 2  # another config, another file


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install optlab\[data\]"):
        digits.load(0)
