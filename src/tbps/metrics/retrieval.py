"""Text-to-image retrieval metrics as the field reports them (docs/protocol.md §3).

Every caption is a query against all gallery images, ranked by cosine similarity; a match
is an image of the same person. R@K is the share of queries with a match in the top K,
mAP averages each query's AP over all its matches, mINP averages #matches / rank of the
hardest match. All are in percent; rSum = R@1 + R@5 + R@10. Queries are scored in chunks,
so memory is O(chunk x gallery) and the result is exact (the sums are additive over queries);
no row is sorted: each match's rank is counted (``match_ranks``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def rank_gallery(sim: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarities [Q, G] -> (gallery order [Q, G] best first, match [Q, G] as float64 in
    that order, AP [Q]): the full ordering, for views that show it (the notebooks' top-k and
    per-query AP). The metrics do not sort; their ranks equal this stable order's."""
    order = sim.argsort(dim=1, descending=True, stable=True)
    match = (gallery_pids[order] == query_pids[:, None]).double()
    rank = torch.arange(1, sim.shape[1] + 1, device=sim.device, dtype=torch.float64)
    ap = (match.cumsum(dim=1) / rank * match).sum(1) / match.sum(1).clamp(min=1)
    return order, match, ap


def match_columns(query_pids: torch.Tensor, gallery_pids: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gallery columns of each query's matches, in gallery order: cols [Q, m] (padded
    rows repeat a column) and valid [Q, m], m = the most matches any query has. Built from
    the gallery sorted by pid, never from a [Q, G] comparison."""
    order = torch.argsort(gallery_pids, stable=True)
    sorted_pids = gallery_pids[order]
    first = torch.searchsorted(sorted_pids, query_pids, side="left")
    n_rel = torch.searchsorted(sorted_pids, query_pids, side="right") - first
    if (n_rel == 0).any():
        raise ValueError(f"{int((n_rel == 0).sum())} of {len(query_pids)} queries have no image "
                         "of their person in the gallery; every query needs at least one match")
    step = torch.arange(int(n_rel.max()), device=query_pids.device)
    valid = step[None, :] < n_rel[:, None]
    cols = order[(first[:, None] + step[None, :]).clamp(max=len(gallery_pids) - 1)]
    return cols, valid


def match_ranks(sim: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The 1-based rank of every match in its query's row under a stable descending sort,
    without sorting: rank = 1 + #{scores > its score} + #{equal scores at lower gallery
    index}. sim [c, G], cols / valid [c, m] -> ranks [c, m] float64, ascending, +inf pads."""
    return ascending(match_ranks_unsorted(sim, cols, valid), valid)


