"""`tbps bench --only data`: SynthPedes generation on one core and reading a CUHK-PEDES-sized
annotation file into records. Speed figures live here, never in a test's assertion: the
same machine runs 1.5x slower on a loaded day and another kind of processor 2-3x."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path


def bench_generation(identities: int = 150, images_per_identity: int = 4) -> dict:
    """Images per second of CPU time of one process (one core, whatever else runs)."""
    from ..data.synthpedes.generate import SynthConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        summary = generate(tmp, SynthConfig(identities=identities,
                                            images_per_identity=images_per_identity), workers=1)
        seconds = time.process_time() - start
    return {"images": summary["images"], "cpu_seconds": round(seconds, 2),
            "images_per_s_one_core": round(summary["images"] / seconds, 1)}


def write_cuhk_sized_annotation(folder: Path, images: int = 40206) -> int:
    """A CUHK-PEDES-sized reid_raw.json (11,003 / 1,000 / 1,000 identities, 2 captions per
    image, as the real file); returns the number of captions."""
    records = []
    for i in range(images):
        pid = i // 3 + 1
        split = "train" if pid <= 11003 else "val" if pid <= 12003 else "test"
        caps = [f"the man wears a dark jacket with number {i} and grey trousers {k}"
                for k in range(2)]
        records.append({"split": split, "captions": caps, "id": pid,
                        "file_path": f"CUHK0{1 + i % 2}/{i:07d}.png",
                        "processed_tokens": [c.split() for c in caps]})
    d = folder / "CUHK-PEDES"
    d.mkdir(parents=True, exist_ok=True)
    (d / "reid_raw.json").write_text(json.dumps(records))
    return 2 * images


def read_records(root: Path) -> dict:
    """Reads the annotation under ``root`` into the data module's records, timed."""
    from ..data.datamodule import TBPSDataModule

    start = time.perf_counter()
    dm = TBPSDataModule(str(root), "cuhk-pedes", num_workers=0)
    captions = sum(len(r.captions) for r in dm.records.values())
    labels = len(dm.train_labels)
    return {"captions": captions, "train_identities": labels,
            "seconds": round(time.perf_counter() - start, 3)}


def bench_data() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        write_cuhk_sized_annotation(Path(tmp))
        read = read_records(Path(tmp))
    return {"synthpedes_generation": bench_generation(), "read_cuhk_sized_annotation": read}
