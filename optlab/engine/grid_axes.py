"""The axes of a ``run_grid``: argument checks, the cells of the product and the checkpoint cell index.

Every check runs on the host before any work and raises ``TypeError`` / ``ValueError`` naming the argument and the
allowed values. A grid's cells are the rows of :func:`product_index` (one column per axis, the seed innermost);
cells that share their static values form one group, run by one compiled program.

Example:
  >>> axes, static = _check_axes({"lr": [0.1, 0.2], "opt": ["sgd"]}, ["opt"])
  >>> index, groups = product_index({**axes, "seed": [0, 1]}, static)
  >>> index.shape, {k: v.tolist() for k, v in groups.items()}
  ((4, 3), {(0,): [0, 1, 2, 3]})
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from optlab import _atomic
from optlab.engine import cell_checkpoints as _cell_ckpt
from optlab.engine.grid_result import SEED_AXIS, _python


def _is_number(value) -> bool:
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return True
    return isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 and value.dtype.kind in "biuf"


def _check_representable(name: str, values: list) -> None:
    """Refuses dynamic values that the axis array cannot hold (without x64, ``2**40`` would wrap to 0 in int32)."""
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if ints and len(ints) == len(values):
        info = np.iinfo(jax.dtypes.canonicalize_dtype(np.int64))
        bad = [v for v in ints if not info.min <= v <= info.max]
        if bad:
            raise ValueError(
                f"axis {name!r} value {bad[0]} does not fit {info.dtype} (range [{info.min}, {info.max}]); "
                f"enable 64-bit JAX (JAX_ENABLE_X64=1), pass it as a float, or list {name!r} in static=[...]"
            )
    floats = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):  # the overflow is what we are looking for
        big = np.isfinite(floats) & ~np.isfinite(floats.astype(jax.dtypes.canonicalize_dtype(np.float64)))
    if big.any():
        raise ValueError(f"axis {name!r} value {values[int(np.argmax(big))]!r} overflows "
                         f"{jax.dtypes.canonicalize_dtype(np.float64)} (becomes inf); enable 64-bit JAX or rescale it")


def _check_axes(axes, static) -> tuple[dict[str, list], tuple[str, ...]]:
    if not isinstance(axes, Mapping):
        raise TypeError(f"axes must be a mapping name -> sequence of values, got {type(axes).__name__}")
    static = (static,) if isinstance(static, str) else tuple(static)
    checked = {}
    for name, values in axes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"axis names must be non-empty strings, got {name!r}")
        if name == SEED_AXIS:
            raise ValueError(f"axis name {SEED_AXIS!r} is reserved: pass seeds=... instead")
        if isinstance(values, (np.ndarray, jax.Array)) and values.ndim == 1:
            values = np.asarray(values).tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"axis {name!r} must be a list/tuple/range of values, got {values!r}")
        if len(values) == 0:
            raise ValueError(f"axis {name!r} is empty; give at least one value")
        if name not in static:
            bad = [v for v in values if not _is_number(v)]
            if bad:
                raise TypeError(
                    f"axis {name!r} is dynamic (vmapped) so its values must be numbers, got {bad[0]!r}; "
                    f"list it in static=[...] to loop over it in Python instead"
                )
            values = [_python(np.asarray(v)) for v in values]
            _check_representable(name, values)
        checked[name] = list(values)
    if len(set(static)) != len(static):
        raise ValueError(f"static names must be unique, got {static}")
    unknown = [s for s in static if s not in checked]
    if unknown:
        raise ValueError(f"static names must be axes, one of {list(checked)}; got {unknown}")
    return checked, static


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 (an int N means seeds 0..N-1), got {seeds}")
        return list(range(int(seeds)))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)) or len(seeds) == 0:
        raise TypeError(f"seeds must be an int N or a non-empty sequence of ints, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**31:
            raise ValueError(f"seeds must be ints in [0, 2**31), got {s!r}")
        out.append(int(s))
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be unique, got {out}")
    return out


def _resolve_mesh(mesh) -> Mesh | None:
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    if mesh == "auto":
        return Mesh(np.asarray(jax.devices()), ("grid",))
    raise ValueError(f"mesh must be None, 'auto' or a jax.sharding.Mesh, got {mesh!r}")



def _describe(label, axes: Mapping[str, list]) -> str:
    """``"exp 5: 6 optimizer × 4 learning_rate × 8 seed = 192 cells"``: what a progress bar or log line is about."""
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a string or None, got {label!r}")
    size = " × ".join(f"{len(values)} {name}" for name, values in axes.items())
    total = math.prod(len(values) for values in axes.values())
    return f"{label or 'grid'}: {size} = {total} cell{'s' if total != 1 else ''}"


def _cell_index(directory: str, all_axes: dict, index: np.ndarray, names: list[str]) -> list[dict]:
    """``cells.json``'s entries: per cell its index, folder name, axis values and seed."""
    return [{"cell": i, "dir": _cell_ckpt.cell_dir(directory, i).name,
             **{n: _python(np.asarray(all_axes[n][j])) for n, j in zip(names, row)}} for i, row in enumerate(index)]


