"""Figures for the notebooks (matplotlib): attention over images, ranked galleries with the
true matches marked, and per-query score distributions."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .features import EncodedSplit
from .retrieval import PerQuery


def show_image(ax, path, heat: torch.Tensor | None = None, size=(64, 192), alpha: float = 0.55):
    """The image at ``path`` resized to ``size`` (w, h), with ``heat`` [gh, gw] over it."""
    with Image.open(path) as im:
        ax.imshow(np.asarray(im.convert("RGB").resize(size)))
    if heat is not None:
        up = F.interpolate(heat[None, None].float(), size=(size[1], size[0]), mode="bilinear",
                           align_corners=False)[0, 0]
        ax.imshow(up.cpu().numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def wrap(text: str, width: int = 28, lines: int = 4) -> str:
    return "\n".join(textwrap.wrap(text, width)[:lines])


def plot_topk(split: EncodedSplit, result: PerQuery, queries: list[int], k: int = 10):
    """One row per query: its caption, then the top-k images, true matches framed green."""
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.3 * (k + 1), 2.6 * len(queries)),
                             squeeze=False)
    for row, q in enumerate(queries):
        ax = axes[row, 0]
        ax.axis("off")
        ax.text(0, 0.5, wrap(split.captions[q], 22, 8), fontsize=7, va="center")
        ax.set_title(f"first match: {int(result.first_match[q])}", fontsize=7, loc="left")
        for j in range(k):
            ax = axes[row, j + 1]
            g = int(result.topk[q, j])
            show_image(ax, split.gallery_paths[g])
            hit = bool(result.topk_match[q, j])
            for side in ax.spines.values():
                side.set_edgecolor("limegreen" if hit else "lightgray")
                side.set_linewidth(4 if hit else 1)
            ax.set_title(f"{j + 1}", fontsize=7)
    fig.tight_layout()
    return fig


def plot_distribution(result: PerQuery):
    """AP histogram (R@1 hits vs misses) and the rank of the first match."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    ap, r1 = result.ap.numpy(), result.r1.numpy()
    a.hist([ap[r1], ap[~r1]], bins=20, range=(0, 1), stacked=True,
           label=[f"R@1 hit ({r1.mean():.0%})", "R@1 miss"], color=["seagreen", "indianred"])
    a.set_xlabel("average precision per query")
    a.set_ylabel("queries")
    a.set_title(f"mAP {100 * ap.mean():.1f}")
    a.legend(fontsize=8)
    first = result.first_match.numpy()
    b.hist(np.clip(first, 1, 51), bins=np.arange(1, 53) - 0.5, color="steelblue")
    b.set_xlabel("rank of the first true match (51 = beyond 50)")
    b.set_title(f"R@1 {100 * (first == 1).mean():.1f}, R@10 {100 * (first <= 10).mean():.1f}")
    fig.tight_layout()
    return fig
