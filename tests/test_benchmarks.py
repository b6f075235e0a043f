"""The three benchmark readers and the data module on fake copies of the real formats:
the same train pairs, gallery images and query captions as IRRA records."""

import json

import pytest
from fake_benchmarks import write_cuhk, write_icfg, write_rstpreid

from tbps.data.datamodule import TBPSDataModule
from tbps.data.records import read_benchmark
from tbps.errors import ConfigError, DatasetError


def test_cuhk_pedes_records_as_irra(tmp_path):
    d = write_cuhk(tmp_path)
    splits = read_benchmark(d, "cuhk-pedes")
    assert {k: v.summary() for k, v in splits.items()} == {
        "train": {"identities": 4, "images": 12, "captions": 24},
        "val": {"identities": 2, "images": 6, "captions": 12},
        "test": {"identities": 2, "images": 6, "captions": 20}}  # one image has 10 captions
    test = splits["test"]
    assert test.image_paths[0] == d / "imgs" / "test_query" / "0007_0.png"
    assert test.caption_image[:10] == [0] * 10
    assert set(test.caption_pids) == {7, 8}  # raw ids for evaluation
    dm = TBPSDataModule(str(tmp_path), "cuhk-pedes", num_workers=0)
    assert dm.train_labels == {1: 0, 2: 1, 3: 2, 4: 3}  # IRRA's pid = id - 1


def test_icfg_pedes_records(tmp_path):
    d = write_icfg(tmp_path)
    splits = read_benchmark(d, "icfg-pedes")
    assert set(splits) == {"train", "test"}
    assert splits["train"].summary() == {"identities": 4, "images": 12, "captions": 12}
    assert splits["test"].image_paths[0] == d / "imgs" / "test" / "0004" / "0004_c0_0000.jpg"
    assert TBPSDataModule(str(tmp_path), "icfg-pedes", num_workers=0).train_labels == \
        {0: 0, 1: 1, 2: 2, 3: 3}


def test_rstpreid_records_use_img_path(tmp_path):
    d = write_rstpreid(tmp_path)
    splits = read_benchmark(d, "rstpreid")
    assert splits["train"].image_paths[0] == d / "imgs" / "0000_c1_0000.jpg"
    assert [s.summary()["identities"] for s in splits.values()] == [4, 2, 2]
    assert splits["val"].caption_pids[0] == 4  # 0-based raw ids


def test_icfg_validation_policy_is_named_in_metric_keys(tmp_path):
    write_icfg(tmp_path)
    assert TBPSDataModule(str(tmp_path), "icfg-pedes", val_split="test").val_prefix == "val_on_test"
    with pytest.raises(ConfigError, match="has no .val. split"):
        dm = TBPSDataModule(str(tmp_path), "icfg-pedes", val_split="val", num_workers=0)
        dm._eval_loaders("val")
    dm = TBPSDataModule(str(tmp_path), "icfg-pedes", val_split="holdout", holdout_ids=1,
                        num_workers=0)
    assert dm.val_prefix == "val_holdout"
    held = set(dm.records["holdout"].image_pids)
    assert len(held) == 1 and not held & set(dm.train_labels)
    assert dm.num_train_ids == 3
    with pytest.raises(ConfigError, match="holdout_ids"):
        TBPSDataModule(str(tmp_path), "icfg-pedes", val_split="holdout")
    with pytest.raises(ConfigError, match="val_split"):
        TBPSDataModule(str(tmp_path), "icfg-pedes", val_split="dev")


