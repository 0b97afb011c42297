"""The five small problems of lab note 001, by name, for comparing optimizers over a grid of seeds.

``SMALL[name]`` builds the problem when it is looked up (nothing is computed at import), so it can be called
inside a grid cell. Every problem's ``init`` uses its key (16 seeds are 16 different starts) and ``init(None)``
returns the note's exact start: ``x0 = 10`` for the parabola, ``(10, 10)`` for the 2-D quadratics, ``key(0)``'s
draw for the two models.

============================== ======================================================================
name                           problem
============================== ======================================================================
``quadratic_1d``               ``(x - 3)²`` from ``x0 = 10`` (experiment 1)
``quadratic_2d_symmetric``     ``(x - 1)² + (y - 2)²`` from ``(10, 10)`` (experiment 2)
``quadratic_2d_asymmetric``    ``(x - 1)² + 100 (y - 2)²`` from ``(10, 10)`` (experiment 3)
``linear_regression``          ``y = 2x + 1`` on 1000 points, one ``eqx.nn.Linear(1, 1)`` (experiment 4)
``square_mlp``                 a ``1 → 8 → 8 → 1`` MLP with ``z ↦ z²`` fitting ``sin x`` (experiment 5)
============================== ======================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from optlab.problems.base import Problem
from optlab.problems.linear_regression import linear_regression
from optlab.problems.quadratic import quadratic_1d, quadratic_2d
from optlab.problems.square_mlp import square_mlp

_FACTORIES: dict[str, Callable[[], Problem]] = {
    "quadratic_1d": lambda: quadratic_1d(3.0, x0=10.0),
    "quadratic_2d_symmetric": lambda: quadratic_2d(1.0, 2.0, 1.0, start=(10.0, 10.0)),
    "quadratic_2d_asymmetric": lambda: quadratic_2d(1.0, 2.0, 100.0, start=(10.0, 10.0)),
    "linear_regression": lambda: linear_regression(n=1000),
    "square_mlp": lambda: square_mlp(),
}


class SmallProblems(Mapping):
    """A read-only mapping ``name -> Problem`` that builds each problem on lookup (named after its key).

    Example:
        >>> from optlab.problems import SMALL
        >>> list(SMALL)
        ['quadratic_1d', 'quadratic_2d_symmetric', 'quadratic_2d_asymmetric', 'linear_regression', 'square_mlp']
        >>> problem = SMALL["quadratic_1d"]
        >>> float(problem.value(problem.init(None)))
        49.0
    """

    def __getitem__(self, name: str) -> Problem:
        if name not in _FACTORIES:
            raise KeyError(f"no small problem {name!r}; choose one of {list(_FACTORIES)}")
        return _FACTORIES[name]()._replace(name=name)

    def __iter__(self) -> Iterator[str]:
        return iter(_FACTORIES)

    def __len__(self) -> int:
        return len(_FACTORIES)

    def __repr__(self) -> str:
        return f"SMALL({', '.join(_FACTORIES)})"


SMALL = SmallProblems()
