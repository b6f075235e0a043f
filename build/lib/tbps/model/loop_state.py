"""Resuming from a checkpoint written at the end of an epoch.

``last.ckpt`` is written in ``on_train_epoch_end``, when Lightning (2.6) has counted the
epoch as processed but not yet as completed. Restored as it is, the fit loop runs that
epoch again with all its batches already done: an empty "phantom" epoch that trains
nothing, validates nothing, and still counts against ``max_epochs``, so extending a
finished run (``resume=true trainer.max_epochs=N+1``) trained nothing. The epoch did
finish, so the loop state is marked so before Lightning reads it, and the next epoch
starts at its first batch.
"""

from __future__ import annotations


def finish_saved_epoch(checkpoint: dict) -> bool:
    """Marks a checkpoint's last epoch completed when all its batches were; True if it did."""
    fit = (checkpoint.get("loops") or {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit:
        return False
    epochs, batches = fit["epoch_progress"], fit.get("epoch_loop.batch_progress", {})
    if not batches.get("is_last_batch") or (
            epochs["current"]["processed"] <= epochs["current"]["completed"]):
        return False  # written mid-epoch, or after the epoch was counted: Lightning resumes it
    for part in ("total", "current"):
        epochs[part]["completed"] = epochs[part]["processed"]
    batches["current"] = {k: 0 for k in batches["current"]}
    batches["is_last_batch"] = False
    return True