def test_data_configs_compose_for_each_benchmark(tmp_path, monkeypatch):
    from tbps.config import compose_experiment
    from tbps.train import build_data

    write_icfg(tmp_path)
    write_rstpreid(tmp_path)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    for data, name, prefix in [("icfg_pedes", "icfg-pedes", "val_on_test"),
                               ("rstpreid", "rstpreid", "val")]:
        cfg = compose_experiment("synthetic", [f"data={data}"])
        dm = build_data(cfg)
        assert (dm.dataset, dm.val_prefix, dm.image_size) == (name, prefix, (384, 128))
        assert dm.records["train"].summary()["identities"] == 4


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r[3].pop("img_path"), "has no field 'img_path'"),
    (lambda r: r[3].update(split="dev"), "splits are ['train', 'val', 'test']"),
])
def test_rstpreid_malformed_record_named(tmp_path, mutate, needle):
    d = write_rstpreid(tmp_path, with_images=False)
    records = json.loads((d / "data_captions.json").read_text())
    mutate(records)
    (d / "data_captions.json").write_text(json.dumps(records))
    with pytest.raises(DatasetError, match="record 3") as err:
        read_benchmark(d, "rstpreid")
    assert needle in str(err.value) and "data_captions.json" in str(err.value)


def test_wrong_dataset_for_format_is_recognised(tmp_path):
    d = write_rstpreid(tmp_path, with_images=False)
    (d.parent / "CUHK-PEDES").mkdir()
    (d.parent / "CUHK-PEDES" / "reid_raw.json").write_text((d / "data_captions.json").read_text())
    with pytest.raises(DatasetError, match="did you mean --dataset rstpreid"):
        read_benchmark(d.parent / "CUHK-PEDES", "cuhk-pedes")


def test_reading_a_cuhk_pedes_sized_annotation(tmp_path):
    """40,206 images and 80,412 captions (CUHK-PEDES' size): read, checked, into records.
    The time is printed; `tbps bench --only data` measures it."""
    from tbps.bench.data import read_records, write_cuhk_sized_annotation

    assert write_cuhk_sized_annotation(tmp_path) == 80412
    read = read_records(tmp_path)
    print(f"\nread {read['captions']:,} captions into records in {read['seconds']:.2f} s")
    assert read["captions"] == 80412 and read["train_identities"] == 11003


def test_train_on_icfg_layout_skips_and_counts_a_corrupt_image(tmp_path, monkeypatch):
    """End to end on a fake ICFG-PEDES: validation on test under its own metric keys, an
    unreadable training image skipped and counted, 20% caption noise, then the P×K sampler."""
    import csv
    from pathlib import Path

    from tbps.cli import main

    d = write_icfg(tmp_path / "data")
    (d / "imgs" / "train" / "0001" / "0001_c1_0001.jpg").write_bytes(b"broken")
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(Path(__file__).parent.parent / "experiments"))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)
    tiny = ["data=icfg_pedes", f"data.root={tmp_path / 'data'}", "data.image_size=[64,32]",
            "data.num_workers=0", "data.batch_size=4", "data.eval_batch_size=8",
            "data.pin_memory=false", "data.skip_bad_images=true", "data.noise_rate=0.2",
            "encoder.embed_dim=32", "encoder.vision.embed_dim=32", "encoder.vision.depth=1",
            "encoder.vision.num_heads=2", "encoder.text.hidden_size=32",
            "encoder.text.intermediate_size=64", "encoder.text.num_hidden_layers=1",
            "encoder.text.num_attention_heads=2", "heads.mlm.depth=1", "heads.mlm.num_heads=2",
            "tokenizer.vocab_size=300", "trainer.max_epochs=2", "logger.wandb=false"]
    run = tmp_path / "run"
    assert main(["train", "experiment=synthetic", *tiny, f"run_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val_on_test/R1" in metrics and "test/R1" in metrics and "val/R1" not in metrics
    assert (run / "checkpoints" / "best.ckpt").is_file()
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    skipped = [float(r["train/skipped_images"]) for r in rows if r.get("train/skipped_images")]
    assert skipped == [1.0, 1.0]  # the one bad image, once per epoch
    run2 = tmp_path / "run2"
    assert main(["train", "experiment=synthetic", *tiny, "data.sampler=identity",
                 "data.num_instances=2", f"run_dir={run2}"]) == 0
    assert "val_on_test/R1" in json.loads((run2 / "metrics.json").read_text())
