"""Common records that every data-set adapter produces, and the reader of the original
annotation files (one JSON list of per-image records per benchmark).

The train unit is one (image, caption) pair as in IRRA; evaluation uses all images of a
split as the gallery and all their captions as queries, matched by person id. Ids stay raw
here (CUHK-PEDES 1-based, the others 0-based); the data module maps training ids to
classifier labels, which reproduces IRRA's ``id - 1`` shift for CUHK-PEDES.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from .benchmarks import BENCHMARKS, CUHK_PEDES, Benchmark


@dataclass
class SplitRecords:
    """One split: images with their person ids, and captions pointing at their image."""

    image_paths: list[Path] = field(default_factory=list)
    image_pids: list[int] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_image: list[int] = field(default_factory=list)  # index into image_paths
    caption_noisy: list[bool] = field(default_factory=list)
    # SynthPedes records each caption's attribute words (ground truth for attribute
    # masking); None where the annotation has none, as in every real data set
    caption_words: list[list[str] | None] = field(default_factory=list)

    @property
    def words_per_caption(self) -> list[list[str] | None]:
        """``caption_words``, or None for every caption when the records carry none."""
        return self.caption_words or [None] * len(self.captions)

    @property
    def caption_pids(self) -> list[int]:
        return [self.image_pids[i] for i in self.caption_image]

    def summary(self) -> dict[str, int]:
        return {"identities": len(set(self.image_pids)), "images": len(self.image_paths),
                "captions": len(self.captions)}

    def select_identities(self, pids: set[int]) -> SplitRecords:
        """The records of the given identities only (for a held-out validation split)."""
        out = SplitRecords()
        new_index: dict[int, int] = {}
        for i, (path, pid) in enumerate(zip(self.image_paths, self.image_pids)):
            if pid in pids:
                new_index[i] = len(out.image_paths)
                out.image_paths.append(path)
                out.image_pids.append(pid)
        for cap, img, noisy, words in zip(self.captions, self.caption_image, self.caption_noisy,
                                          self.words_per_caption):
            if img in new_index:
                out.captions.append(cap)
                out.caption_image.append(new_index[img])
                out.caption_noisy.append(noisy)
                out.caption_words.append(words)
        return out

    def without_noisy_captions(self) -> SplitRecords:
        """The same images with only the captions not flagged noisy (``caption_noisy``)."""
        keep = [k for k, noisy in enumerate(self.caption_noisy) if not noisy]
        return SplitRecords(image_paths=list(self.image_paths), image_pids=list(self.image_pids),
                            captions=[self.captions[k] for k in keep],
                            caption_image=[self.caption_image[k] for k in keep],
                            caption_noisy=[False] * len(keep),
                            caption_words=[self.caption_words[k] for k in keep]
                            if self.caption_words else [])


def _check_record(rec: object, k: int, path: Path, spec: Benchmark) -> dict:
    fields = {"split": str, "captions": list, spec.path_field: str, "id": int}
    if not isinstance(rec, dict):
        raise DatasetError(f"{path}: record {k} is a {type(rec).__name__}, not an object. Each "
                           f"entry of {spec.annotation} must be an object with the fields "
                           f"{sorted(fields)}; re-export the annotation file.")
    where = f"record {k} ({rec.get(spec.path_field, 'no ' + spec.path_field)})"
    for name, kind in fields.items():
        if name not in rec:
            hint = ""
            if name == spec.path_field and "file_path" in rec and spec.path_field == "img_path":
                hint = " RSTPReid's data_captions.json names the image path 'img_path'."
            elif name == spec.path_field and "img_path" in rec:
                hint = " This looks like RSTPReid's format; did you mean --dataset rstpreid?"
            elif name == "split":
                hint = (" Without 'split' this is not the split annotation file"
                        + (": use reid_raw.json, not caption_all.json." if spec is CUHK_PEDES
                           else "."))
            raise DatasetError(f"{path}: {where} has no field '{name}'. {spec.name} records "
                               f"need {sorted(fields)}.{hint}")
        value = rec[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DatasetError(
                f"{path}: {where} field '{name}' is {type(value).__name__} {value!r:.60}, "
                f"expected {kind.__name__}; fix that record or re-export the annotation file.")
    if not all(isinstance(c, str) for c in rec["captions"]):
        raise DatasetError(f"{path}: {where} field 'captions' must be a list of strings; fix "
                           "that record.")
    if rec["split"] not in spec.splits:
        raise DatasetError(f"{path}: {where} field 'split' is {rec['split']!r}; {spec.name} "
                           f"splits are {list(spec.splits)}.")
    return rec


def _attribute_words(rec: dict, k: int, path: Path) -> list[list[str] | None]:
    """SynthPedes' per-caption attribute words; [None, ...] where the record has none."""
    words = rec.get("attribute_words")
    if words is None:
        return [None] * len(rec["captions"])
    if not (isinstance(words, list) and len(words) == len(rec["captions"])
            and all(isinstance(w, list) and all(isinstance(x, str) for x in w) for w in words)):
        raise DatasetError(f"{path}: record {k} field 'attribute_words' must be a list of word "
                           f"lists, one per caption ({len(rec['captions'])}); regenerate the data "
                           "set (`tbps synth`) or delete the field")
    return [list(w) for w in words]


