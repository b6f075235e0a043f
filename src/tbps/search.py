"""`tbps search`: rank the images of a folder for sentences, with a trained checkpoint.

The folder is encoded once; the features are cached in ``<run>/checkpoints/search_cache/``
(or ``--cache-dir``) under a fingerprint of the checkpoint and of every file's path, size
and modification time, so later queries on an unchanged folder cost only the text encoder
and one matrix product. The text side (``TBPSModule.embed_texts``, head projections
included) is saved beside it as a ``torch.export`` program with the tokenizer, so a cached
query loads neither Lightning nor timm nor transformers: it answers in about 2.5 s where the
full model took about 6 s (2-core CPU). Unreadable images are listed and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .data.tokenizer import CaptionTokenizer
from .errors import ConfigError, DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"gallery {folder} is not a folder; pass --gallery DIR")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ConfigError(f"no images under {folder} (looked for "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))}, in sub-folders too)")
    return paths


def _checkpoint_key(ckpt: Path) -> str:
    stat = ckpt.stat()
    return f"{ckpt.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def fingerprint(ckpt: Path, folder: Path, paths: list[Path]) -> str:
    h = hashlib.sha1()
    h.update(_checkpoint_key(ckpt).encode())
    for p in paths:
        s = p.stat()
        h.update(f"|{p.relative_to(folder)}|{s.st_size}|{s.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class _Gallery(Dataset):
    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        from .data.datasets import load_rgb

        try:
            return k, self.transform(image=load_rgb(self.paths[k]))["image"], ""
        except DatasetError as exc:
            return k, None, str(exc.__cause__ or exc)


def _collate(items):
    ok = [(k, x) for k, x, _ in items if x is not None]
    bad = [(k, why) for k, x, why in items if x is None]
    return ([k for k, _ in ok], torch.stack([x for _, x in ok]) if ok else None, bad)


@torch.inference_mode()
def encode_folder(module, paths: list[Path], device: torch.device, batch_size: int,
                  workers: int) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Normalised image features of the readable images, their indices, and the failures."""
    from .data.transforms import eval_transform

    size = tuple(module.cfg["data"]["image_size"])
    loader = DataLoader(_Gallery(paths, eval_transform(size)), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate)
    feats, kept, bad = [], [], []
    for idx, images, failed in loader:
        bad += failed
        if images is not None:
            feats.append(F.normalize(module.embed_images(images.to(device)).float(), dim=-1).cpu())
            kept += idx
    if not feats:
        raise ConfigError(f"none of the {len(paths)} images could be read; first failure: "
                          f"{paths[bad[0][0]]}: {bad[0][1]}")
    return torch.cat(feats), kept, bad


class _TextProgram:
    """``embed_texts`` of a checkpoint exported with ``torch.export`` (CPU, any batch size)
    and its tokenizer, stored in the search cache under the checkpoint's fingerprint."""

    def __init__(self, cache: Path, ckpt: Path) -> None:
        key = hashlib.sha1(_checkpoint_key(ckpt).encode()).hexdigest()[:20]
        self.program, self.tokenizer = cache / f"text-{key}.pt2", cache / f"text-{key}.json"

    def load(self):
        """(encode: ids -> embeddings, tokenizer), or None if not cached."""
        if not (self.program.is_file() and self.tokenizer.is_file()):
            return None
        meta = json.loads(self.tokenizer.read_text())
        encode = torch.export.load(self.program).module()
        return encode, CaptionTokenizer.from_json(meta["tokenizer"], meta["context_length"])

    def save(self, module) -> None:
        """Exports the module's text path; a module that cannot be exported (or one on a GPU)
        simply is not cached, and its queries use the full model."""
        if next(module.parameters()).device.type != "cpu":
            return
        ids = module.tokenizer.encode(["a person", "a man in a red coat"])
        try:
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.export.export(_EmbedTexts(module), (ids,),
                                          dynamic_shapes={"ids": {0: batch}})
        except Exception as exc:  # noqa: BLE001 - export support varies by model
            print(f"note: the text encoder could not be exported ({type(exc).__name__}); "
                  "cached queries will load the full model")
            return
        self.program.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, self.program)
        self.tokenizer.write_text(json.dumps({"tokenizer": module.tokenizer.to_json(),
                                              "context_length": module.tokenizer.context_length}))


class _EmbedTexts(torch.nn.Module):
    def __init__(self, module) -> None:
        super().__init__()
        self.module = module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.module.embed_texts(ids)


def search(ckpt: str | Path, gallery: str | Path, queries: list[str], topk: int = 10,
           cache_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64,
           workers: int = 2) -> dict:
    ckpt, folder = Path(ckpt), Path(gallery)
    if not queries:
        raise ConfigError("no query: pass --query \"...\" or --queries FILE")
    paths = list_images(folder)
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint {ckpt} not found; pass a checkpoints/best.ckpt or "
                          "last.ckpt written by `tbps train`")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    cache = Path(cache_dir) if cache_dir else ckpt.parent / "search_cache"
    cache_file = cache / f"{fingerprint(ckpt, folder, paths)}.pt"
    text_program = _TextProgram(cache, ckpt)
    module, encode_s = None, None

    def model():
        from .model.checkpoint import load_checkpoint

        return load_checkpoint(ckpt).to(dev).eval()

    if cache_file.is_file():
        stored = torch.load(cache_file, map_location="cpu", weights_only=True)
        feats, kept, bad = stored["features"], stored["kept"], [tuple(b) for b in stored["bad"]]
    else:
        module = model()
        start = time.perf_counter()
        feats, kept, bad = encode_folder(module, paths, dev, batch_size, workers)
        encode_s = time.perf_counter() - start
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"features": feats, "kept": kept, "bad": [list(b) for b in bad]}, cache_file)
    exported = text_program.load()
    if exported is None:
        module = module or model()
        text_program.save(module)
        embed, tokenizer, text_dev = module.embed_texts, module.tokenizer, dev
    else:
        (embed, tokenizer), text_dev = exported, torch.device("cpu")
    start = time.perf_counter()
    with torch.inference_mode():
        text = F.normalize(embed(tokenizer.encode(queries).to(text_dev)).float(), dim=-1).cpu()
        scores, order = (text @ feats.t()).topk(min(topk, len(kept)), dim=1)
    query_ms = (time.perf_counter() - start) * 1e3 / len(queries)
    results = [{"query": q, "results": [
        {"rank": r + 1, "path": str(paths[kept[int(i)]]), "score": round(float(s), 4)}
        for r, (s, i) in enumerate(zip(scores[n], order[n]))]} for n, q in enumerate(queries)]
    return {"checkpoint": str(ckpt), "gallery": str(folder), "images": len(paths),
            "encoded": len(kept), "cached": encode_s is None, "cache_file": str(cache_file),
            "encode_seconds": None if encode_s is None else round(encode_s, 3),
            "images_per_s": None if encode_s is None else round(len(paths) / encode_s, 1),
            "query_ms": round(query_ms, 2),
            "unreadable": {"count": len(bad), "first": [f"{paths[k]}: {why}" for k, why in bad[:5]]},
            "queries": results}


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


def format_results(result: dict) -> str:
    lines = []
    for row in result["queries"]:
        lines.append(f"query: {row['query']}")
        lines += [f"  {h['rank']:>3}. {h['score']:.4f}  {h['path']}" for h in row["results"]]
    enc = ("from cache" if result["cached"] else
           f"encoded in {result['encode_seconds']} s ({result['images_per_s']} images/s)")
    lines.append(f"{result['encoded']} of {result['images']} images ({enc}); "
                 f"{result['query_ms']} ms per query")
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
