"""`tbps search`: rank the images of a folder for sentences, as the evaluation ranks.

The folder lives in a ``GalleryIndex`` (``tbps.index``): encoded once, kept in step file by
file, searched with FAISS (``tbps.vectors``). A query goes through the module's inference
path (``TBPSModule.query_entries`` / ``candidate_scores``): the retrieval projection, and
for a model whose head re-scores (ACSA) the head's local scores of the best
``candidates_to_rescore`` images fused at the weight chosen on validation, which the
checkpoint stores. So what is searched is what was evaluated.

A model without re-scoring answers a query on an indexed folder without importing torch,
Lightning, timm or transformers: its text path (``embed_texts``) is kept in the index as an
ONNX program with the tokenizer, run by ONNX Runtime (``TextProgram``).

A model with a match probability (PCME++'s P(match): UCFA's DCL, CRUE's UGM) gives every
result its probability beside the score (``match_probability``), from the query's and the
image's Gaussians through ``TBPSModule.uncertainty``, the path `tbps uncertainty` reads:
a confident match reads near 1, a guess near the base rate. Such a model loads the full
model for queries (the top k images are re-read from the folder).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from functools import cached_property
from pathlib import Path

import numpy as np

from .data.tokenizer import CaptionTokenizer
from .errors import ConfigError
from .index import GalleryIndex, checkpoint_fingerprint, default_index_dir


class Model:
    """A checkpoint, loaded only when something needs the full model (encoding images,
    re-scoring, a query the exported text path cannot answer)."""

    def __init__(self, ckpt: Path, device: str = "auto") -> None:
        if not ckpt.is_file():
            raise ConfigError(f"checkpoint {ckpt} not found; pass a checkpoints/best.ckpt or "
                              "last.ckpt written by `tbps train`")
        self.ckpt, self._device = ckpt, device
        self.fingerprint = checkpoint_fingerprint(ckpt)

    @cached_property
    def device(self):
        import torch

        if self._device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self._device)

    @cached_property
    def module(self):
        from .model.checkpoint import load_checkpoint

        return load_checkpoint(self.ckpt).to(self.device).eval()

    @property
    def transform(self):
        from .data.transforms import eval_transform

        return eval_transform(tuple(self.module.cfg["data"]["image_size"]))

    def __call__(self, images):
        """Gallery images -> (embedding, what the re-scoring head keeps): the index's encoder."""
        return self.module.gallery_entries(images.to(self.device))


