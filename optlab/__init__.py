"""optlab: when does simple optimisation math stop working? Optax transformations, pure problems, vmapped grids."""

from optlab import ablation, diagnostics
from optlab.correction.greedy import CorrectionResult, correct_from_gram, greedy_correction
from optlab.engine.grid import GridResult, run_grid
from optlab.engine.loop import EarlyStop, FitResult, fit
from optlab.optimizers.hutchinson import newton_root_hutchinson
from optlab.optimizers.newton_root import NewtonRootState, newton_root, scale_by_newton_root
from optlab.optimizers.preconditioned import newton_root_adam

__version__ = "0.1.0"

__all__ = [
    "CorrectionResult",
    "EarlyStop",
    "FitResult",
    "GridResult",
    "NewtonRootState",
    "ablation",
    "correct_from_gram",
    "diagnostics",
    "fit",
    "greedy_correction",
    "newton_root",
    "newton_root_adam",
    "newton_root_hutchinson",
    "run_grid",
    "scale_by_newton_root",
]
