"""A picture of SynthPedes samples with their captions, for the README and for a first look."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from .generate import LAYOUT_DIR


def sample_grid(root: str | Path, out: str | Path, identities: int = 6, per_identity: int = 4,
                split: str = "test", scale: int = 2) -> Path:
    """Draws ``per_identity`` images of each of the first ``identities`` people of ``split``
    (one row each, consecutive rows are usually near-twins) with one caption under each."""
    root = Path(root) / LAYOUT_DIR
    recs = [r for r in json.loads((root / "reid_raw.json").read_text()) if r["split"] == split]
    by_id: dict[int, list[dict]] = {}
    for r in recs:
        by_id.setdefault(r["id"], []).append(r)
    rows = list(by_id.values())[:identities]
    first = Image.open(root / "imgs" / rows[0][0]["file_path"])
    w, h = first.width * scale, first.height * scale
    cell_w, text_h = max(w, 150), 64
    grid = Image.new("RGB", (cell_w * per_identity, (h + text_h) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        for j, rec in enumerate(row[:per_identity]):
            img = Image.open(root / "imgs" / rec["file_path"]).resize((w, h), Image.NEAREST)
            x, y = j * cell_w, i * (h + text_h)
            grid.paste(img, (x + (cell_w - w) // 2, y))
            caption = f"id {rec['id']} ({rec['view']}): {rec['captions'][0]}"
            draw.multiline_text((x + 2, y + h + 1), "\n".join(textwrap.wrap(caption, 30)[:5]),
                                fill="black", spacing=0)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return Path(out)
