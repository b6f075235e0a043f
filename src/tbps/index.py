"""The on-disk gallery index that `tbps index`, `tbps search` and `tbps serve` rank from.

One index holds one folder of images encoded by one checkpoint:

- ``index.sqlite``: one row per image file, keyed by its path inside the folder with its
  size and modification time (a file whose size or time changed is encoded again; a
  content hash would read every byte of a million photos at each update to catch the rare
  edit that keeps both), the shard and row holding its features, the unreadable files
  with the reason, and the checkpoint's fingerprint. Every change is one SQLite
  transaction, so the index is never half-written.
- ``shards/NNNNNN/``: the features of one flushed batch of images as ``.npy`` files (the
  retrieval embedding, L2-normalised, and whatever the model's re-scoring head keeps per
  image), written under a temporary name and renamed into place before the transaction
  that points at them. Re-scoring reads them memory-mapped, only for the candidates.
- ``vectors-<generation>.faiss``: the FAISS index over the live embeddings, rebuilt from
  the shards when the images changed (``faiss_index``).

A killed encoding loses at most the batch it had not flushed: the next update encodes the
files the database does not hold yet (a shard renamed but never committed is deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .gallery_files import encoded_batches, list_images
from .vectors import VectorIndex, build_vector_index, choose_kind, read_vector_index

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT UNIQUE NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    shard INTEGER NOT NULL, row INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS unreadable (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL);
"""


def checkpoint_fingerprint(ckpt: Path) -> str:
    """A checkpoint's identity that survives copying and costs no full read: its size and
    its last 1 MiB, which for torch's zip format is the central directory holding the
    CRC-32 of every stored tensor (so any change of a weight changes it)."""
    size = ckpt.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with ckpt.open("rb") as f:
        f.seek(max(0, size - 2**20))
        h.update(f.read())
    return h.hexdigest()[:20]


def default_index_dir(ckpt: Path, gallery: Path) -> Path:
    """Beside the checkpoint, one folder per gallery folder."""
    key = hashlib.sha1(str(gallery.resolve()).encode()).hexdigest()[:10]
    return ckpt.parent / "search_index" / f"{gallery.resolve().name or 'root'}-{key}"


@dataclass
class UpdateReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reencoded: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # new this update
    encoded: int = 0
    encode_seconds: float = 0.0

    def summary(self) -> dict:
        return {"added": len(self.added), "removed": len(self.removed),
                "reencoded": len(self.reencoded), "encoded": self.encoded,
                "new_unreadable": len(self.unreadable),
                "encode_seconds": round(self.encode_seconds, 3),
                "images_per_s": (round(self.encoded / self.encode_seconds, 1)
                                 if self.encode_seconds else None)}


