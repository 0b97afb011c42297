"""Checkpoints of a training run that never lose the last good state.

A checkpoint is one file, ``checkpoint_{step:06d}.eqx``, written atomically (same-folder temp file, ``fsync``,
``os.replace``, folder ``fsync``), so a reader - or a run killed with SIGKILL halfway through a save - only ever
finds the previous complete version or the new one. The file is::

    b"OPTLABCK" | header length (8 bytes, little-endian) | SHA-256 of the header (32 bytes) | header | payload

The header is JSON: format, run id, step, loss at the saved parameters, counters, ``log_every``, the key's impl,
the leaf layout (path, shape, dtype) of each payload part, and the payload's byte count and SHA-256. The payload
is equinox leaf serialisation of, in order, the training state without its optimizer state, the trace rows so
far, and the optimizer state (last, so a run that switches optimizers can stop reading before it). Complex leaves
stay complex. One file instead of the old ``.eqx`` + ``.json`` pair because the pair cannot be replaced in one
atomic step (a kill between the two renames left a payload whose sidecar no longer matched, and the previous good
version was gone); orbax-checkpoint would also do it, but with a new dependency and a folder per checkpoint for
states of a few kilobytes.

This module is the one import path for both layers: the file format lives in :mod:`optlab.engine.checkpoint_file`
(encode / read / verify / load), continuing from a file in
:mod:`optlab.engine.checkpoint_resume`, and the folder in :mod:`optlab.engine.checkpoint_dir` (names, run ids,
locked writers, listing, best / latest).

The run-per-folder, lock and damaged-file rules are described once, in :mod:`optlab.engine.checkpoint_dir`.

Example:
  >>> # fit(loss, params, optax.adam(1e-3), steps=1000, checkpoint_every=100, checkpoint_dir="ckpt")
  >>> # fit(loss, params, optax.sgd(1e-2), steps=2000, resume_from=best_checkpoint("ckpt"))
"""

from optlab.engine.checkpoint_dir import (
    CheckpointWarning,
    best_checkpoint,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    new_run_id,
    save_checkpoint,
    start_run,
    write_checkpoint,
)
from optlab.engine.checkpoint_file import (
    FORMAT_VERSION,
    MAGIC,
    Checkpoint,
    CheckpointError,
    Leaves,
    TrainState,
    encode_checkpoint,
    leaf_specs,
    load_checkpoint,
    opt_state_matches,
    read_leaves,
    read_meta,
    verify_checkpoint,
)
from optlab.engine.checkpoint_resume import align_trace, resume

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointWarning",
    "Leaves",
    "TrainState",
    "align_trace",
    "best_checkpoint",
    "checkpoint_path",
    "encode_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "new_run_id",
    "opt_state_matches",
    "read_leaves",
    "read_meta",
    "resume",
    "save_checkpoint",
    "start_run",
    "verify_checkpoint",
    "write_checkpoint",
]
