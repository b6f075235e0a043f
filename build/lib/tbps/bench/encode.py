"""Gallery encoding throughput: images/s through the image tower in inference mode."""

from __future__ import annotations

import torch

from .common import timed


def bench_encode(module, device: torch.device, batch_size: int, batches: int,
                 precision: str = "bf16") -> dict:
    image_size = tuple(module.cfg["data"]["image_size"])
    images = torch.randn(batch_size, 3, *image_size, device=device)
    module.eval()

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            for _ in range(batches):
                module.embed_images(images)

    seconds = timed(run, device, repeats=1, warmup=1)
    return {"batch_size": batch_size, "images_per_s": round(batch_size * batches / seconds, 1)}
