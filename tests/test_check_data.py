"""`tbps check-data` on fake copies of each release and on the known broken variants."""

import json

import pytest
from fake_benchmarks import WRITERS, write_cuhk, write_icfg, write_rstpreid

from tbps.cli import main


def _run(capsys, *args):
    status = main(["check-data", *args])
    return status, capsys.readouterr().out


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_good_copy_is_usable_and_counted(tmp_path, capsys, dataset):
    WRITERS[dataset](tmp_path)
    status, out = _run(capsys, "--dataset", dataset, "--root", str(tmp_path), "--json")
    report = json.loads(out)
    assert status == 0 and report["usable"] and not report["problems"]
    assert report["missing_images"]["count"] == report["unreadable_images"]["count"] == 0
    assert report["images_checked"] == sum(s["images"] for s in report["splits"].values())
    # a tiny copy differs from the published sizes, and says so
    assert any("differs from the published sizes" in w for w in report["warnings"])
    status, text = _run(capsys, "--dataset", dataset, "--root", str(tmp_path))
    assert status == 0 and "usable" in text and "published" in text


def test_published_sizes_in_the_report(tmp_path, capsys):
    write_cuhk(tmp_path)
    _, out = _run(capsys, "--dataset", "cuhk-pedes", "--root", str(tmp_path), "--json")
    assert json.loads(out)["splits"]["train"]["published"] == \
        {"identities": 11003, "images": 34054, "captions": 68126}
    assert "identities 4 (published 11,003)" in out


def test_caption_all_instead_of_reid_raw(tmp_path, capsys):
    d = write_cuhk(tmp_path)
    (d / "reid_raw.json").rename(d / "caption_all.json")
    status, out = _run(capsys, "--dataset", "cuhk-pedes", "--root", str(tmp_path))
    assert status == 1 and "NOT usable" in out
    assert "caption_all.json is the raw release without splits" in out and "reid_raw.json" in out


def test_icfg_annotation_with_underscore(tmp_path, capsys):
    d = write_icfg(tmp_path)
    (d / "ICFG-PEDES.json").rename(d / "ICFG_PEDES.json")
    status, out = _run(capsys, "--dataset", "icfg-pedes", "--root", str(tmp_path))
    assert status == 1 and "rename ICFG_PEDES.json to ICFG-PEDES.json" in out


def test_old_rstpreid_split(tmp_path, capsys):
    write_rstpreid(tmp_path, with_images=False, ids=(3901, 100, 100), images_per_id=1)
    status, out = _run(capsys, "--dataset", "rstpreid", "--root", str(tmp_path), "--json")
    report = json.loads(out)
    assert status == 1
    assert any("old, wrong split" in p and "download data_captions.json again" in p
               for p in report["problems"])


def test_missing_query_folders_and_images_in_one_pass(tmp_path, capsys):
    d = write_cuhk(tmp_path)
    import shutil

    shutil.rmtree(d / "imgs" / "train_query")
    shutil.rmtree(d / "imgs" / "test_query")
    (d / "imgs" / "CUHK03" / "0001_0.png").unlink()
    status, out = _run(capsys, "--dataset", "cuhk-pedes", "--root", str(tmp_path), "--json")
    report = json.loads(out)
    assert status == 1
    missing = report["missing_images"]
    assert missing["count"] >= 3 and len(missing["first"]) <= 5
    problems = " ".join(report["problems"])
    assert "train_query/ is missing" in problems and "test_query/ is missing" in problems
    assert "ask the authors for the complete imgs/ folder" in problems


def test_unreadable_images_listed(tmp_path, capsys):
    d = write_rstpreid(tmp_path)
    (d / "imgs" / "0001_c1_0000.jpg").write_bytes(b"not an image")
    (d / "imgs" / "0002_c2_0001.jpg").write_bytes(
        (d / "imgs" / "0002_c1_0000.jpg").read_bytes()[:200])  # truncated
    status, out = _run(capsys, "--dataset", "rstpreid", "--root", str(tmp_path), "--json")
    report = json.loads(out)
    assert status == 1 and report["unreadable_images"]["count"] == 2
    assert any("0001_c1_0000.jpg" in f for f in report["unreadable_images"]["first"])
    assert any("skip_bad_images" in p for p in report["problems"])


def test_empty_and_duplicated_captions_flagged(tmp_path, capsys):
    d = write_rstpreid(tmp_path)
    records = json.loads((d / "data_captions.json").read_text())
    records[0]["captions"][1] = "   "
    records[1]["captions"][1] = records[1]["captions"][0]
    records[5]["captions"][0] = records[0]["captions"][0]  # id 1 shares id 0's caption
    (d / "data_captions.json").write_text(json.dumps(records))
    status, out = _run(capsys, "--dataset", "rstpreid", "--root", str(tmp_path), "--json")
    report = json.loads(out)
    assert status == 0  # usable, with warnings
    assert report["empty_captions"]["count"] == 1
    assert report["duplicate_captions"]["same_image"]["count"] == 1
    assert report["duplicate_captions"]["across_identities"]["count"] == 1


def test_layout_mistakes(tmp_path, capsys):
    d = write_icfg(tmp_path)
    status, out = _run(capsys, "--dataset", "icfg-pedes", "--root", str(d))
    assert status == 1 and f"pass its parent (--root {tmp_path})" in out
    d.rename(tmp_path / "ICFG_PEDES")
    status, out = _run(capsys, "--dataset", "icfg-pedes", "--root", str(tmp_path))
    assert status == 1 and "rename it to ICFG-PEDES/" in out
    status, out = _run(capsys, "--dataset", "icfg-pedes", "--root", str(tmp_path / "nope"))
    assert status == 1 and "does not exist" in out


def test_malformed_record_reported(tmp_path, capsys):
    d = write_cuhk(tmp_path, with_images=False)
    records = json.loads((d / "reid_raw.json").read_text())
    records[2]["id"] = "3"
    (d / "reid_raw.json").write_text(json.dumps(records))
    status, out = _run(capsys, "--dataset", "cuhk-pedes", "--root", str(tmp_path))
    assert status == 1 and "record 2" in out and "field 'id' is str" in out
