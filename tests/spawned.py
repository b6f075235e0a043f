"""How a process that a test started with ``torch.multiprocessing.spawn`` ends."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def leave() -> None:
    """Destroy the process group and leave at once, skipping the interpreter's teardown.
    Why: gloo's background threads can abort a normal exit ("terminate called without an
    active exception", SIGABRT; once in CI on 2026-12-03, in tests/test_ucfa.py), which
    fails a test whose results the process has already written. Call it last, after the
    results are saved; an exception before it still reaches ``spawn`` as a failure."""
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
