"""Training throughput of the real training step (``TBPSModule.compute_losses`` + backward +
optimizer) on synthetic inputs: samples/s, FLOPs per sample counted with
``torch.utils.flop_counter``, MFU against the device's bf16 peak, and peak memory."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from ..config import compose_experiment
from ..data.annotations import random_annotation
from ..data.tokenizer import CaptionTokenizer
from ..model.module import NEW_MODULES, TBPSModule
from ..model.optim import param_groups
from .common import peak_gib, peak_tflops, reset_peak, sync, timed

# IRRA's model: CLIP ViT-B/16 architecture at 384x128, 77-token captions, SDM + ID + MLM
# (4-layer cross-modal transformer, every caption of the batch reconstructed: the default
# experiment's quarter of the batch is a CPU economy), 11,003 identities (CUHK-PEDES).
IRRA_GPU = ["encoder=vit_b16", "data.image_size=[384,128]"]
IRRA_HEADS = ["heads.sdm.temperature=0.02", "heads.mlm.depth=4", "heads.mlm.num_heads=8",
              "heads.mlm.batch_share=1.0"]
TINY_CPU = ["data.image_size=[96,32]"]


TRAIN_PAIRS = 4096  # the stand-in training set's size, for heads with per-pair state


def synthetic_batch(batch_size: int, image_size, tok: CaptionTokenizer, num_classes: int,
                    device: torch.device, generator: torch.Generator,
                    annotations: tuple[str, ...] = ()) -> dict:
    """Random pixels, captions of 20-77 tokens with CLIP's layout, random identities, and
    stand-ins for the caption annotations the heads read."""
    ctx = tok.context_length
    lengths = torch.randint(18, ctx - 1, (batch_size,), generator=generator)
    ids = torch.randint(5, tok.vocab_size - 3, (batch_size, ctx), generator=generator)
    pos = torch.arange(ctx)
    ids = torch.where(pos <= lengths[:, None], ids, torch.full_like(ids, tok.pad_id))
    ids[:, 0] = tok.sos_id
    ids[torch.arange(batch_size), lengths] = tok.eos_id
    real = (pos > 0) & (pos < lengths[:, None])
    return {"image": torch.randn(batch_size, 3, *image_size, generator=generator).to(device),
            "caption_ids": ids.to(device),
            "pid": torch.randint(0, num_classes, (batch_size,), generator=generator).to(device),
            # which training pairs these are (RDE reads its division at them)
            "index": torch.randint(0, TRAIN_PAIRS, (batch_size,), generator=generator).to(device),
            **{name: random_annotation(name, ids, real, generator).to(device)
               for name in annotations}}


def build_module(overrides: list[str], num_classes: int, device: torch.device,
                 experiment: str = "synthetic") -> TBPSModule:
    cfg = compose_experiment(experiment, ["tokenizer.context_length=77", *overrides])
    tok = CaptionTokenizer.clip(context_length=77)
    module = TBPSModule(OmegaConf.to_container(cfg, resolve=True), tok.to_json(), num_classes,
                        TRAIN_PAIRS)
    return module.to(device).train()


def bench_train(device: torch.device, batch_size: int, steps: int, overrides: list[str],
                num_classes: int = 11003, precision: str = "bf16", compile: bool = False,
                peak: float | None = None, name: str = "", experiment: str = "synthetic",
                profile: bool = False) -> dict:
    # --compile takes the module's own path (compile: true), as `tbps train` would
    module = build_module([*overrides, f"compile={str(compile).lower()}"], num_classes, device,
                          experiment)
    image_size = tuple(module.cfg["data"]["image_size"])
    tok = module.tokenizer
    groups = param_groups(module, 1e-5, 4e-5, NEW_MODULES, 5.0, 2.0)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, fused=fused)
    g = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(batch_size, image_size, tok, num_classes, device, g,
                               module.caption_annotations) for _ in range(2)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def loss_of(batch: dict, n: int = 0) -> torch.Tensor:
        with autocast:  # progress past any warm-up ramp, as in the bulk of training
            return module.compute_losses(dict(batch), progress=1.0 + n * 1e-3)[0]

    counter = iter(range(10**9))

    def step() -> None:
        n = next(counter)
        loss = loss_of(batches[n % 2], n)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as flops:  # one eager step, forward + backward
        loss_of(batches[0]).backward()
    optimizer.zero_grad(set_to_none=True)
    flops_per_sample = flops.get_total_flops() / batch_size
    reset_peak(device)
    sync(device)
    seconds = timed(lambda: [step() for _ in range(steps)], device, repeats=1, warmup=1)
    samples_per_s = batch_size * steps / seconds
    peak = peak or peak_tflops(name)
    out = {"experiment": experiment, "batch_size": batch_size, "image_size": list(image_size),
           "context_length": 77,
           "heads": sorted(module.heads), "precision": precision, "compile": compile,
           "grad_checkpointing": bool(module.cfg["encoder"].get("grad_checkpointing", False)),
           "fused_optimizer": fused, "steps": steps, "samples_per_s": round(samples_per_s, 1),
           "gflop_per_sample": round(flops_per_sample / 1e9, 2),
           "mfu": round(flops_per_sample * samples_per_s / (peak * 1e12), 4) if peak else None,
           "peak_tflops_used": peak, "peak_memory_gib": round(peak_gib(device), 2),
           "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 1)}
    if profile:   # after the timing, which the profiler would slow
        from .profile import profile_steps

        out["profile"] = profile_steps(step, device)
    return out
