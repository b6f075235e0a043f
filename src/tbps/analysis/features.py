"""A trained checkpoint's features of a split, with what is needed to look at them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ..model.module import TBPSModule
from ..train import build_data


@dataclass
class EncodedSplit:
    gallery: torch.Tensor            # [G, D] normalised image features
    gallery_pids: torch.Tensor       # [G]
    gallery_paths: list[Path]
    queries: torch.Tensor            # [Q, D] normalised caption features
    query_pids: torch.Tensor         # [Q]
    captions: list[str]
    caption_image: list[int]        # the image each caption was written for
    attribute_words: list[list[str]] = field(default_factory=list)  # SynthPedes only


def project_path(relative: str | Path) -> Path:
    """A path the config holds relative to where `make train` ran (``runs``, ``data``),
    found from the working folder or one of its parents: a notebook's kernel starts in
    ``notebooks/``, one level below."""
    relative = Path(relative)
    if relative.is_absolute():
        return relative
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / relative).exists():
            return folder / relative
    return here / relative


def newest_checkpoint(runs: str | Path = "runs", experiment: str = "synthetic") -> Path:
    found = sorted(project_path(runs).glob(f"{experiment}/*/checkpoints/best.ckpt"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {runs}/{experiment}/*/checkpoints/best.ckpt here or in a "
                                f"folder above {Path.cwd()}: run `make train` first, or set "
                                "TBPS_CKPT to a checkpoint")
    return found[-1]


def checkpoint_data(module: TBPSModule, data_root: str | None = None):
    """The data module a checkpoint was trained with (its tokenizer set, no workers), over
    the run's data where it trained (not a new copy generated beside a notebook)."""
    data = dict(module.cfg["data"], num_workers=0, pin_memory=False)
    data["root"] = str(project_path(data_root if data_root is not None else data["root"]))
    dm = build_data(OmegaConf.create({"data": data}))
    dm.set_tokenizer(module.tokenizer)
    return dm


@torch.inference_mode()
def encode_split(module: TBPSModule, split: str = "test", data_root: str | None = None,
                 batch_size: int = 128) -> EncodedSplit:
    """Encodes a split with the data configuration the checkpoint was trained with."""
    dm = checkpoint_data(module, data_root)
    rec = dm.records[split]
    module.eval()
    gallery_loader, query_loader = dm._eval_loaders(split)
    dev = next(module.parameters()).device
    g = torch.cat([module.embed_images(b["image"].to(dev)).float() for b in gallery_loader])
    q = torch.cat([module.embed_texts(b["caption_ids"].to(dev)).float() for b in query_loader])
    words = _attribute_words(dm.root / dm.benchmark.folder / dm.benchmark.annotation, split)
    return EncodedSplit(F.normalize(g, dim=-1).cpu(), torch.tensor(rec.image_pids), rec.image_paths,
                        F.normalize(q, dim=-1).cpu(), torch.tensor(rec.caption_pids),
                        rec.captions, rec.caption_image, words)


def _attribute_words(annotation: Path, split: str) -> list[list[str]]:
    """Per caption, the attribute words SynthPedes records (empty for real data sets)."""
    try:
        recs = [r for r in json.loads(annotation.read_text()) if r.get("split") == split]
    except (OSError, ValueError):
        return []
    return [list(w) for r in recs for w in r.get("attribute_words", [[]] * len(r["captions"]))]
