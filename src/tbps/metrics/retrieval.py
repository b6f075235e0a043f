"""Text-to-image retrieval metrics as the field reports them (docs/protocol.md §3).

Every caption is a query against all gallery images, ranked by cosine similarity; a match
is an image of the same person. R@K is the share of queries with a match in the top K,
mAP averages each query's AP over all its matches, mINP averages #matches / rank of the
hardest match. All are in percent; rSum = R@1 + R@5 + R@10. Queries are scored in chunks,
so memory is O(chunk x gallery) and the result is exact (the sums are additive over queries).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def rank_gallery(sim: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarities [Q, G] -> (gallery order [Q, G] best first, match [Q, G] as float64 in
    that order, AP [Q]); the ranking every metric and every per-query view is built on."""
    order = sim.argsort(dim=1, descending=True, stable=True)
    match = (gallery_pids[order] == query_pids[:, None]).double()
    rank = torch.arange(1, sim.shape[1] + 1, device=sim.device, dtype=torch.float64)
    ap = (match.cumsum(dim=1) / rank * match).sum(1) / match.sum(1).clamp(min=1)
    return order, match, ap


def retrieval_metrics(query: torch.Tensor, query_pids: torch.Tensor, gallery: torch.Tensor,
                      gallery_pids: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                      chunk: int = 1024) -> dict[str, float]:
    """query [Q, D], gallery [G, D] features (any norm), pids [Q] and [G] -> metric dict."""
    query, gallery = F.normalize(query.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    n_rel = (query_pids[:, None] == gallery_pids[None, :]).sum(1)
    if (n_rel == 0).any():
        raise ValueError(f"{int((n_rel == 0).sum())} of {len(query_pids)} queries have no image "
                         "of their person in the gallery; every query needs at least one match")
    # Per-query values are kept and summed once at the end, so the result does not depend
    # on the chunk size (not even in the last bit), and nothing syncs with the host per chunk.
    hit_rows, ap_rows, inp_rows = [], [], []
    rank = torch.arange(1, gallery.shape[0] + 1, device=gallery.device, dtype=torch.float64)
    for s in range(0, query.shape[0], chunk):
        _, match, ap = rank_gallery(query[s:s + chunk] @ gallery.t(), query_pids[s:s + chunk],
                                    gallery_pids)
        cum = match.cumsum(dim=1)
        hit_rows.append(torch.stack([cum[:, min(k, cum.shape[1]) - 1] > 0 for k in ks], 1))
        rel = n_rel[s:s + chunk].double()
        ap_rows.append(ap)
        last = (match * rank).max(dim=1).values  # rank of the hardest match
        inp_rows.append(rel / last)
    n = query.shape[0]
    hits = torch.cat(hit_rows).double().sum(0).tolist()
    out = {f"R{k}": 100.0 * hits[j] / n for j, k in enumerate(ks)}
    out["mAP"] = 100.0 * torch.cat(ap_rows).sum().item() / n
    out["mINP"] = 100.0 * torch.cat(inp_rows).sum().item() / n
    out["rSum"] = sum(out[f"R{k}"] for k in ks)
    return out


class TextToImageRetrieval(Metric):
    """Accumulates gallery and query features (gathered across processes) and ranks once.

    ``update(features, pids, is_query)``: image features with ``is_query=False``, caption
    features with ``is_query=True``.
    """

    full_state_update = False

    def __init__(self, chunk: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        for name in ("query_feats", "query_pids", "gallery_feats", "gallery_pids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, pids: torch.Tensor, is_query: bool) -> None:
        prefix = "query" if is_query else "gallery"
        getattr(self, f"{prefix}_feats").append(features.detach().float())
        getattr(self, f"{prefix}_pids").append(pids.detach())

    def compute(self) -> dict[str, float]:
        return retrieval_metrics(dim_zero_cat(self.query_feats), dim_zero_cat(self.query_pids),
                                 dim_zero_cat(self.gallery_feats), dim_zero_cat(self.gallery_pids),
                                 chunk=self.chunk)
