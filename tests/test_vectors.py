"""Vector search (tbps.vectors) against an independent brute force, on galleries shaped
like a trained model's (tbps.bench.search), and the search benchmark's small version."""

import numpy as np
import pytest
import torch

from tbps.bench.search import GALLERY_SHAPE, PER_IDENTITY, ShapedGallery, bench_search, recall_at
from tbps.vectors import build_vector_index, choose_kind, default_nlist, read_vector_index


@pytest.fixture(scope="module")
def shaped():
    gen = ShapedGallery(GALLERY_SHAPE)
    gallery = gen.images(6000)
    queries, ident = gen.queries(6000, 100)
    return gallery, queries, ident


def brute_force(gallery, queries, k):
    """Inner products in float64 and a full sort: the obvious reference."""
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


def test_the_shaped_gallery_is_unit_norm_and_clustered_by_identity(shaped):
    gallery, queries, ident = shaped
    assert np.allclose(np.linalg.norm(gallery, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    same = gallery[0] @ gallery[1:PER_IDENTITY].T
    other = gallery[0] @ gallery[PER_IDENTITY:].T
    assert same.mean() > other.mean() + 0.3
    own = np.array([(gallery[i * PER_IDENTITY:(i + 1) * PER_IDENTITY] @ q).mean()
                    for q, i in zip(queries, ident)])
    assert own.mean() > (queries @ gallery.T).mean() + 0.3


@pytest.mark.parametrize("batch", [1, 64])
def test_flat_search_is_exact_with_the_entry_ids(shaped, batch, tmp_path):
    gallery, queries, _ = shaped
    ids = np.arange(len(gallery), dtype=np.int64) * 3 + 11  # entry ids are not positions
    index = build_vector_index(gallery, ids, "flat")
    scores, found = index.search(queries[:batch], 10)
    ref_scores, ref = brute_force(gallery, queries[:batch], 10)
    assert np.array_equal(found, ids[ref]) and np.allclose(scores, ref_scores, atol=1e-5)
    index.save(tmp_path / "v.faiss")
    again = read_vector_index(tmp_path / "v.faiss")
    assert again.kind == "flat" and np.array_equal(again.search(queries[:batch], 10)[1], found)


def test_ivf_finds_what_exact_search_finds(shaped, tmp_path):
    gallery, queries, _ = shaped
    ids = np.arange(len(gallery), dtype=np.int64)
    ivf = build_vector_index(gallery, ids, "ivf")
    exact = brute_force(gallery, queries, 10)[1]
    recalls = {}
    for nprobe in (1, 8, ivf.index.nlist):
        ivf.nprobe = nprobe
        recalls[nprobe] = recall_at(ivf.search(queries, 10)[1], exact)
    print(f"\nIVF-SQ8 over 6,000 shaped images, nlist {ivf.index.nlist}: recall@10 {recalls}")
    assert recalls[ivf.index.nlist] >= 0.97  # every cell: only the 8-bit codes differ
    assert recalls[1] < recalls[8] <= recalls[ivf.index.nlist] + 1e-9
    assert ivf.memory_bytes < gallery.nbytes / 3  # 8 bits a value instead of 32
    ivf.save(tmp_path / "ivf.faiss")
    assert read_vector_index(tmp_path / "ivf.faiss").kind == "ivf"


def test_kind_and_cells_by_gallery_size():
    assert choose_kind(10_000) == "flat" and choose_kind(1_000_000) == "ivf"
    assert default_nlist(1_000_000) == 1024 and default_nlist(100) == 16
    with pytest.raises(ValueError, match="unknown vector index kind"):
        build_vector_index(np.zeros((4, 8), np.float32), np.arange(4), "hnsw")


def test_search_benchmark_small():
    out = bench_search(sizes=(3000,), singles=5, batches=2, nprobes=(4, 32))
    (row,) = out["sizes"]
    assert row["images"] == 3000 and row["flat"]["same_top10_as_torch"] == 1.0
    for part in ("torch", "flat"):
        assert row[part]["single"]["n"] == 5 and row[part]["batch64"]["p95_ms"] > 0
    assert [p["nprobe"] for p in row["ivf"]["nprobe"]] == [4, 32]
    assert all(0 < p["recall_at_10"] <= 1 for p in row["ivf"]["nprobe"])
    assert 0 < row["identity_hit_at_10"] <= 1 and torch.get_num_threads() == out["threads"]
