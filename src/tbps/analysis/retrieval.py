"""Per-query retrieval results: the ranked gallery, R@1 and AP of every query (the same
definitions as ``tbps.metrics``; their means are the reported R@1 and mAP)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .features import EncodedSplit


@dataclass
class PerQuery:
    topk: torch.Tensor        # [Q, k] gallery indices, best first
    topk_match: torch.Tensor  # [Q, k] bool: same person as the query
    first_match: torch.Tensor  # [Q] 1-based rank of the first match
    r1: torch.Tensor          # [Q] bool
    ap: torch.Tensor          # [Q] average precision, 0..1


def per_query(split: EncodedSplit, k: int = 10) -> PerQuery:
    sim = split.queries @ split.gallery.t()
    order = sim.argsort(dim=1, descending=True, stable=True)
    match = split.gallery_pids[order] == split.query_pids[:, None]
    cum = match.double().cumsum(1)
    rank = torch.arange(1, match.shape[1] + 1, dtype=torch.float64)
    ap = (cum / rank * match).sum(1) / match.sum(1).clamp(min=1)
    first = match.int().argmax(1) + 1
    return PerQuery(order[:, :k], match[:, :k], first, match[:, 0], ap)
