"""Small pure problems: ``init(key) -> params``, ``loss(params, batch) -> scalar``, ``data``, ``metrics``.

:data:`SMALL` lists the five problems of lab note 001 by name.
"""

from optlab.problems.base import Problem
from optlab.problems.linear_regression import linear_regression
from optlab.problems.quadratic import quadratic_1d, quadratic_2d
from optlab.problems.small import SMALL
from optlab.problems.square_mlp import SquareMLP, square_mlp

__all__ = ["SMALL", "Problem", "SquareMLP", "linear_regression", "quadratic_1d", "quadratic_2d", "square_mlp"]