class TextProgram:
    """``embed_texts`` of a checkpoint exported to ONNX (any batch size) with its tokenizer,
    in the index folder, run with ONNX Runtime: a query of an indexed gallery then imports
    neither torch nor the training stack (about 0.5 s of imports where torch alone takes 3 to
    4). It also records whether the model re-scores, in which case queries need the full
    model and nothing is exported."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.program = folder / f"text-{fingerprint}.onnx"
        self.meta = folder / f"text-{fingerprint}.json"

    def state(self) -> str | None:
        """What the index holds for queries: ``"exported"`` (the ONNX program),
        ``"rescores"`` (queries need the full model), ``"failed"`` (the export did not
        work), or None (nothing recorded yet, or a program file gone missing)."""
        if not self.meta.is_file():
            return None
        state = json.loads(self.meta.read_text()).get("state")
        return None if state == "exported" and not self.program.is_file() else state

    def load(self):
        """(encode: ids [B, L] int64 -> embeddings [B, D], tokenizer), or None if there is
        no program."""
        if self.state() != "exported":
            return None
        import onnxruntime

        meta = json.loads(self.meta.read_text())
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # no graph-optimisation chatter on stderr
        session = onnxruntime.InferenceSession(str(self.program), options,
                                               providers=["CPUExecutionProvider"])
        tokenizer = CaptionTokenizer.from_json(meta["tokenizer"], meta["context_length"])
        return (lambda ids: session.run(None, {"ids": ids})[0]), tokenizer

    def save(self, module) -> None:
        """Exports the module's text path when it is all a query needs; a module that cannot
        be exported is not, and its queries use the full model."""
        import torch

        class EmbedTexts(torch.nn.Module):
            def __init__(self, module) -> None:
                super().__init__()
                self.module = module

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                return self.module.embed_texts(ids)

        k = module.candidates_to_rescore
        probability = has_match_probability(module)
        state = "rescores" if k else "probability" if probability else "failed"
        if k == 0 and not probability:
            device = module.device
            ids = module.tokenizer.encode(["a person", "a man in a red coat"])
            tmp = self.program.with_suffix(".tmp.onnx")
            try:
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(EmbedTexts(module.cpu()).eval(), (ids,), str(tmp),
                                  dynamo=True, input_names=["ids"], output_names=["tbps_query_embedding"],
                                  dynamic_shapes={"ids": {0: batch}}, verbose=False)
                tmp.replace(self.program)
                state = "exported"
            except Exception as exc:  # noqa: BLE001 - export support varies by model
                tmp.unlink(missing_ok=True)
                print(f"note: the text encoder could not be exported to ONNX "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                      "queries will load the full model", file=sys.stderr)
            finally:
                module.to(device)
        self.meta.write_text(json.dumps({"tokenizer": module.tokenizer.to_json(),
                                         "context_length": module.tokenizer.context_length,
                                         "rescore_candidates": k, "state": state}))


def has_match_probability(module) -> bool:
    """Whether the model gives a pair P(match) (asked once on a blank image and caption)."""
    import torch

    from .model.uncertainty import NoUncertainty

    height, width = module.cfg["data"]["image_size"]
    blank = torch.zeros(1, 3, height, width, device=module.device)
    try:
        with torch.inference_mode():
            got = module.uncertainty(blank, module.tokenizer.encode(["a person"]).to(module.device))
    except NoUncertainty:
        return False
    return got.match_probability is not None


def index_root(ckpt: str | Path, gallery: str | Path, index_dir: str | Path | None) -> Path:
    return Path(index_dir) if index_dir else default_index_dir(Path(ckpt), Path(gallery))


def checked_inputs(ckpt: str | Path, gallery: str | Path, device: str = "auto") -> Model:
    """The model of ``ckpt`` (not loaded yet), once the checkpoint and the folder exist."""
    model = Model(Path(ckpt), device)
    if not Path(gallery).is_dir():
        raise ConfigError(f"gallery {gallery} is not a folder; pass --gallery DIR")
    return model


def open_index(ckpt: str | Path, gallery: str | Path, index_dir: str | Path | None = None,
               device: str = "auto", create: bool = True) -> tuple[GalleryIndex, Model]:
    """The gallery's index for this checkpoint (refused if another built it) and the model."""
    model = checked_inputs(ckpt, gallery, device)
    root = index_root(ckpt, gallery, index_dir)
    return GalleryIndex.open(root, Path(gallery), model.fingerprint, create=create), model


