"""How many cells one vmapped program carries: ``run_grid(chunk_size="auto")``, a cost model from XLA's cost analysis.

A grid of ``n`` cells runs as chunks of ``width`` cells, one compiled ``jit(vmap(cell))`` program reused for every
chunk. Wide chunks amortise the per-op cost of a step (dispatching each fused op of the scan body, once per step
whatever the width), which is what tiny problems pay for: wider is faster as long as a step's data stays in cache.
Once the step's working set (every buffer the body reads and writes, for all the chunk's cells) outgrows the cache
the body streams from memory and a wider chunk is slower per cell. So the model is:

.. math::

    \\mathrm{width} = \\min\\Bigl(n,\\; 256,\\; \\max\\bigl(16,\\; 2^{\\lfloor \\log_2 (C / b) \\rfloor}\\bigr)\\Bigr)
    \\quad (n \\text{ itself when } n \\le 256 \\text{ and } n b \\le C)

with ``b`` the bytes one cell's step accesses (``bytes accessed`` of XLA's HLO cost analysis of the lowered
program less its outputs, per cell; a ``while`` body is counted once, i.e. one step) and ``C`` the cache budget
(:func:`cache_budget`: half the last-level cache), clamped to [16, 256] (:data:`MIN_WIDTH`, :data:`MAX_WIDTH`:
measured bounds, see there). The cost
analysis comes from ``jax.jit(...).lower(...).cost_analysis()``: no compilation, one trace that the run reuses.
Why not a calibration run: it needs a shorter run of the user's ``fn`` (its step count is inside ``fn``), and
timings on a shared machine are noisy; the byte count is deterministic. ``benchmarks/bench_grid.py --only sweep``
measures the width sweep that checks the model (the note of issue 13 has the table).

Chunks run in run_grid's own host loop rather than ``lax.map(..., batch_size=width)``: the loop keeps at most two
chunks on the device and copies finished ones to the host while the next runs, checks Ctrl-C between chunks,
advances the progress bar, pads only the last chunk and shards each chunk over a mesh; ``lax.map`` would make the
whole group one program (all outputs on the device at once, no point to stop at, a compile per group size).

Example:
  >>> auto_width(bytes_per_cell=1e5, n_cells=1024, budget=16 * 2**20), auto_width(1e7, 1024, 16 * 2**20)
  (128, 16)
  >>> auto_width(bytes_per_cell=10.0, n_cells=300, budget=16 * 2**20), auto_width(10.0, 40, 16 * 2**20)
  (256, 40)
"""

from __future__ import annotations

import functools
import math
import os
import weakref
from collections.abc import Callable
from typing import Any

import jax

from optlab.engine import fn_cache as _fn_cache

# Below this many cells a group runs as one chunk without a cost analysis: at these widths no step outgrows a cache,
# and small grids (tests, notebooks) pay no extra trace.
SMALL_GRID = 64
# The narrowest chosen width. The byte count is of the HLO before fusion, which overstates a compute-bound step's
# working set (the 1->64->64->1 MLP: 8.9 MB a cell before fusion, 2.2 MB after), and below ~16 cells a chunk pays
# every op's dispatch per few cells: in the sweep of benchmarks/bench_grid.py width 16 was the best or near it in
# all three regimes, widths 1-4 up to 47x slower on the tiny ones.
MIN_WIDTH = 16
# The widest chosen width. Beyond 256 cells no regime of the sweep got faster per cell (the per-op dispatch is
# amortised by then) and the tiny linear regression got 1.15-1.5x slower at 1024 although its step fits the
# cache; a wider program also holds more memory, pads more in its last chunk and gives Ctrl-C fewer stops.
MAX_WIDTH = 256
_DEFAULT_LLC = 32 * 2**20  # a last-level cache size where the OS does not report one


@functools.cache
def cache_budget() -> int:
    """Bytes a chunk's step may touch: half the largest CPU cache the OS reports (Linux sysfs), else 16 MiB.

    Half, because a step reads and writes its buffers. ``OPTLAB_CHUNK_BUDGET`` (bytes) overrides it, e.g. for an
    accelerator, where the budget is device memory.

    Returns:
      The budget in bytes.
    """
    if os.environ.get("OPTLAB_CHUNK_BUDGET"):
        return int(float(os.environ["OPTLAB_CHUNK_BUDGET"]))
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1))
    return max(sizes, default=_DEFAULT_LLC) // 2


def auto_width(bytes_per_cell: float, n_cells: int, budget: int) -> int:
    """The chunk width for ``n_cells`` cells whose step touches ``bytes_per_cell`` bytes each.

    Args:
      bytes_per_cell: bytes one cell's step accesses (> 0).
      n_cells: cells in the group (>= 1).
      budget: the cache budget in bytes.

    Returns:
      ``n_cells`` when they fit the budget and :data:`MAX_WIDTH`; else the largest power of two whose working
      set fits, clamped to [:data:`MIN_WIDTH`, :data:`MAX_WIDTH`], at most ``n_cells``.
    """
    if n_cells <= MAX_WIDTH and n_cells * bytes_per_cell <= budget:
        return n_cells  # one chunk, no padding
    fits = max(budget / max(bytes_per_cell, 1.0), 1.0)
    return min(n_cells, MAX_WIDTH, max(MIN_WIDTH, 1 << int(math.floor(math.log2(fits)))))


# fn -> {(static values, axis names, cells, devices): the width chosen}; weak keys let a grid's fn be collected
_WIDTHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_width(fn: Callable, key: Any, choose: Callable[[], int]) -> int:
    """``choose()``, kept per ``(fn, key)`` while ``fn`` lives (None ``key``, or a ``fn`` without weak references:
    not kept), so a grid re-run with the same function pays no second cost analysis.

    Args:
      fn: the grid's cell function.
      key: hashable, what else selects the program; None: do not cache.
      choose: computes the width.

    Returns:
      The width.
    """
    return _fn_cache.per_fn(_WIDTHS, fn, key, choose)


def bytes_per_cell(lower: Callable[[int], Any], width: int) -> float | None:
    """Bytes one cell's step accesses, from XLA's cost analysis of the program lowered at ``width`` cells.

    Args:
      lower: ``lower(width) -> jax.stages.Lowered`` of the grid program for ``width`` cells.
      width: the width to analyse (the group's size: the run reuses that trace when it runs one chunk).

    Returns:
      Bytes per cell, or None where the backend gives no cost analysis.
    """
    lowered = lower(width)
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    accessed = (analysis or {}).get("bytes accessed")
    if not accessed:
        return None
    # The outputs (a trace row per step: the loss of 3000 steps is 12 kB a cell) are written once, a row per step:
    # not part of a step's working set, and counting them would make the width depend on the run's length.
    written = sum(math.prod(o.shape) * o.dtype.itemsize for o in jax.tree.leaves(lowered.out_info))
    return max(float(accessed) - written, float(accessed) / 100) / width


__all__ = ["MAX_WIDTH", "MIN_WIDTH", "SMALL_GRID", "auto_width", "bytes_per_cell", "cache_budget", "cached_width"]
