"""An attention map drawn over its image in the notebooks' colours (jet), encoded as a PNG
data URI the page and API clients can show directly. Unlike the notebooks' uniform wash,
each pixel's opacity follows the map, so the image stays readable where nothing looks."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HEIGHT = 256  # pixels of the drawn overlay; the width keeps the image's aspect


def jet(x: np.ndarray) -> np.ndarray:
    """Matplotlib's "jet" colour map (piecewise linear) of values in [0, 1] -> RGB in [0, 1]."""
    return np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], -1)


def overlay_png(path: Path, heat: torch.Tensor, alpha: float = 0.7) -> str:
    """The image at ``path`` with ``heat`` [gh, gw] in [0, 1] upsampled over it, opaque up
    to ``alpha`` where the map is 1."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        rgb = rgb.resize((max(1, round(HEIGHT * rgb.width / rgb.height)), HEIGHT))
    w, h = rgb.size
    up = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    a = alpha * up[..., None]
    blend = (1 - a) * np.asarray(rgb, dtype=np.float32) / 255 + a * jet(up)
    out = io.BytesIO()
    Image.fromarray((blend * 255).round().astype(np.uint8)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")
