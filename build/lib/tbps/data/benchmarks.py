"""What is fixed about each benchmark's original release: folder, annotation file, fields,
splits and published sizes (``docs/protocol.md`` §1), plus the known wrong files that
users end up with and what to do about them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Benchmark:
    name: str                  # the --dataset / data.dataset name
    folder: str                # under the data root (IRRA's hard-coded names)
    annotation: str            # JSON list of per-image records, inside the folder
    path_field: str            # the record field holding the image path relative to imgs/
    splits: tuple[str, ...]    # the values the 'split' field may take
    # split -> (identities, images, captions) of the official release
    published: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # file name users have instead of `annotation` -> what to do
    wrong_annotations: dict[str, str] = field(default_factory=dict)
    # split -> identity counts of a known stale release -> what to do
    stale_splits: dict[tuple[int, ...], str] = field(default_factory=dict)


CUHK_PEDES = Benchmark(
    "cuhk-pedes", "CUHK-PEDES", "reid_raw.json", "file_path", ("train", "val", "test"),
    published={"train": (11003, 34054, 68126), "val": (1000, 3078, 6158),
               "test": (1000, 3074, 6156)},
    wrong_annotations={"caption_all.json": (
        "caption_all.json is the raw release without splits; every CLIP-era method reads "
        "reid_raw.json (the same records with a 'split' field): ask the CUHK-PEDES authors "
        "for it or take it from the IRRA instructions, and put it next to caption_all.json")},
)

ICFG_PEDES = Benchmark(
    "icfg-pedes", "ICFG-PEDES", "ICFG-PEDES.json", "file_path", ("train", "test"),
    published={"train": (3102, 34674, 34674), "test": (1000, 19848, 19848)},
    wrong_annotations={"ICFG_PEDES.json": (
        "the annotation file is named with a hyphen, ICFG-PEDES.json (IRRA's README tree "
        "shows an underscore, its code opens the hyphenated name): rename ICFG_PEDES.json "
        "to ICFG-PEDES.json")},
)

RSTPREID = Benchmark(
    "rstpreid", "RSTPReid", "data_captions.json", "img_path", ("train", "val", "test"),
    published={"train": (3701, 18505, 37010), "val": (200, 1000, 2000),
               "test": (200, 1000, 2000)},
    stale_splits={(3901, 100, 100): (
        "this data_captions.json has the old, wrong split (3,901/100/100 identities); the "
        "RSTPReid authors corrected it to 3,701/200/200: download data_captions.json again "
        "from NjtechCVLab/RSTPReid-Dataset")},
)

# SynthPedes writes the CUHK-PEDES layout; its sizes depend on the generator's knobs.
SYNTHPEDES = Benchmark("synthpedes", "CUHK-PEDES", "reid_raw.json", "file_path",
                       ("train", "val", "test"))

BENCHMARKS = {b.name: b for b in (CUHK_PEDES, ICFG_PEDES, RSTPREID, SYNTHPEDES)}
REAL_BENCHMARKS = ("cuhk-pedes", "icfg-pedes", "rstpreid")
