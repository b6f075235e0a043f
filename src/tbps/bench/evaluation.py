"""Ranking and all metrics for test sets of given sizes, timed, and checked identical to the
unchunked computation (one chunk holding every query)."""

from __future__ import annotations

import torch

from ..metrics.retrieval import retrieval_metrics
from .common import reset_peak, sync, timed


def synthetic_features(n_query: int, n_gallery: int, dim: int, device: torch.device,
                       seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Galleries of about 3 images per identity with 2 captions per image (CUHK-PEDES-like),
    features correlated with their identity so that rankings are not random."""
    g = torch.Generator().manual_seed(seed)
    ids = max(1, n_gallery // 3)
    centres = torch.randn(ids, dim, generator=g)
    g_pid = torch.arange(n_gallery) % ids
    q_pid = g_pid[torch.arange(n_query) % n_gallery]
    gallery = centres[g_pid] + 3.0 * torch.randn(n_gallery, dim, generator=g)
    query = centres[q_pid] + 3.0 * torch.randn(n_query, dim, generator=g)
    return (query.to(device), q_pid.to(device), gallery.to(device), g_pid.to(device))


def bench_eval(device: torch.device, n_query: int, n_gallery: int, dim: int = 512,
               repeats: int = 5, chunk: int = 1024) -> dict:
    q, qp, g, gp = synthetic_features(n_query, n_gallery, dim, device)
    reset_peak(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    seconds = timed(lambda: retrieval_metrics(q, qp, g, gp, chunk=chunk), device, repeats)
    extra = ((torch.cuda.max_memory_allocated(device) - base) / 2**30
             if device.type == "cuda" else None)
    chunked = retrieval_metrics(q, qp, g, gp, chunk=chunk)
    whole = retrieval_metrics(q, qp, g, gp, chunk=n_query)
    sync(device)
    return {"queries": n_query, "gallery": n_gallery, "ms": round(seconds * 1e3, 2),
            "extra_memory_gib": round(extra, 3) if extra is not None else None,
            "identical_to_unchunked": chunked == whole,
            "R1": round(chunked["R1"], 2), "mAP": round(chunked["mAP"], 2)}
