"""Common records that every data-set adapter produces, and the CUHK-PEDES reader.

The train unit is one (image, caption) pair as in IRRA; evaluation uses all images of a
split as the gallery and all their captions as queries, matched by person id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError

_FIELDS = {"split": str, "captions": list, "file_path": str, "id": int}


@dataclass
class SplitRecords:
    """One split: images with their person ids, and captions pointing at their image."""

    image_paths: list[Path] = field(default_factory=list)
    image_pids: list[int] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_image: list[int] = field(default_factory=list)  # index into image_paths
    caption_noisy: list[bool] = field(default_factory=list)

    @property
    def caption_pids(self) -> list[int]:
        return [self.image_pids[i] for i in self.caption_image]

    def summary(self) -> dict[str, int]:
        return {"identities": len(set(self.image_pids)), "images": len(self.image_paths),
                "captions": len(self.captions)}


def _check_record(rec: object, k: int, path: Path) -> dict:
    if not isinstance(rec, dict):
        raise DatasetError(f"{path}: record {k} is a {type(rec).__name__}, not an object. Each "
                           "entry of reid_raw.json must be an object with the fields "
                           f"{sorted(_FIELDS)}; re-export the annotation file.")
    for name, kind in _FIELDS.items():
        if name not in rec:
            raise DatasetError(
                f"{path}: record {k} ({rec.get('file_path', 'no file_path')}) has no field "
                f"'{name}'. CUHK-PEDES records need {sorted(_FIELDS)}; if this is "
                "caption_all.json (the raw release without splits), use reid_raw.json instead.")
        if not isinstance(rec[name], kind) or (kind is int and isinstance(rec[name], bool)):
            raise DatasetError(
                f"{path}: record {k} ({rec.get('file_path', '?')}) field '{name}' is "
                f"{type(rec[name]).__name__} {rec[name]!r:.60}, expected {kind.__name__}; "
                "fix that record or re-export the annotation file.")
    if not all(isinstance(c, str) for c in rec["captions"]):
        raise DatasetError(f"{path}: record {k} ({rec['file_path']}) field 'captions' must be a "
                           "list of strings; fix that record.")
    if rec["split"] not in ("train", "val", "test"):
        raise DatasetError(f"{path}: record {k} ({rec['file_path']}) field 'split' is "
                           f"{rec['split']!r}; it must be 'train', 'val' or 'test'.")
    return rec


def read_cuhk_pedes(dataset_dir: str | Path) -> dict[str, SplitRecords]:
    """Reads ``<dataset_dir>/reid_raw.json`` (CUHK-PEDES format) into train/val/test records.

    Image paths are ``<dataset_dir>/imgs/<file_path>``. Person ids are kept raw here; the
    data module maps training ids to classifier indices.
    """
    root = Path(dataset_dir)
    path = root / "reid_raw.json"
    if not path.is_file():
        hint = (" Found caption_all.json, the raw release without splits: ask the authors "
                "for reid_raw.json or use the split version that IRRA documents."
                if (root / "caption_all.json").is_file() else "")
        raise DatasetError(
            f"{path} not found. The CUHK-PEDES layout is <root>/CUHK-PEDES/reid_raw.json with "
            f"images under <root>/CUHK-PEDES/imgs/; set data.root (or DATA_ROOT) to the folder "
            f"that holds CUHK-PEDES/.{hint}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); re-download or re-export it.") from exc
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{path} must hold a non-empty JSON list of per-image records, found "
                           f"{type(data).__name__}; re-export the annotation file.")
    splits = {s: SplitRecords() for s in ("train", "val", "test")}
    for k, raw in enumerate(data):
        rec = _check_record(raw, k, path)
        sp = splits[rec["split"]]
        sp.image_paths.append(root / "imgs" / rec["file_path"])
        sp.image_pids.append(rec["id"])
        noisy = rec.get("caption_is_noisy") or [False] * len(rec["captions"])
        for cap, flag in zip(rec["captions"], noisy):
            sp.captions.append(cap)
            sp.caption_image.append(len(sp.image_paths) - 1)
            sp.caption_noisy.append(bool(flag))
    return splits
