"""`tbps search` on folders of images: ranked results, the embedding cache, unreadable
files, the picture, and clear errors; plus the 2,000-image timing."""

import json
import shutil
import time

import pytest
import torch

import tbps.search as search_mod
from conftest import copy_images
from tbps.cli import main


@pytest.fixture()
def gallery(tiny_synth, tmp_path):
    folder = copy_images(tiny_synth, tmp_path / "gallery", 30, "sub", 3)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored")
    return folder


def _search(capsys, *args):
    status = main(["search", *args, "--json", "--workers", "0"])
    out = capsys.readouterr()
    return status, (json.loads(out.out) if status == 0 else out.err)


def test_search_ranks_caches_and_skips(tiny_run, gallery, capsys, monkeypatch, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    queries = tmp_path / "q.txt"
    queries.write_text("a man in a red jacket\n\na woman with a black backpack\n")
    status, res = _search(capsys, "--ckpt", str(ckpt), "--gallery", str(gallery),
                          "--queries", str(queries), "--query", "a person in blue jeans",
                          "--topk", "5", "--out", str(tmp_path / "grid.png"))
    assert status == 0 and not res["cached"] and res["images"] == 31 and res["indexed"] == 30
    assert res["update"]["added"] == 31 and res["update"]["encoded"] == 30
    assert res["unreadable"]["count"] == 1 and "broken.jpg" in res["unreadable"]["first"][0]
    assert [q["query"] for q in res["queries"]] == ["a person in blue jeans",
                                                    "a man in a red jacket",
                                                    "a woman with a black backpack"]
    for q in res["queries"]:
        scores = [h["score"] for h in q["results"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert all(h["path"].startswith(str(gallery)) for h in q["results"])
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[1] > 3 * 160

    # The same folder again: features come from the index, the image tower is not run.
    monkeypatch.setattr(search_mod.Model, "__call__", lambda *a, **k: pytest.fail("re-encoded"))
    status, again = _search(capsys, "--ckpt", str(ckpt), "--gallery", str(gallery),
                            "--query", "a person in blue jeans", "--topk", "5")
    assert status == 0 and again["cached"]
    assert again["queries"][0] == res["queries"][0]
    # A new image is encoded alone.
    monkeypatch.undo()
    shutil.copy(next(gallery.glob("*.jpg")), gallery / "new.jpg")
    status, changed = _search(capsys, "--ckpt", str(ckpt), "--gallery", str(gallery),
                              "--query", "x")
    assert status == 0 and not changed["cached"] and changed["images"] == 32
    assert changed["update"]["added"] == 1 and changed["update"]["encoded"] == 1
    main(["search", "--ckpt", str(ckpt), "--gallery", str(gallery), "--query", "a man",
          "--workers", "0", "--topk", "3"])
    text = capsys.readouterr().out
    assert "query: a man" in text and "   1. " in text and "from the index" in text


def test_search_errors(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    (tmp_path / "empty").mkdir()
    status, err = _search(capsys, "--ckpt", str(ckpt), "--gallery", str(tmp_path / "empty"),
                          "--query", "x")
    assert status == 2 and "no images under" in err
    bad = tmp_path / "bad.ckpt"
    torch.save({"weights": torch.zeros(2)}, bad)
    (tmp_path / "one").mkdir()
    from PIL import Image

    Image.new("RGB", (32, 96)).save(tmp_path / "one" / "a.png")
    status, err = _search(capsys, "--ckpt", str(bad), "--gallery", str(tmp_path / "one"),
                          "--query", "x")
    assert status == 2 and "is not a tbps checkpoint" in err


def test_search_2000_images_timing(tiny_run, tmp_path, capsys):
    from tbps.bench.loader import write_jpegs

    folder = tmp_path / "big"
    folder.mkdir()
    write_jpegs(folder, 2000)
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    status, first = _search(capsys, "--ckpt", str(ckpt), "--gallery", str(folder),
                            "--query", "a man in a red jacket")
    assert status == 0 and first["indexed"] == 2000
    start = time.perf_counter()
    status, second = _search(capsys, "--ckpt", str(ckpt), "--gallery", str(folder),
                             "--query", "a woman with a white bag")
    wall = time.perf_counter() - start
    assert status == 0 and second["cached"]
    print(f"\n2,000 images: encoded in {first['update']['encode_seconds']} s "
          f"({first['update']['images_per_s']} images/s); {second['query_ms']} ms per query "
          f"from the index; second command {wall:.2f} s end to end")


HEAVY = ("lightning", "timm", "transformers", "albumentations", "torchvision", "torch")


def _fresh_process(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_cached_query_loads_no_training_stack_and_ranks_as_the_model(tiny_run, gallery,
                                                                       capsys):
    """After the first search, a query runs the exported text path: same ranking and
    scores as the full model (to float precision), and none of torch, Lightning, timm,
    transformers is imported."""
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    query = "a woman in a white top and black trousers"
    status, full = _search(capsys, "--ckpt", str(ckpt), "--gallery", str(gallery),
                           "--query", query, "--index", str(gallery.parent / "c"))
    assert status == 0 and list((gallery.parent / "c").glob("text-*.onnx"))
    code = f"""
import json, sys, time
start = time.perf_counter()
from tbps.cli import main
main(["search", "--ckpt", {str(ckpt)!r}, "--gallery", {str(gallery)!r}, "--query", {query!r},
      "--index", {str(gallery.parent / 'c')!r}, "--json", "--workers", "0"])
wall = time.perf_counter() - start
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
print(wall)
"""
    out = _fresh_process(code).strip().splitlines()
    cached = json.loads("\n".join(out[:-2]))
    assert json.loads(out[-2]) == [] and cached["cached"]
    for a, b in zip(cached["queries"], full["queries"]):
        assert [h["path"] for h in a["results"]] == [h["path"] for h in b["results"]]
        assert all(abs(x["score"] - y["score"]) <= 2e-4 for x, y in zip(a["results"], b["results"]))
    print(f"\ncached query, fresh process: {float(out[-1]):.2f} s (imports included)")


def test_help_and_argument_errors_import_no_heavy_library():
    code = f"""
import sys, time
start = time.perf_counter()
from tbps.cli import main
for argv in (["--help"], ["search", "--help"], ["search", "--ckpt", "x", "--gallery", "y",
             "--query", "a", "--topk", "0"], ["synth", "--out", "o", "--identities", "-3"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
print(time.perf_counter() - start)
"""
    out = _fresh_process(code).strip().splitlines()
    assert out[-2] == "[]", out[-2]
    print(f"\n--help and argument errors: {float(out[-1]):.3f} s for four commands")
