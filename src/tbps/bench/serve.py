"""`tbps bench --only serve`: `tbps serve` over a gallery of 10,000 SynthPedes images,
already indexed: how long a query takes from request to ranked results (inside the server,
and round trip through HTTP), and how long the explanation of one result takes.

The server runs as a user runs it (`tbps serve`, its own process, every core); queries are
SynthPedes captions of the generated images, each sent once, one at a time."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import progress


def _percentiles(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "max": round(float(a.max()), 1)}


def bench_serve(ckpt: str | None = None, images: int = 10_000, queries: int = 100,
                explains: int = 20) -> dict:
    from ..data.synthpedes.generate import SynthConfig, generate
    from ..search import format_update, open_index
    from ..serve.browser import get, start_server, stop
    from ..serve.defaults import newest_synthetic_checkpoint

    ckpt = str(ckpt or newest_synthetic_checkpoint())
    out: dict = {"checkpoint": ckpt, "images": images, "queries": queries}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(tmp, SynthConfig(identities=max(12, images // 4), images_per_identity=4),
                 workers=2)
        root = Path(tmp) / "CUHK-PEDES"
        gallery, index_dir = root / "imgs", Path(tmp) / "index"
        out["generate_s"] = round(time.perf_counter() - start, 1)
        progress(f"serve bench: {images:,} images generated in {out['generate_s']} s; indexing")
        index, model = open_index(ckpt, gallery, index_dir)
        report = index.update(model, 64, 2)
        index.db.close()
        out["index"] = report.summary()
        progress("serve bench: " + format_update(out["index"]))
        records = json.loads((root / "reid_raw.json").read_text())
        step = max(1, len(records) // queries)
        texts = [r["captions"][0] for r in records[::step]][:queries]

        proc, url, _ = start_server(["--ckpt", ckpt, "--gallery", str(gallery),
                                     "--index", str(index_dir)])
        try:
            for q in texts[:3]:  # warm-up: the first query loads the text program
                get(url, "/api/search", q=q, k=10)
            server, trip, names = [], [], []
            for q in texts:
                t0 = time.perf_counter()
                status, body = get(url, "/api/search", q=q, k=10)
                trip.append((time.perf_counter() - t0) * 1e3)
                assert status == 200, body
                server.append(body["server_ms"])
                names.append(body["results"][0]["name"])
                out["vector_index"] = body["vector_index"]
            explain, explain_trip = [], []
            for q, name in list(zip(texts, names))[:explains + 1]:
                t0 = time.perf_counter()
                status, body = get(url, "/api/explain", q=q, image=name)
                explain_trip.append((time.perf_counter() - t0) * 1e3)
                assert status == 200, body
                explain.append(body["explain_ms"])
        finally:
            stop(proc)
    out["search_ms_server"] = _percentiles(server)
    out["search_ms_round_trip"] = _percentiles(trip)
    # the first explanation warms the image tower up; the figures are of the rest
    out["explain_ms_server"] = _percentiles(explain[1:])
    out["explain_ms_round_trip"] = _percentiles(explain_trip[1:])
    out["explain_first_ms"] = round(explain_trip[0], 1)
    out["targets"] = {"search_p95_ms": 300, "explain_ms": 1000,
                      "met": out["search_ms_round_trip"]["p95"] <= 300
                      and out["explain_ms_round_trip"]["max"] <= 1000}
    return out