def ascending(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each row's match ranks [c, m] sorted ascending, +inf at the pads."""
    return ranks.masked_fill(~valid, float("inf")).sort(dim=1).values


def match_ranks_unsorted(sim: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor
                         ) -> torch.Tensor:
    """``match_ranks`` in the order of ``cols`` (pads hold any value).

    Two passes over the row per match (> and ==), each counted through a float buffer (much
    faster than summing a bool tensor; exact while G < 2**24). Rows where another image has
    exactly a match's score are rare and corrected one by one."""
    if sim.shape[1] >= 2**24:
        raise ValueError("galleries of 2**24 images or more are not supported")
    t = sim.gather(1, cols)
    buf = torch.empty_like(sim)
    greater, equal = torch.empty_like(t), torch.empty_like(t)
    for i in range(t.shape[1]):
        greater[:, i] = torch.gt(sim, t[:, i:i + 1], out=buf).sum(1)
        equal[:, i] = torch.eq(sim, t[:, i:i + 1], out=buf).sum(1)
    rank = greater.double() + 1
    tied = (equal > 1) & valid
    if tied.any():
        rows, i = tied.nonzero().unbind(1)
        before = torch.arange(sim.shape[1], device=sim.device)[None, :] < cols[rows, i][:, None]
        rank[rows, i] += ((sim[rows] == t[rows, i][:, None]) & before).sum(1).double()
    return rank


def default_chunk(n_gallery: int, device: torch.device) -> int:
    """Queries per chunk: about 2M scores on a CPU (the row passes stay in cache), 64M on a
    GPU (few kernel launches); memory is O(chunk x gallery) either way."""
    budget = 2**26 if device.type == "cuda" else 2**21
    return max(1, budget // max(1, n_gallery))


def retrieval_metrics(query: torch.Tensor, query_pids: torch.Tensor, gallery: torch.Tensor,
                      gallery_pids: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                      chunk: int | None = None) -> dict[str, float]:
    """query [Q, D], gallery [G, D] features (any norm), pids [Q] and [G] -> metric dict."""
    query, gallery = F.normalize(query.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    return ranked_metrics(lambda s, e: query[s:e] @ gallery.t(), query_pids, gallery_pids,
                          ks, chunk)


def ranked_metrics(scores: Callable[[int, int], torch.Tensor], query_pids: torch.Tensor,
                   gallery_pids: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                   chunk: int | None = None) -> dict[str, float]:
    """The metrics from ``scores(s, e)``, the [e - s, G] scores of queries s..e-1.

    Every metric needs only the ranks of each query's matches (R@K: the best rank <= K; AP:
    mean of i / rank_i; INP: #matches / worst rank), so those are counted directly
    (``match_ranks``) instead of sorting the gallery; the ranks equal the stable sort's."""
    cols, valid = match_columns(query_pids, gallery_pids)
    chunk = chunk or default_chunk(len(gallery_pids), gallery_pids.device)
    rows = _MetricRows(ks)
    for s, e, m in _chunks(valid, chunk):
        rows.add(match_ranks(scores(s, e), cols[s:e, :m], valid[s:e, :m]), valid[s:e, :m])
    return rows.metrics()


def _chunks(valid: torch.Tensor, chunk: int):
    """(start, end, m) per chunk of queries. Each match costs two passes over its row, so a
    chunk only pays for as many match columns as its own queries need (m of the chunk, not
    of the data set)."""
    n_match, n = valid.sum(1).tolist(), len(valid)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        yield s, e, max(n_match[s:e])


class _MetricRows:
    """Per-query hits, AP and INP from sorted match ranks, kept and summed once at the end,
    so the result does not depend on the chunk size (not even in the last bit)."""

    def __init__(self, ks: tuple[int, ...]) -> None:
        self.ks, self.hit, self.ap, self.inp = ks, [], [], []

    def add(self, ranks: torch.Tensor, valid: torch.Tensor) -> None:
        """ranks [c, m] ascending (+inf pads), valid [c, m]."""
        m = ranks.shape[1]
        n_rel = valid.sum(1)
        ith = torch.arange(1, m + 1, device=ranks.device, dtype=torch.float64)
        self.hit.append(torch.stack([ranks[:, 0] <= k for k in self.ks], 1))
        last = (n_rel - 1)[:, None]  # a cumsum adds in order, whatever the chunk's width
        self.ap.append((ith / ranks).cumsum(1).gather(1, last).squeeze(1) / n_rel)
        self.inp.append(n_rel / ranks.gather(1, last).squeeze(1))

    def metrics(self) -> dict[str, float]:
        n = sum(len(h) for h in self.hit)
        hits = torch.cat(self.hit).double().sum(0).tolist()
        out = {f"R{k}": 100.0 * hits[j] / n for j, k in enumerate(self.ks)}
        out["mAP"] = 100.0 * torch.cat(self.ap).sum().item() / n
        out["mINP"] = 100.0 * torch.cat(self.inp).sum().item() / n
        out["rSum"] = sum(out[f"R{k}"] for k in self.ks)
        return out


def fuse(weight: float, cosines: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """The fused score of re-scored candidates: w·global cosine + (1 − w)·local score. One
    formula for the evaluation and for search, so both rank alike."""
    return weight * cosines + (1 - weight) * local


Rescore = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def stable_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of each row in the stable descending order (ties: lower index first),
    as (values, indices) [c, k] in no particular order. ``topk`` breaks ties at the k-th
    value arbitrarily; rows where it could have (more than k scores >= the k-th) are
    taken again from a stable sort, so the candidates are exactly the head of the global
    ranking."""
    values, indices = sims.topk(k, dim=1, sorted=False)
    kth = values.min(1, keepdim=True).values
    at_least = torch.ge(sims, kth, out=torch.empty_like(sims)).sum(1)
    rows = (at_least > k).nonzero().squeeze(1)
    if len(rows):
        order = sims[rows].argsort(dim=1, descending=True, stable=True)[:, :k]
        indices[rows], values[rows] = order, sims[rows].gather(1, order)
    return values, indices


def fused_metrics(query: torch.Tensor, query_pids: torch.Tensor, gallery: torch.Tensor,
                  gallery_pids: torch.Tensor, rescore: Rescore,
                  query_extra: dict[str, torch.Tensor], gallery_extra: dict[str, torch.Tensor],
                  weights: list[float], top_k: int, chunk: int | None = None,
                  ks: tuple[int, ...] = (1, 5, 10)
                  ) -> tuple[dict[str, float], dict[float, dict[str, float]]]:
    """(the global ranking's metrics, {w: the fused ranking's metrics}) in one pass over
    the similarities: each query's first ``top_k`` gallery items in the global ranking are
    re-scored (``rescore`` on the kept extras, once for all w) and ranked among themselves
    by w·cosine + (1 − w)·local (ties: lower gallery index first), ahead of the rest, which
    keep their global order and so their global ranks. No second product and no second
    pass over a row: a match outside the candidates keeps its global rank, one inside is
    ranked among the k candidates. With ``top_k`` covering the gallery this is the dense
    fusion exactly (tested)."""
    query, gallery = F.normalize(query.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    k = min(top_k, len(gallery))
    cols, valid = match_columns(query_pids, gallery_pids)
    chunk = chunk or default_chunk(len(gallery), gallery.device)
    plain, fused = _MetricRows(ks), {w: _MetricRows(ks) for w in weights}
    for s, e, m in _chunks(valid, chunk):
        sims = query[s:e] @ gallery.t()
        c, v = cols[s:e, :m], valid[s:e, :m]
        ranks = match_ranks_unsorted(sims, c, v)
        plain.add(ascending(ranks, v), v)
        cand_sims, cand = stable_topk(sims, k)
        local = rescore({n: t[s:e] for n, t in query_extra.items()}, gallery_extra, cand).float()
        hit = cand[:, None, :] == c[:, :, None]                 # [c, m, k]: match is candidate
        inside = hit.any(-1)
        before = cand[:, None, :] < c[:, :, None]               # lower gallery index
        for w, rows in fused.items():
            f = fuse(w, cand_sims, local)                       # [c, k]
            f_match = (f[:, None, :] * hit).sum(-1, keepdim=True)
            ahead = (f[:, None, :] > f_match) | ((f[:, None, :] == f_match) & before)
            r = torch.where(inside, 1 + ahead.sum(-1).double(), ranks)
            rows.add(ascending(r, v), v)
    return plain.metrics(), {w: rows.metrics() for w, rows in fused.items()}


class TextToImageRetrieval(Metric):
    """Accumulates gallery and query features (gathered across processes) and ranks once.

    ``update(features, pids, is_query, extra)``: image features with ``is_query=False``,
    caption features with ``is_query=True``; ``extra`` holds what a re-scoring head keeps
    per item (its names given as ``extra_keys={"query": [...], "gallery": [...]}``).
    """

    full_state_update = False

    def __init__(self, chunk: int | None = None,
                 extra_keys: dict[str, tuple[str, ...]] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        self.extra_keys = {side: tuple(keys) for side, keys in (extra_keys or {}).items()}
        for name in ("query_feats", "query_pids", "gallery_feats", "gallery_pids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        for side, keys in self.extra_keys.items():
            for key in keys:
                self.add_state(f"{side}_extra_{key}", default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, pids: torch.Tensor, is_query: bool,
               extra: dict[str, torch.Tensor] | None = None) -> None:
        prefix = "query" if is_query else "gallery"
        getattr(self, f"{prefix}_feats").append(features.detach().float())
        getattr(self, f"{prefix}_pids").append(pids.detach())
        for key in self.extra_keys.get(prefix, ()):
            getattr(self, f"{prefix}_extra_{key}").append(extra[key].detach())

    def compute(self) -> dict[str, float]:
        return retrieval_metrics(dim_zero_cat(self.query_feats), dim_zero_cat(self.query_pids),
                                 dim_zero_cat(self.gallery_feats), dim_zero_cat(self.gallery_pids),
                                 chunk=self.chunk)

    def compute_parts(self, parts: dict[str, slice]) -> dict[str, dict[str, float]]:
        """The metrics of ranking by each named slice of the features alone (RDE's BGE and
        TSE halves of its embedding), over everything accumulated on every process."""
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            q, g = dim_zero_cat(self.query_feats), dim_zero_cat(self.gallery_feats)
            qp, gp = dim_zero_cat(self.query_pids), dim_zero_cat(self.gallery_pids)
            return {name: retrieval_metrics(q[:, part], qp, g[:, part], gp, chunk=self.chunk)
                    for name, part in parts.items()}

    def compute_fused(self, rescore: Rescore, weights: list[float], top_k: int
                      ) -> tuple[dict[str, float], dict[float, dict[str, float]]]:
        """``fused_metrics`` over everything accumulated on every process (synced as
        ``compute`` is): the global metrics and those of each fusion weight."""
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            extra = {side: {k: dim_zero_cat(getattr(self, f"{side}_extra_{k}")) for k in keys}
                     for side, keys in self.extra_keys.items()}
            return fused_metrics(dim_zero_cat(self.query_feats), dim_zero_cat(self.query_pids),
                                 dim_zero_cat(self.gallery_feats),
                                 dim_zero_cat(self.gallery_pids), rescore,
                                 extra.get("query", {}), extra.get("gallery", {}), weights,
                                 top_k, self.chunk)