class GalleryIndex:
    """One folder's images encoded by one checkpoint (see the module docstring)."""

    def __init__(self, root: Path, gallery: Path, db: sqlite3.Connection) -> None:
        self.root, self.gallery, self.db = root, gallery, db
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, gallery: str | Path, fingerprint: str,
             create: bool = True) -> GalleryIndex:
        """Opens (or creates) the index at ``root`` for ``gallery``; refuses one that another
        checkpoint or another folder built."""
        root, gallery = Path(root), Path(gallery)
        db_file = root / "index.sqlite"
        if not db_file.is_file() and not create:
            raise ConfigError(f"no index at {root}; build one with `tbps index build "
                              f"{gallery} --ckpt CKPT`")
        root.mkdir(parents=True, exist_ok=True)
        try:
            # one connection; `tbps serve` uses it from its worker threads, one at a time
            db = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
            db.executescript(SCHEMA)
            meta = dict(db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{db_file} is not a tbps index ({exc}); delete {root} or pass "
                              "another --index folder") from exc
        index = cls(root, gallery, db)
        if not meta:
            index._set_meta({"version": "1", "checkpoint": fingerprint,
                             "gallery": str(gallery.resolve()), "generation": "0"})
        elif meta.get("checkpoint") != fingerprint:
            raise ConfigError(
                f"the index {root} was built with another checkpoint (fingerprint "
                f"{meta.get('checkpoint')}, this one {fingerprint}); its features would not "
                "be comparable with this model's queries. Rebuild it with `tbps index build "
                f"{gallery} --ckpt CKPT` (which starts it afresh), or pass another --index")
        elif meta.get("gallery") != str(gallery.resolve()):
            raise ConfigError(f"the index {root} belongs to the folder {meta['gallery']}, not "
                              f"{gallery.resolve()}; pass another --index")
        index._drop_orphan_shards()
        return index

    def _set_meta(self, values: dict[str, str]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def _drop_orphan_shards(self) -> None:
        """Shard folders no committed row counts (a killed encoding's last flush)."""
        known = {r for (r,) in self.db.execute("SELECT id FROM shards")}
        for d in (self.root / "shards").glob("*") if (self.root / "shards").is_dir() else []:
            if not (d.name.isdigit() and int(d.name) in known):
                shutil.rmtree(d, ignore_errors=True)

    # --- what is in it ---------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return int(self.meta("generation", "0"))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def info(self) -> dict:
        shards = self.db.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM shards").fetchone()
        size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        return {"index": str(self.root), "gallery": self.meta("gallery"),
                "checkpoint_fingerprint": self.meta("checkpoint"), "images": len(self),
                "unreadable": self.unreadable_count(),
                "dim": int(self.meta("dim", "0")), "kept_per_image": json.loads(
                    self.meta("kept", "{}")), "shards": shards[0],
                "dead_rows": shards[1] - len(self), "generation": self.generation,
                "vector_index": self.meta("vector_kind"), "bytes_on_disk": size}

    def unreadable(self, limit: int | None = None) -> list[tuple[str, str]]:
        sql = "SELECT path, reason FROM unreadable ORDER BY path"
        return list(self.db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")))

    def unreadable_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM unreadable").fetchone()[0]

    def _rows(self, columns: str, ids) -> list[tuple]:
        """``SELECT id, <columns>`` of the entries ``ids``, 900 at a time (SQLite caps the
        number of bound values of one statement)."""
        ids = sorted({int(i) for i in ids})
        out = []
        for s in range(0, len(ids), 900):
            part = ids[s:s + 900]
            out += self.db.execute(f"SELECT id, {columns} FROM entries WHERE id IN "
                                   f"({','.join('?' * len(part))})", part).fetchall()
        return out

    def has(self, path: str) -> bool:
        """Whether ``path`` (inside the gallery) is an indexed image."""
        return self.db.execute("SELECT 1 FROM entries WHERE path = ?", (path,)).fetchone() is not None

    def paths(self, ids: list[int]) -> dict[int, str]:
        return dict(self._rows("path", ids))

    # --- keeping it in step with the folder -----------------------------------------------
    def update(self, encode, batch_size: int = 64, workers: int = 2, flush_every: int = 2048,
               log=None) -> UpdateReport:
        """Encodes the files that are new or changed since the last update and forgets the
        removed ones. ``encode(images [B, 3, H, W]) -> (embedding [B, D], kept {name: [B, ...]})``
        with its ``transform`` attribute the albumentations pipeline for the images."""
        on_disk = list_images(self.gallery)
        known = {p: (s, m) for p, s, m in self.db.execute("SELECT path, size, mtime_ns FROM entries")}
        bad = {p: (s, m) for p, s, m in self.db.execute("SELECT path, size, mtime_ns FROM unreadable")}
        log = log or _progress
        report = UpdateReport()
        report.removed = sorted(p for p in {**known, **bad} if p not in on_disk)
        stale = sorted(p for p, stat in on_disk.items()
                       if (p in known and known[p] != stat) or (p in bad and bad[p] != stat))
        report.reencoded = [p for p in stale if p in known]
        todo = sorted(p for p in on_disk if (p not in known and p not in bad) or p in stale)
        report.added = [p for p in todo if p not in known and p not in bad]
        if report.removed or stale:
            self._forget(report.removed + stale)
        if todo:
            start = time.perf_counter()
            for shard_paths, feats, kept, failed in encoded_batches(
                    self.gallery, todo, encode, batch_size, workers, flush_every):
                self._commit_shard(shard_paths, feats, kept, failed,
                                   {p: on_disk[p] for p in shard_paths + [f for f, _ in failed]})
                report.unreadable += failed
                report.encoded += len(shard_paths)
                if len(todo) > flush_every:
                    log(f"index: {report.encoded + len(report.unreadable):,} of {len(todo):,} "
                        "images encoded")
            report.encode_seconds = time.perf_counter() - start
        return report

    def _forget(self, paths: list[str]) -> None:
        with self._transaction():
            self.db.executemany("DELETE FROM entries WHERE path = ?", [(p,) for p in paths])
            self.db.executemany("DELETE FROM unreadable WHERE path = ?", [(p,) for p in paths])
            self._bump()

    def _bump(self) -> None:
        self._set_meta({"generation": str(self.generation + 1)})

    @contextmanager
    def _transaction(self):
        """One SQLite transaction: all of it lands, or none (autocommit is off inside)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _commit_shard(self, paths: list[str], feats: np.ndarray, kept: dict[str, np.ndarray],
                      failed: list[tuple[str, str]], stats: dict[str, tuple[int, int]]) -> None:
        shard = None
        if paths:
            shard = (self.db.execute("SELECT COALESCE(MAX(id), 0) FROM shards").fetchone()[0] + 1)
            tmp = self.root / "shards" / f".tmp-{shard:06d}-{os.getpid()}"
            tmp.mkdir(parents=True, exist_ok=True)
            np.save(tmp / "embedding.npy", feats)
            for name, arr in kept.items():
                np.save(tmp / f"kept_{name}.npy", arr)
            os.replace(tmp, self.root / "shards" / f"{shard:06d}")
        with self._transaction():
            if shard is not None:
                self.db.execute("INSERT INTO shards VALUES (?, ?)", (shard, len(paths)))
                self.db.executemany("INSERT INTO entries (path, size, mtime_ns, shard, row) "
                                    "VALUES (?, ?, ?, ?, ?)",
                                    [(p, *stats[p], shard, r) for r, p in enumerate(paths)])
                if self.meta("dim") is None:
                    self._set_meta({"dim": str(feats.shape[1]), "kept": json.dumps(
                        {n: [list(a.shape[1:]), str(a.dtype)] for n, a in kept.items()})})
            self.db.executemany("INSERT OR REPLACE INTO unreadable VALUES (?, ?, ?, ?)",
                                [(p, *stats[p], why) for p, why in failed])
            self._bump()

    # --- reading features -----------------------------------------------------------------
    def _shard_array(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._maps:
            self._maps[key] = np.load(self.root / "shards" / f"{shard:06d}" / f"{name}.npy",
                                      mmap_mode="r")
        return self._maps[key]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N] int64, embeddings [N, D] float32) of every live entry, in id order."""
        rows = self.db.execute("SELECT id, shard, row FROM entries ORDER BY id").fetchall()
        dim = int(self.meta("dim", "0"))
        out = np.empty((len(rows), dim), dtype=np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for k, (_, shard, row) in enumerate(rows):
            at, src = by_shard.setdefault(shard, ([], []))
            at.append(k)
            src.append(row)
        for shard, (at, src) in by_shard.items():
            out[at] = self._shard_array(shard, "embedding")[src]
        return ids, out

    def kept(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """What the re-scoring head keeps of the images ``ids`` (rows in that order), read
        from the memory-mapped shards."""
        names = list(json.loads(self.meta("kept", "{}")))
        flat = [int(i) for i in ids]
        where = {i: (s, r) for i, s, r in self._rows("shard, row", flat)}
        return {n: np.stack([self._shard_array(where[i][0], f"kept_{n}")[where[i][1]]
                             for i in flat]) for n in names}

    def vector_index(self, kind: str = "auto", log=None) -> VectorIndex:
        """The FAISS index over the live embeddings, read from disk when it is of this
        generation and kind, built (and saved) otherwise."""
        n = len(self)
        if n == 0:
            raise ConfigError(f"none of the images of {self.gallery} could be read; "
                              f"first failures: {self.unreadable(3)}")
        kind = choose_kind(n) if kind == "auto" else kind
        gen = self.generation
        path = self.root / f"vectors-{gen}-{kind}.faiss"
        if path.is_file():
            return read_vector_index(path)
        log = log or _progress
        start = time.perf_counter()
        ids, feats = self.embeddings()
        index = build_vector_index(feats, ids, kind)
        tmp = path.with_suffix(".tmp")
        index.save(tmp)
        os.replace(tmp, path)
        for old in self.root.glob("vectors-*.faiss"):
            if old != path:
                old.unlink(missing_ok=True)
        self._set_meta({"vector_kind": kind})
        if n > 50_000:
            log(f"index: {kind} vector index over {n:,} images built in "
                f"{time.perf_counter() - start:.1f} s")
        return index


def _progress(line: str) -> None:
    """Progress goes to stderr: stdout carries the JSON of `tbps index` and `tbps search`."""
    print(line, file=sys.stderr, flush=True)
