"""Runs every benchmark for the device at hand and returns one JSON-able dict.

On a GPU: IRRA's configuration (ViT-B/16 CLIP architecture, 384x128, 77 tokens, SDM + ID +
MLM, batch 128, bf16 autocast, fused AdamW; ``compile`` adds torch.compile) and the three
evaluation sizes of the issue. Without a GPU: the same code at a small size (tiny encoder,
scaled-down evaluation), which the test suite runs.
"""

from __future__ import annotations

import os

import torch

from .common import device_name, peak_tflops, progress
from .encode import bench_encode
from .evaluation import bench_eval, bench_rescoring
from .loader import bench_loader
from .train_step import IRRA_GPU, IRRA_HEADS, TINY_CPU, bench_train, build_module

GPU_EVAL_SIZES = [(6156, 3074), (18468, 9222), (19848, 19848)]  # CUHK, 3x CUHK, ICFG
CPU_EVAL_SIZES = [(1539, 769), (2000, 1000)]
REAL_EVAL_SIZES = [(6156, 3074), (19848, 19848)]  # CUHK-PEDES and ICFG-PEDES test sets


def run_benchmarks(device: str = "auto", batch_size: int | None = None, steps: int | None = None,
                   compile: bool = False, peak: float | None = None,
                   loader_images: int | None = None, workers: int | None = None,
                   experiment: str = "synthetic", only: str | None = None,
                   search_sizes: list[int] | None = None, fit: str | None = None,
                   ckpt: str | None = None, serve_images: int = 10_000,
                   grad_checkpointing: bool = False, profile: bool = False) -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    gpu = dev.type == "cuda"
    name = device_name(dev)
    overrides = (IRRA_GPU + (IRRA_HEADS if experiment == "synthetic" else [])) if gpu else TINY_CPU
    overrides = [*overrides, f"encoder.grad_checkpointing={str(grad_checkpointing).lower()}"]
    batch_size = batch_size or (128 if gpu else 8)
    precision = "bf16" if gpu else "fp32"
    out = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda if gpu else None,
           "mode": "gpu" if gpu else "cpu-small"}
    if only == "data":
        from .data import bench_data

        out.update(mode="data", data=bench_data())
        return out
    if only == "serve":
        from .serve import bench_serve

        out.update(mode="serve", serve=bench_serve(ckpt, serve_images))
        return out
    if only == "search":
        from .search import GALLERY_SHAPE, SIZES, bench_search, fit_gallery_shape

        shape = GALLERY_SHAPE
        if fit:
            shape = fit_gallery_shape(fit)
            out["fitted_shape"] = shape
        out.update(mode="search", search=bench_search(search_sizes or SIZES, shape))
        return out
    if only == "eval":  # the evaluation at the real test-set sizes, on any device
        out["mode"] = "eval"
        progress("evaluation at CUHK-PEDES and ICFG-PEDES size, then ACSA's re-scoring "
                 "(several minutes on a CPU)")
        # medians of more repeats where one run takes milliseconds and noise dominates
        # on a GPU the three sizes (3x CUHK-PEDES too); a CPU takes minutes per size
        out["eval"] = [bench_eval(dev, q, g, repeats=9 if q * g < 5e7 else 3)
                       for q, g in (GPU_EVAL_SIZES if gpu else REAL_EVAL_SIZES)]
        # a re-scoring head (ACSA) at CUHK-PEDES size: its default top 100, and fewer
        q, g = REAL_EVAL_SIZES[0]
        out["rescoring"] = [bench_rescoring(dev, q, g, top_k=k, repeats=1 if not gpu else 3)
                            for k in (100, 30, 20, 10)]
        return out
    out["train"] = bench_train(dev, batch_size, steps or (20 if gpu else 3), overrides,
                               precision=precision, compile=compile, peak=peak or peak_tflops(name),
                               name=name, experiment=experiment, profile=profile)
    if only == "train":
        return out
    module = build_module(overrides, 11003, dev)
    out["encode"] = bench_encode(module, dev, 256 if gpu else 16, 10 if gpu else 2, precision)
    image_size = tuple(module.cfg["data"]["image_size"])
    del module
    out["loader"] = bench_loader(loader_images or (2000 if gpu else 48),
                                 workers if workers is not None else min(16, os.cpu_count() or 1),
                                 batch_size, image_size, epochs=2 if gpu else 1)
    out["loader"]["share_of_train_throughput"] = round(
        out["loader"]["images_per_s"] / out["train"]["samples_per_s"], 3)
    # IRRA's rank() beside ours at the first size only on a GPU: its Python loop over every
    # query takes most of a minute at the larger ones, which `--only eval` measures
    sizes = GPU_EVAL_SIZES if gpu else CPU_EVAL_SIZES
    out["eval"] = [bench_eval(dev, q, g, repeats=5 if gpu else 2, irra=not gpu or i == 0)
                   for i, (q, g) in enumerate(sizes)]
    return out
