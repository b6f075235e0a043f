"""`tbps bench --only search`: vector search over galleries of 10k, 100k and 1M images.

Uniform random vectors would flatter nobody and test nothing: in 512 dimensions they are
all nearly orthogonal, so an approximate index has no structure to find and exact search
no near-ties to resolve. The galleries here are shaped like a trained model's: identities
as clusters (4 images each), queries from the text side near their identity, the cosines
between and within identities and across the modalities, and the spread of the features
over their principal directions, all measured on a checkpoint's SynthPedes test split
(``fit_gallery_shape``; ``--fit CKPT`` measures another). Every image and query is

    x = normalise(√a·m + √b·u_id + √c·e),   q = normalise(√a_q·m_t + √b_q·u_id + √c_q·e'),

with m / m_t the image / text mean directions (cos = γ), u_id the identity's direction and
e, e' noise, u and e drawn with the measured spectrum in a random basis, so that
E[cos] between identities is a, within one a + b, text to text a_q, a caption to another
person's image √(a·a_q)·γ and to its own √(a·a_q)·γ + √(b·b_q).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from ..vectors import DEFAULT_NPROBE, build_vector_index

SIZES = (10_000, 100_000, 1_000_000)
DIM = 512
PER_IDENTITY = 4
IMAGE_CHUNK = 65536  # images drawn at a time (a multiple of PER_IDENTITY)

# The variance shares of the first principal directions are kept as measured and the rest
# spread evenly: a model's features have a few tens of effective dimensions whatever their
# width (CLIP's 512 as the tiny model's 128), which is what makes neighbours hard to tell.
TOP_DIRECTIONS = 32

# Measured with `tbps bench --only search --fit runs/synthetic/<time>/checkpoints/best.ckpt`
# on `make train`'s checkpoint (seed 0, 12 epochs; 2026-12-02; test R@1 31.67). The spectrum
# is the share of the image features' variance along each of their first principal directions.
GALLERY_SHAPE = {
    "a": 0.0383, "b": 0.7581, "a_q": 0.033, "b_q": 0.6689, "gamma": 0.7266,
    "spectrum": [0.198, 0.1766, 0.1487, 0.1302, 0.1088, 0.0828, 0.0645, 0.0535, 0.0299, 0.0038,
                 0.001, 0.0006, 0.0005, 0.0002, 0.0002] + [0.0001] * 6 + [0.0] * 11,
}


@torch.inference_mode()
def fit_gallery_shape(ckpt: str, data_root: str | None = None) -> dict:
    """The parameters of the module docstring from a checkpoint's test split."""
    from ..analysis.features import encode_split
    from ..model.checkpoint import load_checkpoint

    split = encode_split(load_checkpoint(ckpt).eval(), "test", data_root)
    g, gp, q, qp = (split.gallery.double(), split.gallery_pids, split.queries.double(),
                    split.query_pids)

    def mean_cos(x, xp, y, yp, same: bool):
        sims, match = x @ y.t(), xp[:, None] == yp[None, :]
        if x is y:
            match = match & ~torch.eye(len(x), dtype=torch.bool)
            other = (xp[:, None] != yp[None, :])
        else:
            other = ~match
        return float(sims[match if same else other].mean())

    a = mean_cos(g, gp, g, gp, same=False)
    b = mean_cos(g, gp, g, gp, same=True) - a
    a_q = mean_cos(q, qp, q, qp, same=False)
    cross_other = mean_cos(q, qp, g, gp, same=False)
    cross_same = mean_cos(q, qp, g, gp, same=True)
    gamma = cross_other / np.sqrt(max(a * a_q, 1e-12))
    b_q = (cross_same - cross_other) ** 2 / max(b, 1e-12)
    centred = g - g.mean(0)
    eig = torch.linalg.eigvalsh(centred.t() @ centred).flip(0).clamp(min=0)
    spectrum = (eig / eig.sum()).numpy()[:TOP_DIRECTIONS]
    return {"a": round(a, 4), "b": round(b, 4), "a_q": round(a_q, 4), "b_q": round(min(b_q, 1 - a_q), 4),
            "gamma": round(float(gamma), 4), "spectrum": [round(float(s), 4) for s in spectrum],
            "measured": {"image_other": round(a, 4), "image_same": round(a + b, 4),
                         "text_other": round(a_q, 4), "text_to_other_image": round(cross_other, 4),
                         "text_to_own_image": round(cross_same, 4), "images": len(g),
                         "captions": len(q), "dim": g.shape[1]}}


