"""Tiny fake copies of the three real benchmark layouts, in their exact on-disk formats
(``docs/protocol.md`` §1), for loader and `tbps check-data` tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

WORDS = ["red", "blue", "black", "white", "coat", "jeans", "bag", "shoes", "short", "long"]


def caption(pid: int, k: int) -> str:
    return (f"A person wearing a {WORDS[pid % 10]} {WORDS[(pid // 10) % 10]} and "
            f"{WORDS[(pid + k) % 10]} shoes, carrying item {k}.")


def _save_images(imgs: Path, rel_paths: list[str]) -> None:
    for i, rel in enumerate(rel_paths):
        p = imgs / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 128), (40 * (i % 6), 90, 160)).save(p)


def write_cuhk(root: Path, with_images: bool = True) -> Path:
    """1-based ids, nested file paths over the real sub-folders, 2 captions per image, one
    test image with 10 captions; train ids 1-4, val 5-6, test 7-8."""
    folders = ["CUHK01", "CUHK03", "Market", "cam_a", "cam_b", "train_query", "test_query"]
    records = []
    for pid in range(1, 9):
        split = "train" if pid <= 4 else "val" if pid <= 6 else "test"
        for j in range(3):
            folder = folders[(pid + j) % len(folders)]
            if split == "test" and j == 0:
                folder = "test_query"
            n_caps = 10 if (pid, j) == (7, 0) else 2
            caps = [caption(pid, k + j) for k in range(n_caps)]
            records.append({"split": split, "captions": caps,
                            "file_path": f"{folder}/{pid:04d}_{j}.png",
                            "processed_tokens": [c.lower().split() for c in caps], "id": pid})
    return _write(root / "CUHK-PEDES", "reid_raw.json", records, "file_path", with_images)


def write_icfg(root: Path, with_images: bool = True) -> Path:
    """0-based ids, train/ and test/ sub-folders, one caption per image, no val split."""
    records = []
    for pid in range(6):
        split = "train" if pid < 4 else "test"
        for j in range(3):
            cap = caption(pid, j)
            records.append({"split": split, "captions": [cap],
                            "file_path": f"{split}/{pid:04d}/{pid:04d}_c{j}_{j:04d}.jpg",
                            "processed_tokens": [cap.lower().split()], "id": pid})
    return _write(root / "ICFG-PEDES", "ICFG-PEDES.json", records, "file_path", with_images)


def write_rstpreid(root: Path, with_images: bool = True, ids: tuple[int, int, int] = (4, 2, 2),
                   images_per_id: int = 3) -> Path:
    """0-based ids, flat `img_path` file names, 2 captions per image."""
    records = []
    pid = 0
    for split, n in zip(("train", "val", "test"), ids):
        for _ in range(n):
            for j in range(images_per_id):
                records.append({"id": pid, "img_path": f"{pid:04d}_c{j + 1}_{j:04d}.jpg",
                                "captions": [caption(pid, j), caption(pid, j + 5)],
                                "split": split})
            pid += 1
    return _write(root / "RSTPReid", "data_captions.json", records, "img_path", with_images)


def _write(folder: Path, name: str, records: list, path_field: str, with_images: bool) -> Path:
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(records))
    if with_images:
        _save_images(folder / "imgs", [r[path_field] for r in records])
    return folder


WRITERS = {"cuhk-pedes": write_cuhk, "icfg-pedes": write_icfg, "rstpreid": write_rstpreid}