class Ranker:
    """What answering queries on one index needs, loaded once (the vector index, the
    exported text program or the model): `tbps search` makes one per call, `tbps serve`
    keeps one."""

    def __init__(self, index: GalleryIndex, model: Model, kind: str = "auto",
                 nprobe: int | None = None) -> None:
        self.index, self.model = index, model
        self.vectors = index.vector_index(kind)
        if nprobe:
            self.vectors.nprobe = nprobe
        program = TextProgram(index.root, model.fingerprint)
        if program.state() is None:
            program.save(model.module)  # this query on, a model without re-scoring uses it
        self.exported = program.load()
        self.with_probability = program.state() == "probability"

    def __call__(self, queries: list[str], topk: int
                 ) -> tuple[list[list[tuple[int, float]]], dict]:
        """Each query's best ``topk`` (entry id, score), as the evaluation ranks, and timings."""
        start = time.perf_counter()
        if self.exported is not None:
            embed, tokenizer = self.exported
            text = embed(tokenizer.encode_numpy(queries))
            query_kept, k_rescore = {}, 0
        else:
            import torch

            model = self.model
            module = model.module
            with torch.inference_mode():
                batch = {k: v.to(model.device) for k, v in module.query_batch(queries).items()}
                text, query_kept = module.query_entries(batch)
            text = text.float().cpu().numpy()
            k_rescore = module.candidates_to_rescore
        text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
        cosines, ids = self.vectors.search(text.astype(np.float32), max(topk, k_rescore))
        if k_rescore:
            cosines, ids = _rescored(self.index, self.model.module, query_kept, cosines, ids,
                                     k_rescore)
        out = [[(int(i), float(s)) for s, i in zip(cosines[q, :topk], ids[q, :topk]) if i >= 0]
               for q in range(len(queries))]
        return out, {"query_ms": (time.perf_counter() - start) * 1e3 / len(queries),
                     "vector_index": self.vectors.kind, "rescored_candidates": k_rescore}

    def match_probabilities(self, queries: list[str], ranked: list[list[tuple[int, float]]]
                            ) -> list[list[float]] | None:
        """P(match) of each query with each of its hits, for a model that has one."""
        if not self.with_probability:
            return None
        import torch

        from .data.datasets import load_rgb

        module = self.model.module
        names = self.index.paths([i for row in ranked for i, _ in row])
        out = []
        with torch.inference_mode():
            for query, row in zip(queries, ranked):
                if not row:
                    out.append([])
                    continue
                images = torch.stack([self.model.transform(image=load_rgb(self.index.gallery / names[i]))["image"]
                                      for i, _ in row]).to(module.device)
                ids = module.query_batch([query])["caption_ids"].to(module.device)
                prob = module.uncertainty(images, ids).match_probability[0]
                out.append([float(p) for p in prob.float().cpu()])
        return out


def rank(index: GalleryIndex, model: Model, queries: list[str], topk: int,
         kind: str = "auto", nprobe: int | None = None
         ) -> tuple[list[list[tuple[int, float]]], dict, list[list[float]] | None]:
    """Each query's best ``topk`` (entry id, score), as the evaluation ranks, timings, and
    each hit's P(match) when the model has one."""
    ranker = Ranker(index, model, kind, nprobe)
    ranked, timing = ranker(queries, topk)
    return ranked, timing, ranker.match_probabilities(queries, ranked)


def ranked_results(index: GalleryIndex, ranked: list[list[tuple[int, float]]],
                   probabilities: list[list[float]] | None = None) -> list[list[dict]]:
    """Each query's hits as `tbps search --json` lists them: rank, the image's path inside
    the gallery (``name``) and beside it (``path``), score, and P(match) for a model that
    has one (``match_probability``)."""
    names = index.paths([i for row in ranked for i, _ in row])
    out = [[{"rank": r + 1, "path": str(index.gallery / names[i]), "name": names[i],
             "score": round(s, 4)} for r, (i, s) in enumerate(row)] for row in ranked]
    for hits, probs in zip(out, probabilities or []):
        for hit, p in zip(hits, probs):
            hit["match_probability"] = round(p, 4)
    return out


