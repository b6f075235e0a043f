"""Writes a SynthPedes data set in the CUHK-PEDES layout (``tbps synth``).

Output: ``<out>/CUHK-PEDES/imgs/synth/<id>_<n>.jpg`` and ``<out>/CUHK-PEDES/reid_raw.json``
(a list of per-image records with ``split``, ``captions``, ``file_path``, ``id`` (1-based),
``processed_tokens``) plus SynthPedes' own fields: ``attribute_words`` (per caption),
``attribute_mentions`` (per caption, the identity's attribute values it states),
``identities_fitted`` (per caption, how many identities of its split agree with every
value it states: 1 for a caption that singles its person out, many for a vague one),
``caption_is_noisy`` (per caption), ``view`` and ``attributes`` (the identity). Every
image draws from its own seeded generator, so the output is byte-identical for a seed
whatever the number of worker processes.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Annotated
from pathlib import Path

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from ...errors import ConfigError
from ...settings_types import NonNegativeInt, PositiveInt, Rate

from .attributes import identity_families
from .captions import make_caption
from .render import random_shot, render

LAYOUT_DIR = "CUHK-PEDES"
META_FILE = "synthpedes.json"
# Bumped whenever the output for a given config changes, so stale data sets are regenerated.
GENERATOR_VERSION = 4


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; the defaults make the data set of ``make train``. The types
    state the ranges (``check_synth_config`` enforces them)."""

    identities: Annotated[int, Field(ge=12)] = 800  # enough families for three splits
    images_per_identity: PositiveInt = 4
    captions_per_image: PositiveInt = 2
    noise_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # share swapped to another identity
    omit_rate: Rate = 0.12  # chance that a caption leaves out each optional detail
    brief_rate: Rate = 0.0  # share of brief captions ("A man in a jacket."), which fit many
    height: Annotated[int, Field(ge=16)] = 192
    width: Annotated[int, Field(ge=8)] = 64
    val_share: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.08
    test_share: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.13
    seed: NonNegativeInt = 0


def check_synth_config(cfg: SynthConfig) -> SynthConfig:
    """Refuses out-of-range knobs with one message naming each (a ``ConfigError``)."""
    from ...settings import validation_message

    try:
        return TypeAdapter(SynthConfig).validate_python(asdict(cfg))
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "SynthPedes option")) from None


def _tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9\-]+", caption.lower())


def _family_splits(n_families: int, cfg: SynthConfig, rng: np.random.Generator) -> list[str]:
    """Assigns whole families to splits, so near-twins share a gallery."""
    order = rng.permutation(n_families)
    n_test = max(1, round(n_families * cfg.test_share))
    n_val = max(1, round(n_families * cfg.val_share))
    split = ["train"] * n_families
    for k in order[:n_test]:
        split[k] = "test"
    for k in order[n_test:n_test + n_val]:
        split[k] = "val"
    return split


def _render_one(job: tuple) -> tuple[dict, bytes]:
    """Renders one image and its captions; pure in its arguments (seeded per image)."""
    ident, pid, n, split, cfg = job
    rng = np.random.default_rng([cfg.seed, pid, n])
    shot = random_shot(rng)
    img = render(ident, shot, (cfg.height, cfg.width), rng)
    caps = [make_caption(ident, shot.view, rng, cfg.omit_rate, cfg.brief_rate)
            for _ in range(cfg.captions_per_image)]
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)  # CUHK-PEDES ships JPEG and PNG; JPEG is 5x faster to write
    rec = {
        "split": split,
        "captions": [c for c, _, _ in caps],
        "file_path": f"synth/{pid:05d}_{n:02d}.jpg",
        "id": pid,
        "processed_tokens": [_tokens(c) for c, _, _ in caps],
        "attribute_words": [w for _, w, _ in caps],
        "attribute_mentions": [m for _, _, m in caps],
        "caption_is_noisy": [False] * len(caps),
        "view": shot.view,
    }
    return rec, buf.getvalue()


