"""Checkpoints that survive a kill at any moment: Lightning's checkpoint I/O plug-in, writing
each file to a temporary name in the same folder, flushed to disk, then renamed over the old
one. A rename within a folder is atomic on POSIX file systems, so ``last.ckpt`` and
``best.ckpt`` are always either the previous complete file or the new complete file; a
killed write leaves only a ``.<name>.<pid>.tmp`` file behind, which ``resume`` clears."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_SUFFIX = ".tmp"


def partial_writes(folder: Path) -> list[Path]:
    """Temporary files of writes that never finished (the process died mid-write)."""
    return sorted(folder.glob(f".*.ckpt.*{TMP_SUFFIX}"))


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:  # make the rename itself durable
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
