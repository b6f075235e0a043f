"""Nearest-neighbour search over a gallery's embeddings with FAISS, the field's standard.

Two kinds, both by inner product of L2-normalised embeddings (the cosine evaluation ranks by):

- ``flat``: exact, every embedding compared (IndexFlatIP behind an id map): the default
  below ``APPROXIMATE_FROM`` images. A single query runs FAISS's own scan; a batch of
  queries multiplies the index's vectors with torch (``_flat_with_torch``), because the
  BLAS bundled with faiss-cpu was 4-5x slower than torch's for that product here.
- ``ivf``: approximate, an inverted file of ``nlist`` k-means cells whose embeddings are
  stored with 8-bit scalar quantisation (IndexIVFScalarQuantizer); a query scans its
  ``nprobe`` nearest cells. 8 bits keep 1M × 512 in 512 MiB (float32 would take 2 GiB) and
  lose almost nothing of the cosine; HNSW would keep float32 vectors plus its graph and
  takes many minutes to build a million on two cores. The defaults come from
  ``tbps bench --only search`` (docs/speed.md): on galleries shaped like a trained
  model's, nprobe = 32 of 1,024 cells keeps recall@10 ≥ 0.95 against exact at 1M.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

APPROXIMATE_FROM = 200_000
KINDS = ("flat", "ivf")
DEFAULT_NPROBE = 32
TORCH_FROM_QUERIES = 8  # flat search of this many queries at once multiplies with torch


def _faiss():
    import faiss  # its OpenMP pool: one thread per core, as torch's

    return faiss


def choose_kind(n: int) -> str:
    return "ivf" if n >= APPROXIMATE_FROM else "flat"


def default_nlist(n: int) -> int:
    """About √n cells (a power of two), at least 16 and at most 65,536."""
    return int(min(65536, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))))


class VectorIndex:
    """A FAISS index whose ids are the gallery index's entry ids."""

    def __init__(self, index, kind: str) -> None:
        self.index, self.kind = index, kind
        self.nprobe = DEFAULT_NPROBE

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, D] float32, L2-normalised -> (cosines [Q, k'], ids [Q, k']) best
        first, k' = min(k, gallery size)."""
        faiss = _faiss()
        k = min(k, self.index.ntotal)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
            return self.index.search(queries, k, params=params)
        if len(queries) >= TORCH_FROM_QUERIES:
            return self._flat_with_torch(queries, k)
        return self.index.search(queries, k)

    def _flat_with_torch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The flat index's own vectors (a view, no copy) multiplied by torch: the same
        exact search, but the faiss-cpu wheel's bundled BLAS multiplies a batch of queries
        4-5x slower than torch's on our CPUs (docs/speed.md)."""
        import torch

        faiss = _faiss()
        flat = faiss.downcast_index(self.index.index)
        n, dim = flat.ntotal, flat.d
        vectors = torch.from_numpy(faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim))
        ids = faiss.vector_to_array(self.index.id_map)
        q = torch.from_numpy(queries)
        best_s, best_i = None, None
        with torch.inference_mode():
            for lo in range(0, n, 262144):  # O(queries x 256k) scores at a time
                s, i = (q @ vectors[lo:lo + 262144].t()).topk(min(k, n - lo), dim=1)
                i += lo
                if best_s is not None:
                    s, pick = torch.cat([best_s, s], 1).topk(k, dim=1)
                    i = torch.cat([best_i, i], 1).gather(1, pick)
                best_s, best_i = s, i
        return best_s.numpy(), ids[best_i.numpy()]

    @property
    def memory_bytes(self) -> int:
        """What the index holds in memory (its serialised size: codes, ids, centroids)."""
        return int(_faiss().serialize_index(self.index).nbytes)

    def save(self, path: str | Path) -> None:
        _faiss().write_index(self.index, str(path))


def build_vector_index(embeddings: np.ndarray, ids: np.ndarray, kind: str,
                       nlist: int | None = None, seed: int = 0) -> VectorIndex:
    """``embeddings`` [N, D] float32 (L2-normalised) with their int64 ``ids``."""
    faiss = _faiss()
    if kind not in KINDS:
        raise ValueError(f"unknown vector index kind {kind!r}; use one of {KINDS}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = embeddings.shape
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        nlist = min(nlist or default_nlist(n), max(1, n // 39))  # FAISS wants ≥ 39 per cell
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist,
                                              faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = np.random.default_rng(seed).choice(n, min(n, 50 * nlist), replace=False)
        index.train(embeddings[np.sort(sample)])
    for s in range(0, n, 65536):  # in slices: no second full copy of a million rows
        index.add_with_ids(embeddings[s:s + 65536], ids[s:s + 65536])
    return VectorIndex(index, kind)


def read_vector_index(path: str | Path) -> VectorIndex:
    faiss = _faiss()
    index = faiss.read_index(str(path))
    kind = "ivf" if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else "flat"
    return VectorIndex(index, kind)
