"""Torch datasets over common records: training pairs, gallery images, query captions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DatasetError

log = logging.getLogger(__name__)


def load_rgb(path: Path) -> np.ndarray:
    """Decodes an image file to an RGB uint8 array [H, W, 3]; names the file on failure."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}. Check that the file exists and is "
                           "a complete image; `tbps check-data` lists every such file.") from exc


class PairDataset(Dataset):
    """One item per (image, caption) pair, IRRA's unit of training.

    An unreadable image stops training with its path, or, with ``skip_bad_images``, gives
    ``None``: the collate function drops it and counts it (``train/skipped_images``). It is
    never retried, unlike IRRA's endless retry loop.

    With ``resize`` (``data.cache_images``), each image is decoded and resized once and kept
    in memory (in each loader worker, which lives across epochs); ``transform`` is then the
    random rest of the pipeline (``augment_transform``).
    """

    def __init__(self, image_paths: list[Path], pairs: list[tuple[int, int, int]],
                 caption_ids: torch.Tensor, transform, noisy: list[bool],
                 skip_bad_images: bool = False,
                 annotations: dict[str, torch.Tensor] | None = None, resize=None) -> None:
        self.image_paths, self.pairs = image_paths, pairs  # (image index, caption index, label)
        self.resize, self.cache = resize, {}
        self.caption_ids, self.transform, self.noisy = caption_ids, transform, noisy
        self.skip_bad_images = skip_bad_images
        self.annotations = annotations or {}  # per-caption token annotations heads asked for

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        img_idx, cap_idx, label = self.pairs[k]
        try:
            pixels = self.pixels(img_idx)
        except DatasetError as exc:
            if not self.skip_bad_images:
                raise
            log.warning("skipping: %s", exc)
            return None
        # albumentations keeps its own generators, seeded from OS entropy; drawing their seed
        # from NumPy's global state (seeded by seed_everything, per worker by Lightning's
        # worker_init_fn, saved with checkpoints) makes augmentation follow the run's seed.
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(np.random.randint(2**31)))
        image = self.transform(image=pixels)["image"]
        return {"image": image, "caption_ids": self.caption_ids[cap_idx], "pid": label,
                "image_id": img_idx, "index": k, "noisy": self.noisy[cap_idx],
                **{name: a[cap_idx].long() for name, a in self.annotations.items()}}

    def pixels(self, img_idx: int) -> np.ndarray:
        if self.resize is None:
            return load_rgb(self.image_paths[img_idx])
        if img_idx not in self.cache:
            self.cache[img_idx] = self.resize(image=load_rgb(self.image_paths[img_idx]))["image"]
        return self.cache[img_idx]


class ImageDataset(Dataset):
    """Gallery images with their person ids."""

    def __init__(self, image_paths: list[Path], pids: list[int], transform) -> None:
        self.image_paths, self.pids, self.transform = image_paths, pids, transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, k: int) -> dict:
        return {"image": self.transform(image=load_rgb(self.image_paths[k]))["image"],
                "pid": self.pids[k]}


class CaptionDataset(Dataset):
    """Query captions (already tokenised) with their person ids."""

    def __init__(self, caption_ids: torch.Tensor, pids: list[int],
                 annotations: dict[str, torch.Tensor] | None = None) -> None:
        self.caption_ids, self.pids = caption_ids, pids
        self.annotations = annotations or {}  # what a re-scoring head reads at inference

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, k: int) -> dict:
        return {"caption_ids": self.caption_ids[k], "pid": self.pids[k],
                **{name: a[k].long() for name, a in self.annotations.items()}}
