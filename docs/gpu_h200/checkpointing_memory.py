"""Activations IRRA's model (ViT-B/16 at 384x128, SDM + ID + MLM as `tbps bench` builds it
for a GPU) keeps for the backward pass, per sample, without and with
``encoder.grad_checkpointing``, and the step's time, on whatever device runs it (the CPU
by default: `python docs/gpu_h200/checkpointing_memory.py`, about 2 minutes on 2 cores).
Counted with ``tbps.bench.profile.kept_for_backward`` (saved-tensor hooks)."""

import sys
import time

import torch

from tbps.bench.profile import kept_for_backward
from tbps.bench.train_step import IRRA_GPU, IRRA_HEADS, build_module, synthetic_batch

device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
batch_size = 4


def measure(checkpointing: bool) -> None:
    torch.manual_seed(0)
    module = build_module([*IRRA_GPU, *IRRA_HEADS,
                           f"encoder.grad_checkpointing={str(checkpointing).lower()}"], 11003, device)
    batch = synthetic_batch(batch_size, (384, 128), module.tokenizer, 11003, device,
                            torch.Generator().manual_seed(0), module.caption_annotations)
    times = []
    for _ in range(3):   # the first a warm-up
        torch.manual_seed(1)
        start = time.perf_counter()
        with kept_for_backward(module) as kept, torch.autocast(device.type, dtype=torch.bfloat16):
            loss = module.compute_losses(dict(batch), progress=1.0)[0]
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        module.zero_grad(set_to_none=True)
    print(f"grad_checkpointing={checkpointing}: {sum(kept.values()) / batch_size / 2**20:.1f} MiB "
          f"kept per sample, step {min(times[1:]):.2f} s at batch {batch_size} on {device}, "
          f"loss {float(loss):.5f}", flush=True)


for checkpointing in (False, True):
    measure(checkpointing)
