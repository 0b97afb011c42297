"""The engine: one pure training loop (fit), mixed precision, schedules, checkpoints, and grids of runs."""

from optlab.engine.cell_checkpoints import cell_dir
from optlab.engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    TrainState,
    best_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from optlab.engine.grid import GridResult, run_grid
from optlab.engine.loop import EarlyStop, FitResult, fit
from optlab.engine.precision import DynamicLossScale, LossScaleState, ulp_ratio
from optlab.engine.schedules import constant, cosine, make_schedule, step_decay, warmup_cosine, wsd
from optlab.engine.state import load_state, start_state

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DynamicLossScale",
    "EarlyStop",
    "FitResult",
    "GridResult",
    "LossScaleState",
    "TrainState",
    "best_checkpoint",
    "cell_dir",
    "constant",
    "cosine",
    "fit",
    "list_checkpoints",
    "load_state",
    "load_checkpoint",
    "make_schedule",
    "run_grid",
    "save_checkpoint",
    "start_state",
    "step_decay",
    "ulp_ratio",
    "warmup_cosine",
    "wsd",
]
