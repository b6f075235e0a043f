"""What a run was trained on, kept in its folder as ``machine.json``.

The same seed and config can train several points apart on two kinds of processor (their
floating-point kernels round differently, and training amplifies the difference: UCFA's
seed 1 reached test R@1 27.8 on an Intel Xeon and 33.9 on an AMD EPYC, docs/results.md),
so a figure means little without its machine, and a table that averages runs from
different machines should say so. Each start of a run (the
first and every resume) appends one entry; `tbps report` reads them.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime
from pathlib import Path

import torch

from .errors import ConfigError

FILE = "machine.json"


def processor_name() -> str:
    """The processor's model name as the kernel reports it ("AMD EPYC", "Intel(R) Xeon(R)
    ..."): ``platform.processor()`` is empty on most Linux machines."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: what the platform module knows
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(accelerator: str = "cpu", devices: int = 1) -> dict[str, object]:
    """One start's machine: the processor, the threads torch uses, and the GPU when the run
    trains on one. ``label`` is the short form the report prints."""
    gpu = torch.cuda.get_device_name(0) if accelerator == "cuda" else None
    threads, processor = torch.get_num_threads(), processor_name()
    label = (f"{gpu} ×{devices}" if devices > 1 else gpu) if gpu else \
        f"{processor}, {threads} thread{'s' if threads != 1 else ''}"
    return {"label": label, "processor": processor, "cpu_count": os.cpu_count(),
            "threads": threads, "gpu": gpu, "devices": devices, "torch": torch.__version__,
            "python": platform.python_version(),
            "started": datetime.now().isoformat(timespec="seconds")}


def record_start(run_dir: Path, accelerator: str = "cpu", devices: int = 1) -> None:
    """Appends this start's machine to ``run_dir/machine.json`` (a list, oldest first)."""
    entries = [*read(run_dir), describe(accelerator, devices)]
    (Path(run_dir) / FILE).write_text(json.dumps(entries, indent=1) + "\n")


def read(run_dir: Path) -> list[dict[str, object]]:
    """The run's starts; empty for runs written before machines were recorded."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except ValueError as exc:
        entries = exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path} is not a list of machine entries as `tbps train` writes "
                          f"them ({entries if isinstance(entries, Exception) else 'wrong shape'});"
                          " delete it, and the run's machine reads as unrecorded")
    return entries


def labels(run_dir: Path) -> list[str]:
    """The distinct machines a run trained on, in order ("AMD EPYC, 1 thread")."""
    return list(dict.fromkeys(str(e.get("label", "?")) for e in read(run_dir)))
