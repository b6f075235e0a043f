"""Timing helpers shared by the benchmarks: device synchronisation and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import torch

# Dense bf16 peak of the GPUs we know, in TFLOP/s (vendor figures); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "RTX 4090": 165.0}


def progress(line: str) -> None:
    """What the benchmark is doing, on stderr as it happens (stdout carries the JSON): a
    long part should never look like a hang."""
    print(f"bench: {line}", file=sys.stderr, flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from ..machine import processor_name

    return f"cpu ({processor_name()}, {torch.get_num_threads()} threads)"


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or on the CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
