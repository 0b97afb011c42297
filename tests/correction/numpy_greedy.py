"""A direct NumPy implementation of the greedy correction in residual form, the reference for the tests.

It recomputes ``P = xᵀR`` from the residual at every step, exactly as the rule is stated, with no Gram shortcuts.
"""

import numpy as np


def greedy_residual(x, w_dense, w_pruned, *, magnitude=0.01, fraction=0.1, mode="fixed", max_relative=None,
                    relative=True, max_steps=None):
    """Returns (weights, trace dict of lists, stopped_early)."""
    x, w_dense, w_pruned = (np.asarray(a, np.float64) for a in (x, w_dense, w_pruned))
    n, d_in = x.shape
    d_out = w_dense.shape[1]
    kept = w_pruned != 0
    w = w_pruned.copy()
    residual = x @ (w - w_dense)
    col_sq = np.sum(x * x, axis=0)
    k = int(np.round(fraction * d_in))
    steps = k if max_steps is None else max_steps
    used = np.zeros(d_in, bool)
    trace = {key: [] for key in ("position", "channels", "improvement", "linear", "quad", "error", "applied")}
    stopped = False
    for t in range(steps):
        go = False
        if t < k and not stopped:
            p = x.T @ residual  # (d_in, d_out)
            if mode == "fixed":
                s = np.abs(w_pruned) if relative else kept.astype(float)
                delta = -np.sign(p) * magnitude * s
            else:
                delta = -p / col_sq[:, None]
                if max_relative is not None:
                    b = max_relative * np.abs(w_pruned)
                    delta = np.clip(delta, -b, b)
            d_e = 2 * delta * p + delta**2 * col_sq[:, None]
            gain = np.where(kept & (d_e < 0), -d_e, 0.0).sum(axis=1)
            gain[used] = -np.inf
            j = int(np.argmax(gain))
            if gain[j] > 0:
                go = True
            else:
                stopped = True
        if go:
            change = kept[j] & (d_e[j] < 0)
            row = np.where(change, delta[j], 0.0)
            w[j] += row
            residual += np.outer(x[:, j], row)
            used[j] = True
            lin = np.sum(np.where(change, 2 * delta[j] * p[j], 0.0)) / (n * d_out)
            quad = np.sum(np.where(change, delta[j] ** 2 * col_sq[j], 0.0)) / (n * d_out)
            values = (j, int(change.sum()), -(lin + quad), lin, quad)
        else:
            values = (-1, 0, 0.0, 0.0, 0.0)
        for key, v in zip(("position", "channels", "improvement", "linear", "quad"), values):
            trace[key].append(v)
        trace["error"].append(np.sum(residual**2) / (n * d_out))
        trace["applied"].append(go)
    return w, {key: np.asarray(v) for key, v in trace.items()}, stopped
