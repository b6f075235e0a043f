"""The image files of a gallery folder, for the index (``index.py``): listed with their size
and time, decoded and encoded in batches by a DataLoader, an unreadable file kept with its
reason instead of stopping the pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError, DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(folder: Path) -> dict[str, tuple[int, int]]:
    """{path inside ``folder``: (size, mtime_ns)} of every image file below it; links that
    lead out of the folder are left out (the index serves only what lies inside)."""
    if not folder.is_dir():
        raise ConfigError(f"gallery {folder} is not a folder; pass --gallery DIR")
    root = folder.resolve()
    found = {}
    for p in folder.rglob("*"):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.is_symlink() and not p.resolve().is_relative_to(root):
            continue
        s = p.stat()
        found[p.relative_to(folder).as_posix()] = (s.st_size, s.st_mtime_ns)
    if not found:
        raise ConfigError(f"no images under {folder} (looked for "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))}, in sub-folders too)")
    return found


def encoded_batches(gallery: Path, todo: list[str], encode, batch_size: int, workers: int,
                    flush_every: int):
    """(paths, embeddings [n, D] float32 L2-normalised, kept {name: [n, ...]}, unreadable
    [(path, why)]) per ``flush_every`` images of ``todo``."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_Images(gallery, todo, encode.transform), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate)
    paths, feats, kept, failed = [], [], {}, []
    for idx, images, bad in loader:
        failed += [(todo[k], why) for k, why in bad]
        if images is not None:
            with torch.inference_mode():
                emb, extra = encode(images)
            feats.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
            for name, t in extra.items():
                kept.setdefault(name, []).append(t.cpu().numpy())
            paths += [todo[k] for k in idx]
        if len(paths) + len(failed) >= flush_every:
            yield paths, _cat(feats), {n: _cat(v) for n, v in kept.items()}, failed
            paths, feats, kept, failed = [], [], {}, []
    if paths or failed:
        yield paths, _cat(feats), {n: _cat(v) for n, v in kept.items()}, failed


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros((0, 0), dtype=np.float32)


class _Images:
    """Decoded, transformed images of ``paths``; an unreadable one gives its reason."""

    def __init__(self, folder: Path, paths: list[str], transform) -> None:
        self.folder, self.paths, self.transform = folder, paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        from .data.datasets import load_rgb

        try:
            return k, self.transform(image=load_rgb(self.folder / self.paths[k]))["image"], ""
        except DatasetError as exc:
            return k, None, str(exc.__cause__ or exc)


def _collate(items):
    import torch

    ok = [(k, x) for k, x, _ in items if x is not None]
    bad = [(k, why) for k, x, why in items if x is None]
    return [k for k, _ in ok], (torch.stack([x for _, x in ok]) if ok else None), bad