def _write_cell_index(directory: str, all_axes: dict, index: np.ndarray, names: list[str]) -> None:
    pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
    _atomic.write_json(pathlib.Path(directory) / "cells.json", _cell_index(directory, all_axes, index, names))


def _check_cell_index(directory: str, all_axes: dict, index: np.ndarray, names: list[str]) -> None:
    """``run_grid(resume=True)``: refuses a ``checkpoint_dir`` whose cells.json is not this grid's cell index.

    A missing cells.json is fine when no cell folder holds checkpoints (a fresh run); otherwise nothing says which
    folder is which cell, so resuming is refused too.
    """
    folder = pathlib.Path(directory)
    stored_path = folder / "cells.json"
    if not stored_path.is_file():
        if any(folder.glob("cell_*/checkpoint_*.eqx")):
            raise ValueError(f"checkpoint_dir {str(directory)!r} holds cell checkpoints but no cells.json, so which "
                             "folder is which cell is unknown; resume=False starts the grid again from step 0")
        return
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"checkpoint_dir {str(directory)!r}: cells.json cannot be read ({err})") from None
    expected = json.loads(json.dumps(_atomic._plain(_cell_index(directory, all_axes, index, names)), default=str))
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN == NaN)
    if same(stored, expected):
        return
    if not isinstance(stored, list) or len(stored) != len(expected):
        found = f"{len(stored)} cells" if isinstance(stored, list) else f"a {type(stored).__name__}"
        what = f"it holds {found}, this grid has {len(expected)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(stored, expected)) if not same(a, b))
        what = f"cell {i} is {stored[i]} there, {expected[i]} in this grid"
    raise ValueError(f"run_grid(resume=True): checkpoint_dir {str(directory)!r} holds another grid's cells.json "
                     f"({what}); resume with the same axes, static axes and seeds, or use another checkpoint_dir")



def product_index(all_axes: Mapping[str, list], static: Sequence[str]) -> tuple[np.ndarray, dict[tuple, np.ndarray]]:
    """The cells of the product of ``all_axes`` and their static groups.

    Args:
      all_axes: axis name -> values, the seed axis last (innermost).
      static: the names of the static axes.

    Returns:
      ``(index, groups)``: ``index[i]`` holds cell ``i``'s position on every axis (C order, the last axis fastest);
      ``groups`` maps each combination of static positions (in first-seen order) to its cells' indices.
    """
    names = list(all_axes)
    index = np.indices([len(v) for v in all_axes.values()]).reshape(len(names), -1).T
    static_cols = [names.index(s) for s in static]
    groups: dict[tuple, np.ndarray] = {}
    for key in dict.fromkeys(map(tuple, index[:, static_cols].tolist())):
        groups[key] = np.flatnonzero(np.all(index[:, static_cols] == np.asarray(key, dtype=int), axis=1))
    return index, groups
