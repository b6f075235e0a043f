"""Evaluation timings for test sets of given sizes, side by side on one device:

- the similarity product alone (normalised features, chunked as the metric chunks them);
- our whole evaluation from features (product, ranks, every metric);
- our ranking and metrics from a given similarity matrix;
- IRRA's ``rank()`` (utils/metrics.py) on the same matrix, re-implemented here as the
  reference: a full argsort of every row, cumsums, and a Python loop for mINP;

and the memory our evaluation needs beyond the features. Results are checked identical
across chunk sizes (and to the unchunked computation where its [Q, G] matrix takes at most
``UNCHUNKED_BYTES``: building ICFG-PEDES's 19,848² floats only for a check would make the
check, not the evaluation, the benchmark's memory peak) and, for R@1, equal to IRRA's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics.retrieval import default_chunk, ranked_metrics, retrieval_metrics
from .common import progress, reset_peak, sync, timed

UNCHUNKED_BYTES = 2**28  # 256 MiB: CUHK-PEDES size (6,156 × 3,074 floats, 72 MiB) is checked whole


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


def irra_rank_in_blocks(similarity: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                        block: int = 2048) -> tuple[torch.Tensor, float, float]:
    """``irra_rank`` over blocks of queries, the results combined by query counts (every
    figure is a mean over queries): the same numbers, and the reference's memory bounded
    by one block (its argsort and cumsums of the whole ICFG-PEDES matrix took 13 GiB)."""
    parts = [(irra_rank(similarity[s:s + block], q_pids[s:s + block], g_pids),
              len(q_pids[s:s + block])) for s in range(0, len(q_pids), block)]
    n = sum(c for _, c in parts)
    cmc = sum(r[0] * c for r, c in parts) / n
    return cmc, sum(r[1] * c for r, c in parts) / n, sum(r[2] * c for r, c in parts) / n


def irra_rank(similarity: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
              max_rank: int = 10) -> tuple[torch.Tensor, float, float]:
    """IRRA's ranking as its code does it (anosorae/IRRA utils/metrics.py ``rank``): CMC [max_rank]
    in percent, mAP and mINP in percent."""
    indices = torch.argsort(similarity, dim=1, descending=True)
    matches = g_pids.cpu()[indices.cpu()].eq(q_pids.cpu().view(-1, 1))
    cmc = matches[:, :max_rank].cumsum(1)
    cmc[cmc > 1] = 1
    cmc = cmc.float().mean(0) * 100
    num_rel = matches.sum(1)
    tmp_cmc = matches.cumsum(1)
    inp = [tmp_cmc[i][row.nonzero()[-1]] / (row.nonzero()[-1] + 1.0)
           for i, row in enumerate(matches)]
    minp = torch.cat(inp).mean() * 100
    tmp_cmc = torch.stack([tmp_cmc[:, i] / (i + 1.0) for i in range(tmp_cmc.shape[1])], 1)
    ap = (tmp_cmc * matches).sum(1) / num_rel
    return cmc, float(ap.mean() * 100), float(minp)


def _rss_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_extra_memory_gib(run) -> float | None:
    """Peak resident memory ``run()`` adds to the process (Linux: the peak is reset through
    /proc/self/clear_refs first, so earlier peaks do not hide it); None elsewhere."""
    before = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    run()
    peak = _rss_kib("VmHWM")
    return None if before is None or peak is None else max(0, peak - before) / 2**20


def product_seconds(qn: torch.Tensor, gn: torch.Tensor, chunk: int, device: torch.device,
                    repeats: int) -> float:
    """The similarity product alone, of normalised features, chunked as the metric chunks it."""
    def product() -> None:
        for s in range(0, len(qn), chunk):
            qn[s:s + chunk] @ gn.t()

    return timed(product, device, repeats)


def bench_eval(device: torch.device, n_query: int, n_gallery: int, dim: int = 512,
               repeats: int = 5, chunk: int | None = None, irra: bool = True) -> dict:
    q, qp, g, gp = synthetic_features(n_query, n_gallery, dim, device)
    chunk = chunk or default_chunk(n_gallery, device)
    qn, gn = F.normalize(q, dim=-1), F.normalize(g, dim=-1)
    product_s = product_seconds(qn, gn, chunk, device, repeats)
    reset_peak(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    ours_s = timed(lambda: retrieval_metrics(q, qp, g, gp, chunk=chunk), device, repeats)
    if device.type == "cuda":
        extra = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    else:
        extra = cpu_extra_memory_gib(lambda: retrieval_metrics(q, qp, g, gp, chunk=chunk))
    chunked = retrieval_metrics(q, qp, g, gp, chunk=chunk)
    other = retrieval_metrics(q, qp, g, gp, chunk=max(1, chunk // 3 + 1))
    small = n_query * n_gallery * 4 <= UNCHUNKED_BYTES
    whole = retrieval_metrics(q, qp, g, gp, chunk=n_query) if small else None
    out = {"queries": n_query, "gallery": n_gallery, "chunk": chunk,
           "product_ms": round(product_s * 1e3, 2), "ms": round(ours_s * 1e3, 2),
           "ratio_to_product": round(ours_s / product_s, 2),
           "extra_memory_gib": round(extra, 3) if extra is not None else None,
           "identical_across_chunks": chunked == other,
           "identical_to_unchunked": None if whole is None else chunked == whole,
           "R1": round(chunked["R1"], 2), "mAP": round(chunked["mAP"], 2)}
    progress(f"eval {n_query:,} x {n_gallery:,}: ours {ours_s * 1e3:.0f} ms "
             f"(product alone {product_s * 1e3:.0f} ms)")
    if irra:
        sim = qn @ gn.t()
        ranking_s = timed(lambda: ranked_metrics(lambda s, e: sim[s:e], qp, gp, chunk=chunk),
                          device, repeats)
        irra_s = timed(lambda: irra_rank_in_blocks(sim, qp, gp), device, max(1, repeats // 2))
        cmc, irra_map, _ = irra_rank_in_blocks(sim, qp, gp)
        progress(f"eval {n_query:,} x {n_gallery:,}: IRRA's rank() {irra_s * 1e3:.0f} ms")
        out.update(ranking_only_ms=round(ranking_s * 1e3, 2),
                   irra_rank_ms=round(irra_s * 1e3, 2),
                   speedup_vs_irra_rank=round(irra_s / ranking_s, 1),
                   irra_R1=round(float(cmc[0]), 2), irra_mAP=round(irra_map, 2))
        del sim
    sync(device)
    return out


def bench_rescoring(device: torch.device, n_query: int, n_gallery: int, dim: int = 512,
                    top_k: int = 100, num_phrases: int = 10, repeats: int = 3) -> dict:
    """Evaluation with a re-scoring head (ACSA's local scores of each query's ``top_k``
    images, fused with the global cosine; its one pass gives the global and the fused
    metrics) beside the global-only evaluation of the same features. The head's kept
    tensors are random: 7 image tokens per image and 2-10 phrases per caption, kept as
    ACSA keeps them while encoding (normalised keys, norms, Gram matrices: per item, so
    not timed here, like the features)."""
    from ..heads.acsa import ACSAHead
    from ..heads.base import HeadContext
    from ..metrics.retrieval import fused_metrics, stable_topk

    q, qp, g, gp = synthetic_features(n_query, n_gallery, dim, device)
    head = ACSAHead(HeadContext(dim, 2, 10, 4, 0, (0,), image_grid=(24, 8)),
                    num_phrases=num_phrases, top_k=top_k).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    n = torch.randint(2, num_phrases + 1, (n_query,), generator=gen)
    mask = (torch.arange(num_phrases)[None] < n[:, None]).to(device)
    def phrases() -> torch.Tensor:
        return torch.randn(n_query, num_phrases, dim, generator=gen).to(device) * mask[..., None]

    with torch.no_grad():
        kept_q = head.kept_caption(phrases(), phrases(), mask)
        grid = 1 + 24 * 8   # encoder tokens of each image, in blocks: 1.2 GB at once
        kept_g = [head.kept_image(torch.randn(len(r), grid, dim, generator=gen).to(device))
                  for r in torch.arange(n_gallery).split(256)]
        kept_g = {name: torch.cat([kept[name] for kept in kept_g]) for name in kept_g[0]}
        global_s = timed(lambda: retrieval_metrics(q, qp, g, gp), device, repeats)
        fused_s = timed(lambda: fused_metrics(q, qp, g, gp, head.rescore, kept_q, kept_g,
                                              [0.9], top_k), device, repeats)
        # the parts no implementation avoids: the product (chunked as the metric chunks
        # it) sets the device's rate of arithmetic, and each chunk's top k
        qn, gn = F.normalize(q, dim=-1), F.normalize(g, dim=-1)
        chunk = default_chunk(n_gallery, device)
        product_s = product_seconds(qn, gn, chunk, device, repeats)
        sims = [qn[s:s + chunk] @ gn.t() for s in range(0, n_query, chunk)]
        topk_s = timed(lambda: [stable_topk(x, min(top_k, n_gallery)) for x in sims],
                       device, repeats)
    # the arithmetic each needs: the similarity product, and per (caption, candidate) pair
    # one [2·phrases × b] product over D (K̂_T W_q and V_T W_v against the image's b kept
    # scale tokens), over the caption's real phrases (the head skips padded slots)
    k = min(top_k, n_gallery)
    b = kept_g["x"].shape[1]
    product_gmac = n_query * n_gallery * dim / 1e9
    rescoring_gmac = 2 * int(n.sum()) * k * b * dim / 1e9
    # the least the fused evaluation can cost: the global one, the top k, and the
    # re-scoring's arithmetic at the rate of the product (one large matrix product, the
    # device's best case), with no copy of candidates and no element-wise step
    floor_s = global_s + topk_s + rescoring_gmac * product_s / product_gmac
    progress(f"re-scoring top {top_k}: {fused_s * 1e3:.0f} ms, global only {global_s * 1e3:.0f} ms")
    return {"queries": n_query, "gallery": n_gallery, "dim": dim, "top_k": top_k,
            "global_only_ms": round(global_s * 1e3, 1),
            "with_rescoring_ms": round(fused_s * 1e3, 1),
            "ratio": round(fused_s / global_s, 2),
            "product_gmac": round(product_gmac, 1),
            "rescoring_gmac": round(rescoring_gmac, 1),
            "product_ms": round(product_s * 1e3, 1), "topk_ms": round(topk_s * 1e3, 1),
            "floor_ratio": round(floor_s / global_s, 2)}
