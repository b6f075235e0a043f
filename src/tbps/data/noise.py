"""Noisy correspondence as in RDE: a share of training captions moved to other pairs.

RDE shuffles the captions of a fixed random subset of training pairs among themselves and
keeps each image's person id, recording which pairs no longer match. We do the same with a
seeded generator (no permutation files to ship), moving every chosen caption to an image of
a *different* identity where that is possible, so that the rate is the share of truly
mismatched pairs. The flag is kept per caption for analysis (``caption_noisy``).

``apply_noise_permutation`` reads RDE's own files instead (``noiseindex/<data set>_<rate>.npy``,
``data.noise_file``): pair i takes the caption of pair ``perm[i]``, and, as RDE counts them,
a pair is noisy when ``perm[i] != i``. A CUHK-PEDES 20% run then trains on the very pairs of
RDE's table, provided the training pairs are in the annotation file's order (they are: image
by image, each image's captions in order, as IRRA's and RDE's loaders list them).
"""

from __future__ import annotations

import numpy as np

from pathlib import Path

from ..errors import ConfigError
from .records import SplitRecords


def inject_noisy_correspondence(rec: SplitRecords, rate: float, seed: int) -> SplitRecords:
    """Returns new training records where about ``rate`` of the captions belong to another
    identity's image; the images, their ids and the caption order per image stay."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    n = len(rec.captions)
    chosen = np.random.default_rng(seed).permutation(n)[: int(round(rate * n))]
    pids = np.asarray(rec.caption_pids)
    # A cyclic shift over the chosen captions in random order: caption chosen[i] takes the
    # text of chosen[i + 1]. Neighbours of the same identity are rare and are re-drawn.
    rng = np.random.default_rng(seed + 1)
    for _ in range(10):
        source = np.roll(chosen, -1)
        clash = pids[chosen] == pids[source]
        if len(chosen) < 2 or not clash.any():
            break
        chosen = rng.permutation(chosen)
    captions = list(rec.captions)
    noisy = list(rec.caption_noisy)
    recorded = rec.words_per_caption
    words = list(recorded)  # a caption's recorded attribute words travel with it
    if len(chosen) >= 2:
        for dst, src in zip(chosen.tolist(), source.tolist()):
            captions[dst] = rec.captions[src]
            words[dst] = recorded[src]
            noisy[dst] = noisy[dst] or bool(pids[dst] != pids[src])
    return SplitRecords(list(rec.image_paths), list(rec.image_pids), captions,
                        list(rec.caption_image), noisy, words)


def read_noise_permutation(path: str | Path, pairs: int) -> np.ndarray:
    """RDE's permutation file -> int array [pairs]; a clear error when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.noise_file={path}: no such file. RDE's files are "
                          "noiseindex/<CUHK-PEDES|ICFG-PEDES|RSTPReid>_<rate>.npy in its repository")
    try:
        perm = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.noise_file={path}: not a NumPy .npy array ({exc})") from exc
    if perm.ndim != 1 or not np.issubdtype(perm.dtype, np.integer):
        raise ConfigError(f"data.noise_file={path}: holds a {perm.dtype} array of shape "
                          f"{perm.shape}; RDE's files hold one integer per training pair")
    if len(perm) != pairs:
        raise ConfigError(f"data.noise_file={path}: {len(perm)} entries, but this training split "
                          f"has {pairs} (image, caption) pairs: the file belongs to another data "
                          "set or split (RDE's CUHK-PEDES files have 68,126, ICFG-PEDES 34,674, "
                          "RSTPReid 37,010)")
    if not np.array_equal(np.sort(perm), np.arange(pairs)):
        raise ConfigError(f"data.noise_file={path}: not a permutation of 0..{pairs - 1} "
                          f"({pairs - len(np.unique(perm))} repeated entries, values "
                          f"{int(perm.min())}..{int(perm.max())})")
    return perm.astype(np.int64)


def apply_noise_permutation(rec: SplitRecords, perm: np.ndarray) -> SplitRecords:
    """Pair i takes the caption (and its recorded words) of pair ``perm[i]``; noisy where
    ``perm[i] != i``, as RDE records ``real_correspondences``."""
    recorded = rec.words_per_caption
    captions = [rec.captions[j] for j in perm.tolist()]
    words = [recorded[j] for j in perm.tolist()]
    noisy = [bool(rec.caption_noisy[i]) or int(j) != i for i, j in enumerate(perm.tolist())]
    return SplitRecords(list(rec.image_paths), list(rec.image_pids), captions,
                        list(rec.caption_image), noisy, words)
