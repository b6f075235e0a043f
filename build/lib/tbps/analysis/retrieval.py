"""Per-query retrieval results: the ranked gallery, R@1 and AP of every query (the same
definitions as ``tbps.metrics``; their means are the reported R@1 and mAP)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..metrics.retrieval import rank_gallery
from .features import EncodedSplit


@dataclass
class PerQuery:
    topk: torch.Tensor        # [Q, k] gallery indices, best first
    topk_match: torch.Tensor  # [Q, k] bool: same person as the query
    first_match: torch.Tensor  # [Q] 1-based rank of the first match
    r1: torch.Tensor          # [Q] bool
    ap: torch.Tensor          # [Q] average precision, 0..1


def per_query(split: EncodedSplit, k: int = 10) -> PerQuery:
    order, match, ap = rank_gallery(split.queries @ split.gallery.t(), split.query_pids,
                                    split.gallery_pids)
    match = match.bool()
    first = match.int().argmax(1) + 1
    return PerQuery(order[:, :k], match[:, :k], first, match[:, 0], ap)
