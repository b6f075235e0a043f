"""The data pipeline alone: JPEG files of CUHK-PEDES-like size (small person crops) decoded,
resized to the training size and augmented as IRRA does, through the real training dataset
and collate function, in images/s."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..data.datamodule import collate_trimmed
from ..data.datasets import PairDataset
from ..data.transforms import train_transform


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Smooth random person-sized crops (CUHK-PEDES images are ~60-160 x 150-400 px)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(150, 400)), int(rng.integers(60, 160))
        small = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        paths.append(folder / f"{i:06d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def bench_loader(n_images: int, workers: int, batch_size: int, image_size: tuple[int, int],
                 epochs: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), n_images)
        ids = torch.zeros(n_images, 77, dtype=torch.long)
        ds = PairDataset(paths, [(i, i, 0) for i in range(n_images)], ids,
                         train_transform(image_size, flip=0.5, pad=10, erase=0.5),
                         [False] * n_images)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                            collate_fn=collate_trimmed, persistent_workers=workers > 0,
                            drop_last=False)
        for _ in loader:  # warm-up epoch: workers start, page cache fills
            pass
        start = time.perf_counter()
        for _ in range(epochs):
            for _ in loader:
                pass
        seconds = time.perf_counter() - start
    return {"images": n_images, "workers": workers, "image_size": list(image_size),
            "images_per_s": round(n_images * epochs / seconds, 1)}
