"""`tbps check-data`: is a benchmark under a root usable, and if not, what exactly to fix.

One pass over the annotation file and every image it references: layout, per-split counts
against the published sizes, missing and unreadable images (a count and the first few),
empty and duplicated captions, and the known mistakes of each release with their fix
(``docs/protocol.md`` §1). Problems make the data set unusable (non-zero exit);
warnings are reported and leave it usable.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..errors import DatasetError
from .benchmarks import BENCHMARKS, Benchmark
from .records import SplitRecords, annotation_path, read_benchmark

SHOW = 5  # how many examples of each kind of fault are listed

# Folders of CUHK-PEDES' imgs/ that partial downloads lack (IRRA #49, TextReID #4).
_QUERY_FOLDERS = {"train_query", "test_query"}


def _readable(path: Path) -> str | None:
    """None if the image decodes completely, else the reason."""
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _check_layout(spec: Benchmark, root: Path) -> str | None:
    if not root.is_dir():
        return f"the root {root} does not exist; pass the folder that holds {spec.folder}/"
    folder = root / spec.folder
    if folder.is_dir():
        return None
    if (root / spec.annotation).is_file() or (root / "imgs").is_dir():
        return (f"{root} looks like the {spec.folder} folder itself; pass its parent "
                f"(--root {root.parent}), which holds {spec.folder}/")
    near = [p.name for p in root.iterdir() if p.is_dir()
            and p.name.lower().replace("_", "-") == spec.folder.lower()]
    hint = f"; found {near[0]}/, rename it to {spec.folder}/" if near else ""
    return (f"{folder} not found (the folder names are fixed: CUHK-PEDES, ICFG-PEDES, "
            f"RSTPReid){hint}")


def _counts(spec: Benchmark, splits: dict[str, SplitRecords], report: dict) -> None:
    ids_per_split = tuple(len(set(splits[s].image_pids)) for s in spec.splits)
    if ids_per_split in spec.stale_splits:
        report["problems"].append(spec.stale_splits[ids_per_split])
    for name, rec in splits.items():
        got = rec.summary()
        entry = dict(got)
        if name in spec.published:
            want = dict(zip(("identities", "images", "captions"), spec.published[name]))
            entry["published"] = want
            diff = [f"{k} {got[k]:,} (published {want[k]:,})" for k in want if got[k] != want[k]]
            if diff:
                report["warnings"].append(f"{name} split differs from the published sizes: "
                                          + ", ".join(diff))
        report["splits"][name] = entry


def _images(spec: Benchmark, dataset_dir: Path, splits: dict[str, SplitRecords],
            report: dict, verify: bool, workers: int) -> None:
    paths = sorted({p for rec in splits.values() for p in rec.image_paths})
    imgs = dataset_dir / "imgs"
    missing = [p for p in paths if not p.is_file()]
    unreadable: list[tuple[Path, str]] = []
    gone = set(missing)
    present = [p for p in paths if p not in gone]
    if verify:
        with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
            for path, reason in zip(present, pool.map(_readable, present, chunksize=64)):
                if reason:
                    unreadable.append((path, reason))
    report["images_checked"] = len(present) if verify else 0
    report["missing_images"] = {"count": len(missing),
                                "first": [str(p.relative_to(imgs)) for p in missing[:SHOW]]}
    report["unreadable_images"] = {"count": len(unreadable),
                                   "first": [f"{p.relative_to(imgs)} ({why})"
                                             for p, why in unreadable[:SHOW]]}
    if missing:
        by_top: dict[str, int] = defaultdict(int)  # missing images per top-level sub-folder
        for p in missing:
            parts = p.relative_to(imgs).parts
            if len(parts) > 1:
                by_top[parts[0]] += 1
        for top in sorted(t for t in by_top if not (imgs / t).is_dir()):
            fix = ("partial CUHK-PEDES downloads lack train_query/ and test_query/: ask the "
                   "authors for the complete imgs/ folder"
                   if top in _QUERY_FOLDERS else "copy that folder from the original release")
            report["problems"].append(f"the folder {imgs / top}/ is missing ({by_top[top]:,} "
                                      f"images refer to it): {fix}")
        report["problems"].append(
            f"{len(missing):,} of {len(paths):,} images are missing under {imgs}/, e.g. "
            + ", ".join(report["missing_images"]["first"]))
    if unreadable:
        report["problems"].append(
            f"{len(unreadable):,} images cannot be decoded, e.g. "
            + "; ".join(report["unreadable_images"]["first"])
            + ". Replace them from the original release (or train with "
            "data.skip_bad_images=true to skip and count them)")


def _captions(splits: dict[str, SplitRecords], report: dict) -> None:
    empty, dup_within, owners = [], [], defaultdict(set)
    for name, rec in splits.items():
        seen_for_image: dict[int, set[str]] = defaultdict(set)
        for cap, img in zip(rec.captions, rec.caption_image):
            text = " ".join(cap.lower().split())
            where = f"{name}: {rec.image_paths[img].name}"
            if not text:
                empty.append(where)
                continue
            if text in seen_for_image[img]:
                dup_within.append(f"{where}: {text[:60]!r}")
            seen_for_image[img].add(text)
            owners[text].add(rec.image_pids[img])
    shared = [(t, ids) for t, ids in owners.items() if len(ids) > 1]
    report["empty_captions"] = {"count": len(empty), "first": empty[:SHOW]}
    report["duplicate_captions"] = {
        "same_image": {"count": len(dup_within), "first": dup_within[:SHOW]},
        "across_identities": {"count": len(shared), "first": [
            f"{t[:60]!r} (ids {sorted(ids)[:4]})" for t, ids in shared[:SHOW]]}}
    if empty:
        report["warnings"].append(f"{len(empty)} empty captions (they become empty queries or "
                                  f"training texts), e.g. {empty[:SHOW]}")
    if dup_within:
        report["warnings"].append(f"{len(dup_within)} captions repeat another caption of the "
                                  f"same image, e.g. {dup_within[:SHOW]}")
    if shared:
        report["warnings"].append(f"{len(shared)} caption texts are shared by different "
                                  "identities (known in RSTPReid); they cannot be matched "
                                  f"uniquely, e.g. {report['duplicate_captions']['across_identities']['first']}")


def check_dataset(dataset: str, root: str | Path, verify_images: bool = True,
                  workers: int = 8) -> dict:
    """The full report as a dict; ``report['usable']`` is False when there are problems."""
    start = time.perf_counter()
    spec = BENCHMARKS[dataset]
    root = Path(root)
    report: dict = {"dataset": dataset, "root": str(root), "usable": False, "problems": [],
                    "warnings": [], "splits": {}}
    layout = _check_layout(spec, root)
    if layout:
        report["problems"].append(layout)
    else:
        dataset_dir = root / spec.folder
        try:
            report["annotation"] = str(annotation_path(dataset_dir, spec))
            splits = read_benchmark(dataset_dir, spec)
        except DatasetError as exc:
            report["problems"].append(str(exc))
        else:
            _counts(spec, splits, report)
            _images(spec, dataset_dir, splits, report, verify_images, workers)
            _captions(splits, report)
    report["usable"] = not report["problems"]
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['dataset']} under {report['root']}: "
             + ("usable" if report["usable"] else "NOT usable")]
    if report["splits"]:
        lines.append(f"  {'split':<8}{'identities':>12}{'images':>10}{'captions':>10}   published")
        for name, s in report["splits"].items():
            pub = s.get("published")
            pub_text = (f"{pub['identities']:,} / {pub['images']:,} / {pub['captions']:,}"
                        if pub else "-")
            lines.append(f"  {name:<8}{s['identities']:>12,}{s['images']:>10,}"
                         f"{s['captions']:>10,}   {pub_text}")
    if "images_checked" in report:
        lines.append(f"  images: {report['images_checked']:,} decoded, "
                     f"{report['missing_images']['count']:,} missing, "
                     f"{report['unreadable_images']['count']:,} unreadable")
    lines += [f"problem: {p}" for p in report["problems"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append(f"({report['seconds']} s)")
    return "\n".join(lines)
