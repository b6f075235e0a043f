"""End to end on a tiny SynthPedes: the run folder, metrics.json, and eval of the checkpoint."""

import json
from pathlib import Path

import pytest
import torch

from tbps.cli import main
from tbps.model.module import TBPSModule

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    return tiny_run


def test_run_folder_contract(trained_run):
    for f in ("config.yaml", "tokenizer.json", "metrics.json", "checkpoints/best.ckpt",
              "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (trained_run / f).is_file(), f
    m = json.loads((trained_run / "metrics.json").read_text())
    for split in ("val", "test"):
        for k in ("R1", "R5", "R10", "mAP", "mINP", "rSum"):
            assert 0.0 <= m[f"{split}/{k}"] <= 300.0
    assert m["train/samples_per_s"] > 0
    assert m["test/R1"] <= m["test/R5"] <= m["test/R10"]


def test_the_run_records_its_machine(trained_run):
    """machine.json: one entry for the one start, naming this processor and the threads
    torch used, so a figure can be traced to what made it."""
    import torch

    from tbps.machine import processor_name

    (entry,) = json.loads((trained_run / "machine.json").read_text())
    assert entry["processor"] == processor_name() and entry["processor"]
    assert entry["gpu"] is None and entry["devices"] == 1
    assert entry["threads"] == torch.get_num_threads()
    assert entry["label"] == f"{processor_name()}, {entry['threads']} thread" + \
        ("s" if entry["threads"] != 1 else "")
    assert entry["torch"] == torch.__version__


def test_samples_per_s_is_the_whole_runs_figure(trained_run):
    """metrics.json's samples/s is the one the last epoch logged (all samples over all
    training seconds), not the best checkpoint's, which testing restores: saved at a
    validation, it has that epoch's samples and not yet its seconds."""
    import csv

    rows = list(csv.DictReader((trained_run / "logs" / "metrics.csv").open()))
    logged = [float(r["train/samples_per_s"]) for r in rows if r.get("train/samples_per_s")]
    m = json.loads((trained_run / "metrics.json").read_text())
    assert len(logged) == 2 and m["train/samples_per_s"] == pytest.approx(logged[-1], rel=1e-3)


def test_checkpoint_rebuilds_model_alone(trained_run):
    module = TBPSModule.load_from_checkpoint(trained_run / "checkpoints/best.ckpt",
                                             map_location="cpu", weights_only=True)
    assert set(module.heads) == {"sdm", "id", "mlm"}
    ids = module.tokenizer.encode(["a man in a red coat"])
    assert module.encoder.encode_text(ids).shape == (1, 32)
    assert torch.isfinite(module.encoder.encode_image(torch.zeros(1, 3, 96, 32))).all()


def test_eval_reproduces_test_metrics(trained_run, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert main(["eval", "experiment=synthetic", f"eval.ckpt={ckpt}"]) == 0
    again = json.loads((trained_run / "metrics_eval.json").read_text())
    first = json.loads((trained_run / "metrics.json").read_text())
    for k in ("test/R1", "test/mAP", "test/mINP"):
        assert again[k] == pytest.approx(first[k], abs=1e-3)
    assert "R1" in capsys.readouterr().out


def test_eval_rejects_a_foreign_checkpoint(tmp_path, capsys):
    bad = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, bad)
    assert main(["eval", "experiment=synthetic", f"eval.ckpt={bad}"]) == 2
    assert "not a tbps checkpoint" in capsys.readouterr().err