class ShapedGallery:
    """Images and queries drawn as the module docstring says, in chunks (a million rows of
    512 float32 are 2 GiB; no second copy is made)."""

    def __init__(self, shape: dict, dim: int = DIM, seed: int = 0) -> None:
        self.shape, self.dim = shape, dim
        rng = np.random.default_rng(seed)
        top = np.asarray(shape["spectrum"], dtype=np.float64)
        tail = max(0.0, 1.0 - top.sum()) / (dim - len(top))
        spectrum = np.concatenate([top, np.full(dim - len(top), tail)])
        self.scale = np.sqrt(spectrum / spectrum.mean()).astype(np.float32)
        self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        m = self._unit(rng.standard_normal(dim))
        side = self._unit(rng.standard_normal(dim) - (rng.standard_normal(dim) @ m) * m)
        side = self._unit(side - (side @ m) * m)
        gamma = float(np.clip(shape["gamma"], -1, 1))
        self.m, self.m_t = m, self._unit(gamma * m + np.sqrt(1 - gamma ** 2) * side)
        self.seed = seed

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    def _directions(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Unit vectors spread as the measured spectrum, in the random basis."""
        z = rng.standard_normal((n, self.dim), dtype=np.float32) * self.scale
        return self._unit(z @ self.basis)

    def images(self, n: int) -> np.ndarray:
        s = self.shape
        a, b = s["a"], s["b"]
        chunk = IMAGE_CHUNK
        out = np.empty((n, self.dim), dtype=np.float32)
        rng = np.random.default_rng([self.seed, 2])
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            ident = np.arange(lo, hi) // PER_IDENTITY
            first = np.unique(ident)
            u = self._identity_block(first)[ident - first[0]]
            e = self._directions(rng, hi - lo)
            out[lo:hi] = self._unit(np.sqrt(a) * self.m + np.sqrt(b) * u
                                    + np.sqrt(max(0.0, 1 - a - b)) * e)
        return out

    def _identity_block(self, identities: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, int(identities[0]), len(identities)])
        return self._directions(rng, len(identities))

    def queries(self, n_images: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n captions, each of a random identity of the gallery: (queries, identity)."""
        s = self.shape
        rng = np.random.default_rng([self.seed, 3])
        ident = rng.integers(0, n_images // PER_IDENTITY, n)
        u = np.empty((n, self.dim), dtype=np.float32)
        per_chunk = IMAGE_CHUNK // PER_IDENTITY  # the identity blocks ``images`` drew
        n_ids = (n_images + PER_IDENTITY - 1) // PER_IDENTITY
        for start in np.unique((ident // per_chunk) * per_chunk):
            block = self._identity_block(np.arange(start, min(start + per_chunk, n_ids)))
            rows = (ident // per_chunk) * per_chunk == start
            u[rows] = block[ident[rows] - start]
        e = self._directions(rng, n)
        q = self._unit(np.sqrt(s["a_q"]) * self.m_t + np.sqrt(s["b_q"]) * u
                       + np.sqrt(max(0.0, 1 - s["a_q"] - s["b_q"])) * e)
        return q, ident


def _latencies(fn, batches: list[np.ndarray]) -> dict:
    times = []
    fn(batches[0])  # warm-up
    for b in batches:
        start = time.perf_counter()
        fn(b)
        times.append((time.perf_counter() - start) * 1e3)
    t = np.array(times)
    return {"p50_ms": round(float(np.percentile(t, 50)), 3),
            "p95_ms": round(float(np.percentile(t, 95)), 3), "n": len(t)}


def recall_at(found: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Share of the exact top k that the approximate top k holds, averaged over queries."""
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))


def bench_search(sizes=SIZES, shape: dict | None = None, singles: int = 100, batches: int = 5,
                 nprobes=(8, 16, 32, 64), log=None) -> dict:
    """Per gallery size: torch brute force, FAISS flat (exact) and IVF (approximate, per
    nprobe: recall@10 against exact), single queries and batches of 64, p50/p95 and memory."""
    shape = shape or GALLERY_SHAPE
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = {"dim": DIM, "images_per_identity": PER_IDENTITY, "threads": torch.get_num_threads(),
           "shape": {k: v for k, v in shape.items() if k != "measured"}, "sizes": []}
    for n in sizes:
        t0 = time.perf_counter()
        gen = ShapedGallery(shape)
        gallery = gen.images(n)
        queries, ident = gen.queries(n, max(singles, batches * 64))
        row = {"images": n, "made_s": round(time.perf_counter() - t0, 1)}
        log(f"search bench: {n:,} images drawn in {row['made_s']} s")
        single = [queries[i:i + 1] for i in range(singles)]
        batch = [queries[i * 64:(i + 1) * 64] for i in range(batches)]
        g = torch.from_numpy(gallery)

        def brute(qs):
            with torch.inference_mode():
                return (torch.from_numpy(qs) @ g.t()).topk(10, dim=1)
        row["torch"] = {"single": _latencies(brute, single), "batch64": _latencies(brute, batch),
                        "memory_mib": round(gallery.nbytes / 2**20, 1)}
        ids = np.arange(n, dtype=np.int64)
        t0 = time.perf_counter()
        flat = build_vector_index(gallery, ids, "flat")
        row["flat"] = {"build_s": round(time.perf_counter() - t0, 1),
                       "single": _latencies(lambda qs: flat.search(qs, 10), single),
                       "batch64": _latencies(lambda qs: flat.search(qs, 10), batch),
                       "memory_mib": round(flat.memory_bytes / 2**20, 1)}
        exact = flat.search(queries, 10)[1]
        truth = brute(queries)[1].numpy()
        row["flat"]["same_top10_as_torch"] = recall_at(exact, truth)
        row["identity_hit_at_10"] = float(np.mean([(ex // PER_IDENTITY == i).any()
                                                   for ex, i in zip(exact, ident)]))
        flat = None  # its 2 GiB at 1M go before the IVF index is built
        log(f"search bench: {n:,} images: exact done")
        t0 = time.perf_counter()
        ivf = build_vector_index(gallery, ids, "ivf")
        row["ivf"] = {"build_s": round(time.perf_counter() - t0, 1),
                      "nlist": int(ivf.index.nlist),
                      "memory_mib": round(ivf.memory_bytes / 2**20, 1), "nprobe": []}
        for p in nprobes:
            ivf.nprobe = p
            found = ivf.search(queries, 10)[1]
            row["ivf"]["nprobe"].append({
                "nprobe": p, "recall_at_10": round(recall_at(found, exact), 4),
                "single": _latencies(lambda qs: ivf.search(qs, 10), single),
                "batch64": _latencies(lambda qs: ivf.search(qs, 10), batch),
                "default": p == DEFAULT_NPROBE})
        ivf = g = gallery = None  # before the next size is drawn
        log(f"search bench: {n:,} images: approximate done")
        out["sizes"].append(row)
    return out
