"""Exact Shapley weights over the 2^k coalitions of a full factorial (the combinatorics of :mod:`optlab.ablation`).

Coalition ``S`` is the bit mask of the switches that are changed; both matrices act on the vector of the 2^k
coalition values in mask order, so an attribution is one matrix product.
"""

from __future__ import annotations

import functools
import math

import numpy as np


def _popcount(masks: np.ndarray) -> np.ndarray:
    return np.array([bin(int(m)).count("1") for m in masks], dtype=int)


@functools.lru_cache(maxsize=32)
def shapley_matrix(k: int) -> np.ndarray:
    """``(k, 2^k)`` weights ``M`` with ``φ = M @ v``: φ_i = Σ_{S∌i} |S|!(k−|S|−1)!/k! (v(S∪{i}) − v(S))."""
    masks = np.arange(2**k)
    size = _popcount(masks)
    weights = np.array([math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k) for s in range(k)])
    matrix = np.zeros((k, 2**k))
    for i in range(k):
        without = masks[(masks >> i) & 1 == 0]
        np.add.at(matrix[i], without | (1 << i), weights[size[without]])
        np.add.at(matrix[i], without, -weights[size[without]])
    matrix.flags.writeable = False  # cached and shared between calls
    return matrix


def interaction_matrix(k: int, i: int, j: int) -> np.ndarray:
    """Weights of the Shapley interaction index of i ≠ j over the 2^k coalition values."""
    masks = np.arange(2**k)
    rest = masks[((masks >> i) & 1 == 0) & ((masks >> j) & 1 == 0)]
    size = _popcount(rest)
    weights = np.array([math.factorial(s) * math.factorial(k - s - 2) / math.factorial(k - 1) for s in range(k - 1)])
    row = np.zeros(2**k)
    w = weights[size]
    for sign, add in ((1, (1 << i) | (1 << j)), (-1, 1 << i), (-1, 1 << j), (1, 0)):
        np.add.at(row, rest | add, sign * w)
    return row
