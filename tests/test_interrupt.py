"""Ctrl-C during a grid: a real SIGINT stops it between chunks, returns what finished, and later grids honour it."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from optlab.engine import interrupt
from optlab.engine.grid import run_grid

# A grid of 250 chunks, ~20 ms each with length 10⁶ (5 s in all): long enough to interrupt, stopped in a moment.
# A cell touches a file half-way through its chunk, so the parent knows the grid is really running.
CHILD = textwrap.dedent("""
    import json, sys, warnings
    import jax, jax.numpy as jnp
    from optlab.engine.grid import run_grid
    from optlab.engine.interrupt import GridInterrupted

    flag, length = sys.argv[1], int(sys.argv[2])
    warnings.simplefilter("ignore", RuntimeWarning)

    def touch(c):
        open(flag, "a").close()
        return c

    def fn(hp, key):
        body = lambda c, _: (jnp.sin(c) + 1e-3 * hp["x"], None)
        c, _ = jax.lax.scan(body, jax.random.normal(key), None, length=length // 2)
        # half-way through the chunk (the second half depends on it): the parent sends Ctrl-C from here on
        c = jax.pure_callback(touch, jax.ShapeDtypeStruct(c.shape, c.dtype), c, vmap_method="broadcast_all")
        c, _ = jax.lax.scan(body, c, None, length=length // 2)
        return {"value": c}

    res = run_grid(fn, {"x": list(range(2000))}, chunk_size=8, progress=False)
    print(json.dumps({"complete": res.complete, "done": len(res), "total": res.info["cells_total"],
                      "finite": bool(jnp.all(jnp.isfinite(res.outputs["value"])))}))
    try:
        run_grid(fn, {"x": [1]}, progress=False)
        print(json.dumps({"second": "ran"}))
    except GridInterrupted as stop:
        print(json.dumps({"second": "refused", "done": len(stop.result), "total": stop.result.info["cells_total"]}))
""")


def _interrupt_child(tmp_path, presses: int, length: int):
    script, flag = tmp_path / "child.py", tmp_path / "running"
    script.write_text(CHILD)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(flag), str(length)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the grid never started"
            time.sleep(0.02)
        for _ in range(presses):
            child.send_signal(signal.SIGINT)
            time.sleep(0.1)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return child.returncode, [json.loads(line) for line in out.splitlines()], err


# Two presses: chunks of ~0.5 s, so the second Ctrl-C lands while run_grid still waits for the running chunk.
@pytest.mark.parametrize(("presses", "length"), [(1, 1_000_000), (2, 30_000_000)], ids=["one_ctrl_c", "two_ctrl_c"])
def test_sigint_returns_finished_cells_and_later_grids_refuse(tmp_path, presses, length):
    rc, (first, second), err = _interrupt_child(tmp_path, presses, length)
    assert rc == 0, err
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    assert not first["complete"] and first["total"] == 2000
    assert 0 < first["done"] < 2000 and first["done"] % 8 == 0 and first["finite"]  # whole chunks only
    assert second == {"second": "refused", "done": 0, "total": 1}
    if presses == 1:
        assert "finishing the running chunk" in err


def _table(hparams, key):
    return {"value": hparams["x"] * 2.0}


def test_sigint_in_a_scope_defers_and_is_forgotten_after_it():
    with interrupt.interrupt_scope() as scope:
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: sets the flag, raises nothing
        time.sleep(0.01)
        assert scope.interrupted
        with pytest.raises(interrupt.GridInterrupted, match="earlier grid") as stop:
            run_grid(_table, {"x": [1.0, 2.0]}, seeds=3, progress=False)
        assert not stop.value.result.complete and len(stop.value.result) == 0
        assert stop.value.result.info["cells_total"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert run_grid(_table, {"x": [1.0]}, progress=False).complete  # the scope's interrupt died with it


def test_keyboard_interrupt_raised_by_fn_is_not_sticky():
    def fn(hparams, key):
        raise KeyboardInterrupt

    with interrupt.interrupt_scope() as scope:
        with pytest.warns(RuntimeWarning, match="interrupted"):
            res = run_grid(fn, {"x": [1.0]}, progress=False)
        assert not res.complete and len(res) == 0 and not scope.interrupted
        assert run_grid(_table, {"x": [1.0]}, progress=False).complete


def test_default_scope_is_cleared_after_each_ipython_cell(monkeypatch):
    hooks = {}
    shell = types.SimpleNamespace(events=types.SimpleNamespace(register=lambda name, f: hooks.setdefault(name, f)))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setattr(interrupt, "_ipython_hooked", False)
    try:
        interrupt.mark_interrupted()  # what an interrupted grid does in the default scope
        with pytest.raises(interrupt.GridInterrupted):
            run_grid(_table, {"x": [1.0]}, progress=False)
        hooks["post_run_cell"](None)  # the cell ends
        assert run_grid(_table, {"x": [1.0]}, progress=False).complete
    finally:
        interrupt.reset_interrupt()


def test_grid_label_must_be_text():
    with pytest.raises(TypeError, match="label must be a string"):
        run_grid(_table, {"x": [1.0]}, progress=False, label=5)
