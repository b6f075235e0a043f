"""The web app of `tbps serve`: a static page and a JSON API over one gallery index.

FastAPI rather than Gradio: the API is plain ``GET /api/search?q=…&k=…`` and ``GET
/api/explain?q=…&image=…`` (Gradio's own API speaks its queue protocol), the install is a
few hundred kilobytes (Gradio brings about 100 MB), and the page is one HTML file a user can
restyle. Ranking goes through ``tbps.search.Ranker``, so a result is the one `tbps search
--json` gives, and so the one the evaluation ranks.

Every request is checked before it touches the model: an empty, over-long or non-UTF-8
query, a ``k`` outside 1…100, an image name that is not an image of this index (``..``, an
absolute path, a file a symlink leads out of the folder to) get HTTP 400/404 with
``{"error": "…"}``, and the server keeps serving. Only files of the index, inside the
gallery folder, are ever sent.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..index import GalleryIndex
from ..search import Model, Ranker, ranked_results
from .overlay import overlay_png

MAX_QUERY_CHARS = 1000  # the text encoder reads its first 77 tokens (about 300 characters)
MAX_K = 100
STATIC = Path(__file__).parent / "static"


class BadRequest(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class GallerySearch:
    """Searches and explanations on one indexed gallery. One request at a time touches the
    model and the index (a lock): the page is a demo for one user, and neither SQLite's
    connection nor a model on one device gains from threads."""

    def __init__(self, index: GalleryIndex, model: Model, kind: str = "auto",
                 nprobe: int | None = None) -> None:
        self.index, self.model = index, model
        self.ranker = Ranker(index, model, kind, nprobe)
        self.root = index.gallery.resolve()
        self.lock = threading.Lock()

    def search(self, query: str, k: int) -> dict:
        start = time.perf_counter()
        with self.lock:
            ranked, timing = self.ranker([query], k)
            hits = ranked_results(self.index, ranked,
                                  self.ranker.match_probabilities([query], ranked))[0]
        return {"query": query, "k": k, "results": hits, "images": len(self.index),
                "query_ms": round(timing["query_ms"], 2),
                "server_ms": round((time.perf_counter() - start) * 1e3, 2),
                "vector_index": timing["vector_index"],
                "rescored_candidates": timing["rescored_candidates"]}

    def image_path(self, name: str) -> Path:
        """The file of the indexed image ``name`` (its path inside the gallery), refused
        unless it is one and lies inside the gallery folder."""
        pure = PurePosixPath(name)
        if not name or "\\" in name or "\x00" in name or pure.is_absolute() or ".." in pure.parts:
            raise BadRequest(f"image {name!r} is not a path inside the gallery; pass the "
                             "`name` of a search result")
        with self.lock:
            known = self.index.has(name)
        path = (self.root / pure).resolve()
        if not known or not path.is_relative_to(self.root) or not path.is_file():
            raise BadRequest(f"image {name!r} is not an image of this gallery; pass the "
                             "`name` of a search result", 404)
        return path

    def explain(self, query: str, name: str) -> dict:
        from ..data.datasets import load_rgb

        path = self.image_path(name)
        start = time.perf_counter()
        with self.lock:
            model = self.model
            pixels = model.transform(image=load_rgb(path))["image"].to(model.device)
            found = model.module.explain(pixels, query)
        phrases = [{"phrase": p, "map": [[round(float(v), 3) for v in row] for row in heat],
                    "overlay": overlay_png(path, heat)}
                   for p, heat in zip(found.phrases, found.maps)]
        return {"query": query, "image": name, "source": found.source, "phrases": phrases,
                "grid": list(found.maps.shape[1:]),
                "explain_ms": round((time.perf_counter() - start) * 1e3, 2)}


def _params(request: Request) -> dict[str, str]:
    """The query string, decoded strictly: a query that is not UTF-8 is refused, not
    turned into replacement characters."""
    try:
        return dict(parse_qsl(request.scope["query_string"].decode("utf-8"),
                              keep_blank_values=True, encoding="utf-8", errors="strict"))
    except UnicodeDecodeError as exc:
        raise BadRequest("the query string is not UTF-8 text; send the description "
                         "percent-encoded as UTF-8") from exc


def _query(params: dict[str, str]) -> str:
    q = params.get("q", "").strip()
    if not q:
        raise BadRequest("empty query: pass q, a description of the person (for example "
                         "q=a man in a black jacket)")
    if len(q) > MAX_QUERY_CHARS:
        raise BadRequest(f"the query has {len(q):,} characters, more than {MAX_QUERY_CHARS:,}; "
                         "the text encoder reads only the first 77 tokens, so shorten it")
    return q


def _k(params: dict[str, str]) -> int:
    text = params.get("k", "10").strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}, got {text[:20]!r}")
    return int(text)


def create_app(service: GallerySearch) -> FastAPI:
    app = FastAPI(title="tbps serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/search")
    def search(request: Request) -> dict:
        params = _params(request)
        return service.search(_query(params), _k(params))

    @app.get("/api/explain")
    def explain(request: Request) -> dict:
        params = _params(request)
        return service.explain(_query(params), params.get("image", ""))

    @app.get("/api/image")
    def image(request: Request) -> FileResponse:
        return FileResponse(service.image_path(_params(request).get("name", "")))

    @app.get("/api/info")
    def info() -> dict:
        with service.lock:
            return {"images": len(service.index), "gallery": str(service.root),
                    "checkpoint": str(service.model.ckpt), "max_k": MAX_K}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
