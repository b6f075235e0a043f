"""The gallery index (`tbps index build|update|info`): only what changed is encoded, a
killed encoding resumes without encoding anything twice beyond its last flush and leaves
no corrupt index, one index belongs to one checkpoint, unreadable files are counted."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import tbps.search as search_mod
from conftest import copy_images
from tbps.cli import main
from tbps.index import GalleryIndex, checkpoint_fingerprint


def _index(capsys, *args):
    status = main(["index", *args, "--workers", "0"])
    out = capsys.readouterr()
    return status, (json.loads(out.out) if status == 0 else out.err)


@pytest.fixture()
def folder(tiny_synth, tmp_path):
    return copy_images(tiny_synth, tmp_path / "photos", 20, "cam2", every=2, first=1)


def _encoded_paths(monkeypatch):
    """Counts the images the model encodes, call by call."""
    seen = []
    real = search_mod.Model.__call__

    def counting(self, images):
        seen.append(len(images))
        return real(self, images)

    monkeypatch.setattr(search_mod.Model, "__call__", counting)
    return seen


def test_update_encodes_only_what_changed(tiny_run, folder, tmp_path, capsys, monkeypatch):
    ckpt = str(tiny_run / "checkpoints" / "best.ckpt")
    idx = str(tmp_path / "idx")
    seen = _encoded_paths(monkeypatch)
    status, built = _index(capsys, "build", str(folder), "--ckpt", ckpt, "--index", idx)
    assert status == 0 and built["images"] == 20 and built["update"]["added"] == 20
    assert sum(seen) == 20 and built["vector_index"] == "flat"
    first = np.load(next((tmp_path / "idx" / "shards").glob("*/embedding.npy")))
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)

    # add two, remove one, change one (new bytes, new size), break one
    shutil.copy(folder / "000.jpg", folder / "new_a.jpg")
    shutil.copy(folder / "002.jpg", folder / "cam2" / "new_b.jpg")
    (folder / "004.jpg").unlink()
    shutil.copy(folder / "cam2" / "001.jpg", folder / "006.jpg")
    (folder / "008.jpg").write_bytes(b"not an image any more")
    seen.clear()
    status, upd = _index(capsys, "update", str(folder), "--ckpt", ckpt, "--index", idx)
    u = upd["update"]
    assert status == 0 and (u["added"], u["removed"], u["reencoded"]) == (2, 1, 2)
    assert sorted(u["added_files"]) == ["cam2/new_b.jpg", "new_a.jpg"]
    assert u["removed_files"] == ["004.jpg"] and u["reencoded_files"] == ["006.jpg", "008.jpg"]
    assert sum(seen) == 3 and u["new_unreadable"] == 1  # 2 new + 006; 008 fails to decode
    assert upd["images"] == 20 and upd["unreadable"] == 1 and upd["dead_rows"] == 3
    assert upd["first_unreadable"][0].startswith("008.jpg: ")

    # nothing changed: nothing encoded; the info verb encodes nothing either
    seen.clear()
    status, same = _index(capsys, "update", str(folder), "--ckpt", ckpt, "--index", idx)
    assert status == 0 and same["update"]["encoded"] == 0 and not seen
    status, info = _index(capsys, "info", str(folder), "--ckpt", ckpt, "--index", idx)
    assert status == 0 and info["images"] == 20 and "update" not in info

    # the changed image is searched with its new features: it now finds itself like 001
    index = GalleryIndex.open(tmp_path / "idx", folder, checkpoint_fingerprint(
        tiny_run / "checkpoints" / "best.ckpt"))
    ids, feats = index.embeddings()
    by_path = {p: feats[list(ids).index(i)] for i, p in index.paths(list(map(int, ids))).items()}
    assert np.allclose(by_path["006.jpg"], by_path["cam2/001.jpg"], atol=1e-5)
    assert "004.jpg" not in by_path and "008.jpg" not in by_path


def test_an_index_belongs_to_one_checkpoint(tiny_run, folder, tmp_path, capsys):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    idx = str(tmp_path / "idx")
    assert _index(capsys, "build", str(folder), "--ckpt", str(ckpt), "--index", idx)[0] == 0
    other = tmp_path / "other.ckpt"
    shutil.copy(tiny_run / "checkpoints" / "last.ckpt", other)
    with open(other, "ab") as f:  # another model: its bytes differ
        f.write(b"\0")
    status, err = _index(capsys, "update", str(folder), "--ckpt", str(other), "--index", idx)
    assert status == 2 and "built with another checkpoint" in err and "tbps index build" in err
    status = main(["search", "--ckpt", str(other), "--gallery", str(folder), "--index", idx,
                   "--query", "a man", "--workers", "0"])
    assert status == 2 and "built with another checkpoint" in capsys.readouterr().err
    # a copy of the same checkpoint is the same model
    copy = tmp_path / "copy.ckpt"
    shutil.copy(ckpt, copy)
    assert _index(capsys, "info", str(folder), "--ckpt", str(copy), "--index", idx)[0] == 0
    # build starts afresh, so it takes the new checkpoint
    status, rebuilt = _index(capsys, "build", str(folder), "--ckpt", str(other), "--index", idx)
    assert status == 0 and rebuilt["images"] == 20
    # errors: a folder that is not an index, no index yet for info, a missing gallery
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("mine")
    status, err = _index(capsys, "build", str(folder), "--ckpt", str(ckpt), "--index",
                         str(tmp_path / "plain"))
    assert status == 2 and "is not a tbps index" in err and (tmp_path / "plain" / "x.txt").exists()
    status, err = _index(capsys, "info", str(folder), "--ckpt", str(ckpt), "--index",
                         str(tmp_path / "none"))
    assert status == 2 and "no index at" in err
    status, err = _index(capsys, "update", str(tmp_path / "missing"), "--ckpt", str(ckpt))
    assert status == 2 and "is not a folder" in err


def test_a_killed_encoding_resumes_where_it_stopped(tiny_run, tmp_path, capsys):
    from tbps.bench.loader import write_jpegs

    photos = tmp_path / "many"
    photos.mkdir()
    write_jpegs(photos, 1200)
    ckpt = str(tiny_run / "checkpoints" / "best.ckpt")
    idx = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "tbps.cli", "index", "build", str(photos),
                             "--ckpt", ckpt, "--index", str(idx), "--workers", "0",
                             "--batch-size", "16", "--flush-every", "32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    committed = 0
    deadline = time.time() + 300
    while committed < 96:  # three flushes on disk, then the kill
        assert proc.poll() is None and time.time() < deadline, "the build ended before the kill"
        time.sleep(0.05)
        try:
            with sqlite3.connect(f"file:{idx / 'index.sqlite'}?mode=ro", uri=True,
                                 timeout=5) as db:
                committed = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet, or being written
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(idx / "index.sqlite") as db:
        at_kill = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert 96 <= at_kill < 1200
    (idx / "shards" / "999999").mkdir()  # as a flush renamed into place but never committed
    status, upd = _index(capsys, "update", str(photos), "--ckpt", ckpt, "--index", str(idx))
    assert status == 0 and upd["update"]["encoded"] == 1200 - at_kill
    assert upd["images"] == 1200 and upd["dead_rows"] == 0  # no image twice
    # no shard folder without its rows (the flush the kill interrupted was dropped)
    with sqlite3.connect(idx / "index.sqlite") as db:
        shards = {f"{s:06d}" for (s,) in db.execute("SELECT id FROM shards")}
        per_shard = dict(db.execute("SELECT shard, COUNT(*) FROM entries GROUP BY shard"))
    assert {d.name for d in (idx / "shards").iterdir()} == shards
    for s, n in per_shard.items():
        assert np.load(idx / "shards" / f"{s:06d}" / "embedding.npy").shape[0] == n
    print(f"\nkilled after {at_kill} of 1,200 images on disk; the update encoded the other "
          f"{upd['update']['encoded']}")
