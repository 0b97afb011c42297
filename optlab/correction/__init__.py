"""Correction of pruned linear layers: the greedy fixed-magnitude rule, pruning masks, and reconstructions.

- :mod:`optlab.correction.greedy`: :func:`greedy_correction`, :func:`correct_from_gram` (one ``lax.scan``),
  :func:`format_trace` (the note's debug lines, printed by the caller).
- :mod:`optlab.correction.pruning`: magnitude, Wanda-style and N:M (2:4, 4:8) masks with exact counts.
- :mod:`optlab.correction.network`: a whole MLP pruned and corrected layer by layer (``prune_network``).
- :mod:`optlab.correction.reconstruct`: exact masked least squares (the ceiling), SparseGPT-style and ADMM updates.
"""

from optlab.correction.greedy import (
    CorrectionResult,
    CorrectionTrace,
    GramStats,
    correct_from_gram,
    format_trace,
    gram_stats,
    greedy_correction,
)
from optlab.correction.pruning import lowest_mask, magnitude_mask, nm_mask, prune, wanda_mask
from optlab.correction.reconstruct import admm_update, masked_least_squares, reconstructions, sparsegpt_update

__all__ = [
    "CorrectionResult",
    "CorrectionTrace",
    "GramStats",
    "admm_update",
    "correct_from_gram",
    "format_trace",
    "gram_stats",
    "greedy_correction",
    "lowest_mask",
    "magnitude_mask",
    "masked_least_squares",
    "nm_mask",
    "prune",
    "reconstructions",
    "sparsegpt_update",
    "wanda_mask",
]