def _rescored(index: GalleryIndex, module, query_kept: dict, cosines: np.ndarray,
              ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` candidates of each row ranked by the module's fused score (ties:
    the image indexed first, as the evaluation's lower gallery index), the rest after
    them in the global order, as ``fused_metrics`` ranks."""
    import torch

    ids, cosines = torch.from_numpy(ids), torch.from_numpy(cosines)
    head_ids, head_cos = ids[:, :k], cosines[:, :k]
    unique, compact = torch.unique(head_ids, return_inverse=True)
    kept = {n: torch.from_numpy(a).to(module.device)
            for n, a in index.kept(unique.numpy()).items()}
    with torch.inference_mode():
        fused = module.candidate_scores(query_kept, kept, head_cos.to(module.device),
                                        compact.to(module.device)).float().cpu()
    by_id = head_ids.argsort(dim=1, stable=True)                 # ties: lower id first
    order = by_id.gather(1, fused.gather(1, by_id).argsort(dim=1, descending=True, stable=True))
    return (torch.cat([fused.gather(1, order), cosines[:, k:]], 1).numpy(),
            torch.cat([head_ids.gather(1, order), ids[:, k:]], 1).numpy())


def search(ckpt: str | Path, gallery: str | Path, queries: list[str], topk: int = 10,
           index_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64,
           workers: int = 2, kind: str = "auto", nprobe: int | None = None,
           update: bool = True) -> dict:
    if not queries:
        raise ConfigError("no query: pass --query \"...\" or --queries FILE")
    index, model = open_index(ckpt, gallery, index_dir, device)
    report = index.update(model, batch_size, workers) if update else None
    ranked, timing, probabilities = rank(index, model, queries, topk, kind, nprobe)
    folder = Path(gallery)
    bad = index.unreadable(limit=5)
    return {"checkpoint": str(ckpt), "gallery": str(folder), "index": str(index.root),
            "images": len(index) + index.unreadable_count(), "indexed": len(index),
            "cached": report is None or report.encoded + len(report.unreadable) == 0,
            "update": None if report is None else report.summary(),
            "query_ms": round(timing["query_ms"], 2), "vector_index": timing["vector_index"],
            "rescored_candidates": timing["rescored_candidates"],
            "unreadable": {"count": index.unreadable_count(),
                           "first": [f"{folder / p}: {why}" for p, why in bad]},
            "queries": [{"query": q, "results": hits}
                        for q, hits in zip(queries, ranked_results(index, ranked, probabilities))]}


def draw_results(result: dict, out: str | Path, thumb: tuple[int, int] = (64, 160)) -> Path:
    """One row per query: the sentence above its top-k images, each with rank and score."""
    from PIL import Image, ImageDraw

    rows = result["queries"]
    k = max(len(r["results"]) for r in rows)
    w, h = thumb
    text_h, label_h = 34, 14
    grid = Image.new("RGB", (max(k * (w + 4), 300), len(rows) * (text_h + h + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = i * (text_h + h + label_h)
        wrap = textwrap.wrap(row["query"], max(20, grid.width // 7))[:2]
        draw.multiline_text((2, y + 2), "\n".join(wrap), fill="black", spacing=1)
        for j, hit in enumerate(row["results"]):
            x = j * (w + 4)
            with Image.open(hit["path"]) as im:
                grid.paste(im.convert("RGB").resize((w, h)), (x, y + text_h))
            draw.text((x + 1, y + text_h + h), f"{hit['rank']}: {hit['score']:.2f}", fill="black")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return Path(out)


def format_update(summary: dict) -> str:
    enc = (f"encoded {summary['encoded']} in {summary['encode_seconds']} s "
           f"({summary['images_per_s']} images/s)" if summary["encoded"] else "nothing to encode")
    return (f"index: {summary['added']} added, {summary['removed']} removed, "
            f"{summary['reencoded']} re-encoded, {summary['new_unreadable']} newly unreadable; "
            + enc)


def format_results(result: dict) -> str:
    lines = []
    for row in result["queries"]:
        lines.append(f"query: {row['query']}")
        lines += [f"  {h['rank']:>3}. {h['score']:.4f}  "
                  + (f"P(match) {h['match_probability']:.3f}  " if "match_probability" in h else "")
                  + h["path"] for h in row["results"]]
    if result["update"] is not None:
        lines.append(format_update(result["update"]))
    lines.append(f"{result['indexed']} of {result['images']} images indexed ("
                 f"{'from the index' if result['cached'] else 'index updated'}, "
                 f"{result['vector_index']} search); {result['query_ms']} ms per query")
    if result["unreadable"]["count"]:
        lines.append(f"skipped {result['unreadable']['count']} unreadable images: "
                     + "; ".join(result["unreadable"]["first"]))
    return "\n".join(lines)


def read_queries(path: str | Path) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"cannot read --queries {path}: {exc}") from exc


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1)

