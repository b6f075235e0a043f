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