def _add_caption_noise(records: list[dict], rate: float, rng: np.random.Generator) -> int:
    """RDE's noisy-correspondence protocol: a share of training captions is shuffled among
    themselves so that it describes another identity; the flag is kept per caption."""
    slots = [(r, k) for r in records if r["split"] == "train" for k in range(len(r["captions"]))]
    n_noisy = int(round(rate * len(slots)))
    if n_noisy < 2:
        return 0
    chosen = [slots[k] for k in rng.choice(len(slots), size=n_noisy, replace=False)]
    moved = ("captions", "processed_tokens", "attribute_words", "attribute_mentions",
             "identities_fitted")  # what belongs to the caption's text travels with it
    texts = [([r[f][k] for f in moved], r["id"]) for r, k in chosen]
    perm = rng.permutation(n_noisy)
    changed = 0
    for (r, k), j in zip(chosen, perm):
        values, src = texts[j]
        for f, v in zip(moved, values):
            r[f][k] = v
        r["caption_is_noisy"][k] = src != r["id"]
        changed += src != r["id"]
    return changed


def _count_identities_fitted(records: list[dict]) -> None:
    """Per caption, the identities of its split that agree with every value it states."""
    people: dict[str, dict[int, dict]] = {}
    for r in records:
        people.setdefault(r["split"], {})[r["id"]] = r["attributes"]
    for r in records:
        split = people[r["split"]].values()
        r["identities_fitted"] = [sum(all(a[k] == v for k, v in said.items()) for a in split)
                                  for said in r["attribute_mentions"]]


# near-twins per family: the "one-to-many" of SynthPedes (a caption fits more than its own
# person only by leaving out what tells its family apart)
FAMILY_SIZE = (2, 4)


def draw_records(cfg: SynthConfig, workers: int = 1, family_size: tuple[int, int] = FAMILY_SIZE
                 ) -> list[tuple[dict, bytes]]:
    """Every image of the data set ``cfg`` describes, as (its record, its JPEG bytes), each
    record with its identity's ``attributes`` and its captions' ``identities_fitted``;
    nothing written and no caption noise yet (``generate`` does both)."""
    rng = np.random.default_rng(cfg.seed)
    families = identity_families(rng, cfg.identities, family_size=family_size)
    splits = _family_splits(len(families), cfg, rng)
    jobs, attrs = [], {}
    pid = 0
    for fam, split in zip(families, splits):
        for ident in fam:
            pid += 1  # CUHK-PEDES ids are 1-based
            attrs[pid] = ident
            jobs += [(ident, pid, n, split, cfg) for n in range(cfg.images_per_identity)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_render_one, jobs, chunksize=32))
    else:
        results = [_render_one(j) for j in jobs]
    for rec, _ in results:
        rec["attributes"] = attrs[rec["id"]].to_dict()
    _count_identities_fitted([rec for rec, _ in results])
    return results


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), workers: int = 1) -> dict:
    """Writes the data set under ``out`` and returns a summary (counts, seconds, images/s)."""
    cfg = check_synth_config(cfg)
    if workers < 1:
        raise ConfigError(f"workers={workers}: use at least 1 process")
    start = time.perf_counter()
    root = Path(out) / LAYOUT_DIR
    (root / "imgs" / "synth").mkdir(parents=True, exist_ok=True)
    records = []
    for rec, png in draw_records(cfg, workers):
        (root / "imgs" / rec["file_path"]).write_bytes(png)
        records.append(rec)
    noisy = _add_caption_noise(records, cfg.noise_rate, np.random.default_rng([cfg.seed, 7]))
    (root / "reid_raw.json").write_text(json.dumps(records, indent=0, sort_keys=True))
    seconds = time.perf_counter() - start
    summary = {
        "config": asdict(cfg),
        "images": len(records),
        "identities": len({r["id"] for r in records}),
        "noisy_captions": noisy,
        "per_split": {s: sum(r["split"] == s for r in records) for s in ("train", "val", "test")},
        "seconds": round(seconds, 2),
        "images_per_s": round(len(records) / seconds, 1),
    }
    # Written last: its presence marks a complete data set with these options.
    meta = {"config": asdict(cfg), "version": GENERATOR_VERSION}
    (root / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return summary


def is_complete(out: str | Path, cfg: SynthConfig) -> bool:
    """True when ``out`` holds a finished data set generated with exactly ``cfg``."""
    meta = Path(out) / LAYOUT_DIR / META_FILE
    try:
        found = json.loads(meta.read_text())
        # a knob added since the data set was written reads as its default, which is what
        # the generator of that day did (brief_rate: none)
        written = {**asdict(SynthConfig()), **found["config"]}
        return written == asdict(cfg) and found.get("version") == GENERATOR_VERSION
    except (OSError, ValueError, KeyError):
        return False


