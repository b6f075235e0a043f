"""The IRRA and CLIP-baseline recipes: they compose to IRRA's published settings, say what
to set when DATA_ROOT or CLIP_WEIGHTS is missing, and the ViT-B/16 recipe trains 2 steps
from CLIP weights on a fake RSTPReid copy on the CPU."""

import json
from pathlib import Path

import pytest
import torch
from fake_benchmarks import write_rstpreid

from tbps.cli import main
from tbps.config import compose_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("name,dataset,heads", [
    ("irra_cuhk", "cuhk-pedes", ["sdm", "id", "mlm"]), ("irra_icfg", "icfg-pedes", ["sdm", "id", "mlm"]),
    ("irra_rstp", "rstpreid", ["sdm", "id", "mlm"]), ("clip_cuhk", "cuhk-pedes", ["itc"]),
    ("clip_icfg", "icfg-pedes", ["itc"]), ("clip_rstp", "rstpreid", ["itc"])])
def test_recipes_are_irra_exactly(name, dataset, heads):
    cfg = compose_experiment(name, folder=EXPERIMENTS)
    assert cfg.data.dataset == dataset and list(cfg.heads) == heads
    assert list(cfg.data.image_size) == [384, 128] and cfg.data.batch_size == 64
    o = cfg.optim
    assert o.optimizer._target_ == "torch.optim.Adam" and o.lr == 1e-5
    assert (o.new_module_lr_factor, o.bias_lr_factor, o.weight_decay) == (5.0, 2.0, 4e-5)
    assert (o.warmup_epochs, o.warmup_factor, o.interval) == (5, 0.1, "epoch")
    assert cfg.trainer.max_epochs == 60
    assert cfg.heads[heads[0]].temperature == 0.02
    if "mlm" in heads:
        assert (cfg.heads.mlm.depth, cfg.heads.mlm.num_heads, cfg.heads.mlm.mask_prob) == (4, 8, 0.15)
    assert cfg.encoder.pos_interpolation == "bilinear"


def test_missing_weights_and_data_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("DATA_ROOT", raising=False)
    assert main(["train", "experiment=irra_rstp"]) == 2
    assert "DATA_ROOT" in capsys.readouterr().err
    write_rstpreid(tmp_path)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert main(["train", "experiment=irra_rstp"]) == 2
    assert "set CLIP_WEIGHTS" in capsys.readouterr().err


def test_vit_b16_irra_recipe_two_steps_on_cpu(tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    weights = tmp_path / "ViT-B-16.pt"
    torch.save(open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).state_dict(), weights)
    write_rstpreid(tmp_path / "data")
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("CLIP_WEIGHTS", str(weights))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)
    run = tmp_path / "run"
    assert main(["train", "experiment=irra_rstp", "trainer=cpu", "trainer.max_steps=2",
                 "trainer.max_epochs=1", "data.batch_size=4", "data.eval_batch_size=8",
                 "data.num_workers=0", "data.pin_memory=false", "logger.wandb=false",
                 f"run_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test/R1"] <= 100 and metrics["train/samples_per_s"] > 0
    cfg = (run / "config.yaml").read_text()
    assert "vit_base_patch16_clip_224" in cfg and "num_hidden_layers: 12" in cfg
    from tbps.model.module import TBPSModule

    module = TBPSModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt",
                                             map_location="cpu", weights_only=True)
    assert module.tokenizer.mask_id == 49405 and module.tokenizer.vocab_size == 49408
    assert module.encoder.vision.pos_embed.shape == (1, 1 + 24 * 8, 768)
