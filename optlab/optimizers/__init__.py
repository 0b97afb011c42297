"""Optax GradientTransformations only: no training loops here."""

from optlab.optimizers.grouping import SCALINGS, group_ids, group_sq_norms
from optlab.optimizers.guards import skip_non_finite
from optlab.optimizers.newton_root import NewtonRootState, newton_root, scale_by_newton_root
from optlab.optimizers.hutchinson import (
    NewtonRootHutchinsonState,
    hutchinson_diagonal,
    newton_root_hutchinson,
    scale_by_newton_root_hutchinson,
)
from optlab.optimizers.preconditioned import NewtonRootAdamState, newton_root_adam, scale_by_newton_root_adam

__all__ = [
    "SCALINGS",
    "NewtonRootAdamState",
    "NewtonRootHutchinsonState",
    "NewtonRootState",
    "group_ids",
    "group_sq_norms",
    "hutchinson_diagonal",
    "newton_root",
    "newton_root_adam",
    "newton_root_hutchinson",
    "scale_by_newton_root",
    "scale_by_newton_root_adam",
    "scale_by_newton_root_hutchinson",
    "skip_non_finite",
]