def annotation_path(dataset_dir: Path, spec: Benchmark) -> Path:
    """The annotation file, or a DatasetError that recognises the usual wrong files."""
    path = dataset_dir / spec.annotation
    if path.is_file():
        return path
    for wrong, fix in spec.wrong_annotations.items():
        if (dataset_dir / wrong).is_file():
            raise DatasetError(f"{path} not found, but {dataset_dir / wrong} is there: {fix}.")
    where = ("the folder does not exist" if not dataset_dir.is_dir() else
             f"it holds {sorted(p.name for p in dataset_dir.iterdir())[:8]}")
    raise DatasetError(
        f"{path} not found ({where}). The {spec.name} layout is <root>/{spec.folder}/"
        f"{spec.annotation} with images under <root>/{spec.folder}/imgs/; set data.root (or "
        f"DATA_ROOT, or --root) to the folder that holds {spec.folder}/.")


def load_annotation(path: Path) -> list:
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); re-download or re-export it.") from exc
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{path} must hold a non-empty JSON list of per-image records, found "
                           f"{type(data).__name__}; re-export the annotation file.")
    return data


def read_benchmark(dataset_dir: str | Path, spec: Benchmark | str = CUHK_PEDES
                   ) -> dict[str, SplitRecords]:
    """Reads ``<dataset_dir>/<annotation>`` into per-split records, as IRRA does: one
    gallery image per record, every caption kept (some CUHK-PEDES images have 10), image
    paths ``<dataset_dir>/imgs/<file_path or img_path>``."""
    spec = BENCHMARKS[spec] if isinstance(spec, str) else spec
    root = Path(dataset_dir)
    path = annotation_path(root, spec)
    imgs = root / "imgs"
    splits = {s: SplitRecords() for s in spec.splits}
    for k, raw in enumerate(load_annotation(path)):
        rec = _check_record(raw, k, path, spec)
        sp = splits[rec["split"]]
        index = len(sp.image_paths)
        sp.image_paths.append(imgs / rec[spec.path_field])
        sp.image_pids.append(rec["id"])
        captions = rec["captions"]
        sp.captions.extend(captions)
        sp.caption_image.extend([index] * len(captions))
        # SynthPedes' ground truth; real files have no such field
        noisy = rec.get("caption_is_noisy") or [False] * len(captions)
        sp.caption_noisy.extend(bool(f) for f in noisy)
        sp.caption_words.extend(_attribute_words(rec, k, path))
    return splits


def read_cuhk_pedes(dataset_dir: str | Path) -> dict[str, SplitRecords]:
    return read_benchmark(dataset_dir, CUHK_PEDES)
