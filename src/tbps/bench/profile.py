"""Where a training step's time goes, for ``tbps bench --only train --profile``: a few steps
under ``torch.profiler``, summarised as the step's wall time beside the time the device is
busy (on a GPU: its kernels' own time; a step far longer than that waits on the host
launching kernels), the kernel launches a step, and the operators that take the most."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.autograd import DeviceType

from .common import sync


@contextmanager
def kept_for_backward(module: torch.nn.Module) -> Iterator[dict[int, int]]:
    """The bytes of activations the forward passes inside the block keep for backward, as
    {storage address: bytes}: every tensor saved for backward, the module's parameters
    aside, each storage once. Inside an activation-checkpointed block checkpointing's own
    hooks take the saved tensors, so only what the blocks keep between them is counted."""
    params = {p.data_ptr() for p in module.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield kept


LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def profile_steps(step: Callable[[], None], device: torch.device, steps: int = 3,
                  top: int = 15) -> dict:
    """Runs ``step`` ``steps`` times under the profiler. Busy time: on a GPU the sum of its
    kernels' time (what the table of ``torch.profiler`` totals as self CUDA time), on the CPU
    the operators' own time (summed over threads, so it may exceed the wall time there)."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()

    def own_us(e) -> float:
        return e.self_device_time_total if gpu else e.self_cpu_time_total

    # on a GPU each kernel appears twice: as a device event, and inside the time of the
    # operator that launched it; the busy time adds the kernels, the ranking the operators
    kernels = [e for e in events if e.device_type == DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    ops = [e for e in events if e.device_type == DeviceType.CPU and own_us(e) > 0]
    busy = sum(own_us(e) for e in (kernels if gpu else ops))
    ranked = sorted(ops, key=own_us, reverse=True)
    return {"steps": steps, "wall_ms_per_step": round(wall * 1e3, 2),
            "busy_ms_per_step": round(busy / steps / 1e3, 2),
            "busy_on": "device" if gpu else "cpu operators",
            "kernel_launches_per_step": (round(sum(e.count for e in events if e.key in LAUNCHES)
                                               / steps) if gpu else None),
            "top": [{"op": e.key, "ms_per_step": round(own_us(e) / steps / 1e3, 3),
                     "calls_per_step": round(e.count / steps, 1)} for e in ranked[:top]]}
