"""Retrieval metrics against an independent, per-query computation with plain Python."""

import pytest
import torch

from tbps.metrics import TextToImageRetrieval, retrieval_metrics


def _naive(q, qp, g, gp):
    q = torch.nn.functional.normalize(q, dim=1)
    g = torch.nn.functional.normalize(g, dim=1)
    sims = (q @ g.t()).tolist()
    r1 = r5 = r10 = ap = inp = 0.0
    for row, pid in zip(sims, qp.tolist()):
        ranked = sorted(range(len(row)), key=lambda j: -row[j])
        rel = [gp[j].item() == pid for j in ranked]
        first = rel.index(True) + 1
        r1 += first <= 1
        r5 += first <= 5
        r10 += first <= 10
        hits, precisions = 0, []
        for r, ok in enumerate(rel, start=1):
            if ok:
                hits += 1
                precisions.append(hits / r)
        ap += sum(precisions) / len(precisions)
        last = max(r for r, ok in enumerate(rel, start=1) if ok)
        inp += sum(rel) / last
    n = len(sims)
    return {"R1": 100 * r1 / n, "R5": 100 * r5 / n, "R10": 100 * r10 / n,
            "mAP": 100 * ap / n, "mINP": 100 * inp / n}


@pytest.mark.parametrize("chunk", [7, 1024])
def test_matches_naive_computation(chunk):
    g = torch.Generator().manual_seed(0)
    gallery_pids = torch.arange(40).repeat_interleave(3)  # 40 people, 3 images each
    query_pids = torch.randint(0, 40, (97,), generator=g)
    gallery, query = torch.randn(120, 16, generator=g), torch.randn(97, 16, generator=g)
    query[:50] += 0.8 * gallery[query_pids[:50] * 3]  # some queries are easy
    got = retrieval_metrics(query, query_pids, gallery, gallery_pids, chunk=chunk)
    ref = _naive(query, query_pids, gallery, gallery_pids)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    assert got["rSum"] == pytest.approx(ref["R1"] + ref["R5"] + ref["R10"])
    assert 0 < got["R1"] < 100


def test_perfect_and_metric_accumulation():
    feats = torch.eye(6)
    pids = torch.arange(6)
    m = TextToImageRetrieval(chunk=2)
    m.update(feats[:3], pids[:3], is_query=False)
    m.update(feats[3:], pids[3:], is_query=False)
    m.update(feats, pids, is_query=True)
    out = m.compute()
    assert out["R1"] == out["mAP"] == out["mINP"] == 100.0


def test_query_without_match_is_an_error():
    with pytest.raises(ValueError, match="no image of their person"):
        retrieval_metrics(torch.randn(2, 4), torch.tensor([0, 9]), torch.randn(3, 4),
                          torch.tensor([0, 1, 2]))


def _sort_based(query, qp, gallery, gp, ks=(1, 5, 10)):
    """The previous implementation: a stable argsort of every row, cumsum, and the rank of
    the last match (the reference the sort-free metrics must equal)."""
    from tbps.metrics.retrieval import rank_gallery

    q = torch.nn.functional.normalize(query.float(), dim=-1)
    g = torch.nn.functional.normalize(gallery.float(), dim=-1)
    _, match, ap = rank_gallery(q @ g.t(), qp, gp)
    cum = match.cumsum(1)
    rank = torch.arange(1, g.shape[0] + 1, dtype=torch.float64)
    n = q.shape[0]
    out = {f"R{k}": 100.0 * (cum[:, k - 1] > 0).double().sum().item() / n for k in ks}
    out["mAP"] = 100.0 * ap.sum().item() / n
    out["mINP"] = 100.0 * (match.sum(1) / (match * rank).max(1).values).sum().item() / n
    return out


def _tied_data(seed=0):
    """Duplicated gallery and query rows (exactly equal scores everywhere) and identities
    with 1 to 40 images, so some queries have many matches."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(30, 8, generator=g)
    gallery = base[torch.randint(0, 30, (150,), generator=g)]
    gallery_pids = torch.cat([torch.zeros(40, dtype=torch.long),
                              torch.randint(1, 25, (110,), generator=g)])
    gallery_pids = gallery_pids[torch.randperm(150, generator=g)]
    query_pids = gallery_pids[torch.randint(0, 150, (90,), generator=g)]
    query = base[torch.randint(0, 30, (90,), generator=g)] + 0.0
    query[:30] = gallery[torch.randint(0, 150, (30,), generator=g)]
    return query, query_pids, gallery, gallery_pids


def test_match_ranks_equal_the_stable_sort_with_ties_and_many_matches():
    from tbps.metrics.retrieval import match_columns, match_ranks, rank_gallery

    query, qp, gallery, gp = _tied_data()
    sim = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(gallery, dim=-1).t()
    assert (sim[:, :, None] == sim[:, None, :]).sum() > 2 * sim.numel()  # ties everywhere
    cols, valid = match_columns(qp, gp)
    assert cols.shape[1] >= 40
    _, match, _ = rank_gallery(sim, qp, gp)
    position = torch.arange(1, sim.shape[1] + 1, dtype=torch.float64)
    expect = (match * position).masked_fill(match == 0, float("inf")).sort(1).values
    assert torch.equal(match_ranks(sim, cols, valid), expect[:, :cols.shape[1]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sort_free_metrics_equal_the_sort_based_ones(seed):
    query, qp, gallery, gp = _tied_data(seed)
    ref = _sort_based(query, qp, gallery, gp)
    by_chunk = [retrieval_metrics(query, qp, gallery, gp, chunk=c) for c in (7, 64, 90)]
    assert by_chunk[0] == by_chunk[1] == by_chunk[2]  # the chunk size changes no bit
    got = by_chunk[0]
    for k in ("R1", "R5", "R10", "mINP"):
        assert got[k] == ref[k], k
    # AP sums the same float64 terms in another order (over the matches, not the gallery)
    assert got["mAP"] == pytest.approx(ref["mAP"], rel=1e-12)
