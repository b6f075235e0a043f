"""The CUHK-PEDES reader on files in the real format, and its error messages."""

import json

import pytest
from PIL import Image

from tbps.data.records import read_cuhk_pedes
from tbps.errors import DatasetError


def _write(root, records):
    d = root / "CUHK-PEDES"
    (d / "imgs").mkdir(parents=True, exist_ok=True)
    for r in records:
        if isinstance(r, dict) and "file_path" in r:
            p = d / "imgs" / r["file_path"]
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 100), (120, 30, 30)).save(p)
    (d / "reid_raw.json").write_text(json.dumps(records))
    return d


def _rec(split, pid, path, n_caps=2):
    return {"split": split, "id": pid, "file_path": path,
            "captions": [f"a man in a red coat number {k}" for k in range(n_caps)],
            "processed_tokens": [["a", "man"]] * n_caps}


def test_reads_real_format(tmp_path):
    d = _write(tmp_path, [_rec("train", 1, "CUHK01/0363004.png"),
                          _rec("train", 1, "CUHK01/0363003.png"),
                          _rec("train", 2, "cam_a/001_45.bmp"),
                          _rec("test", 13003, "test_query/p11001_s14914.jpg", n_caps=10),
                          _rec("val", 12000, "Market/0001_c1s1_001051_00.jpg")])
    splits = read_cuhk_pedes(d)
    train, test = splits["train"], splits["test"]
    assert train.summary() == {"identities": 2, "images": 3, "captions": 6}
    assert test.summary() == {"identities": 1, "images": 1, "captions": 10}
    assert train.image_paths[0] == d / "imgs" / "CUHK01" / "0363004.png"
    assert train.caption_pids == [1, 1, 1, 1, 2, 2]  # raw ids; labels are made by the data module
    assert test.caption_image == [0] * 10


@pytest.mark.parametrize("records,needle", [
    ({"not": "a list"}, "JSON list"),
    ([{"split": "train", "id": 1, "captions": ["x"]}], "no field 'file_path'"),
    ([{"split": "train", "id": "7", "captions": ["x"], "file_path": "a.png"}], "field 'id' is str"),
    ([{"split": "dev", "id": 1, "captions": ["x"], "file_path": "a.png"}], "field 'split'"),
    ([{"split": "train", "id": 1, "captions": "x", "file_path": "a.png"}], "field 'captions'"),
])
def test_malformed_annotations_name_file_and_field(tmp_path, records, needle):
    d = _write(tmp_path, records)
    with pytest.raises(DatasetError, match=needle) as err:
        read_cuhk_pedes(d)
    assert "reid_raw.json" in str(err.value)


def test_missing_file_and_caption_all_hint(tmp_path):
    with pytest.raises(DatasetError, match="DATA_ROOT"):
        read_cuhk_pedes(tmp_path / "CUHK-PEDES")
    (tmp_path / "CUHK-PEDES").mkdir()
    (tmp_path / "CUHK-PEDES" / "caption_all.json").write_text("[]")
    with pytest.raises(DatasetError, match="caption_all.json"):
        read_cuhk_pedes(tmp_path / "CUHK-PEDES")


def test_invalid_json(tmp_path):
    d = tmp_path / "CUHK-PEDES"
    d.mkdir()
    (d / "reid_raw.json").write_text('[{"split": "train",')
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_cuhk_pedes(d)
