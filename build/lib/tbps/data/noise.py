"""Noisy correspondence as in RDE: a share of training captions moved to other pairs.

RDE shuffles the captions of a fixed random subset of training pairs among themselves and
keeps each image's person id, recording which pairs no longer match. We do the same with a
seeded generator (no permutation files to ship), moving every chosen caption to an image of
a *different* identity where that is possible, so that the rate is the share of truly
mismatched pairs. The flag is kept per caption for analysis (``caption_noisy``).
"""

from __future__ import annotations

import numpy as np

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
