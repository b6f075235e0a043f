"""The training step of every experiment family compiles whole: one graph, no graph break
(``fullgraph=True`` raises on any), and no recompilation across steps of fixed-shape
batches with a changing epoch fraction (``error_on_recompile``). Dynamo's tracing is what
decides both, so the checks use its ``eager`` backend; ``compile=true`` itself (inductor)
trains a tiny run end to end."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from tbps.bench.train_step import build_module, synthetic_batch
from tbps.model.compile import compile_step

TINY = ["data.image_size=[96,32]", "encoder.embed_dim=32", "encoder.vision.embed_dim=32",
        "encoder.vision.depth=1", "encoder.vision.num_heads=2", "encoder.text.hidden_size=32",
        "encoder.text.intermediate_size=64", "encoder.text.num_hidden_layers=1",
        "encoder.text.num_attention_heads=2"]
FAMILIES = {
    "irra": ("synthetic", ["heads.mlm.depth=1", "heads.mlm.num_heads=2"]),  # SDM + ID + MLM
    "crue": ("crue_synthetic", ["memory.size=64"]),  # ID + CMPM + IRE + UGM, memory, augment
    "clip": ("synthetic", ["heads=[itc,cmpm]"]),     # ITC (CLIP's baseline) and CMPM
    # ID + DCL + PCL + UAMLR over the shared Gaussians, attribute-word masking
    "ucfa": ("ucfa_synthetic", ["heads.uamlr.num_heads=2"]),
    "acsa": ("acsa_synthetic", []),  # SDM + ID + CONT over phrases and 7 image tokens
    "acsa_faithful": ("acsa_synthetic", ["heads=[cmpm,cmpc,acsa]", "+heads.cmpm.off_below=0.5",
                                         "heads.acsa.phrase_mode=separate",
                                         "heads.acsa.part_mode=channel_split",
                                         "heads.acsa.phrase_length=40",
                                         "heads.acsa.test_phrase_length=24",
                                         "encoder.global_bottleneck=true"]),
    # BGE + TSE (attention rows, top-k selection, BatchNorm MLP), TAL over the division
    "rde": ("rde_synthetic", ["heads.rde.tse_dim=32"]),
    "ucfa_weight": ("ucfa_synthetic", ["heads.uamlr.num_heads=2", "heads.uamlr.uncertainty=weight",
                                       "heads.dcl.distance=csd", "distributions.variance_from=global"]),
}


@pytest.fixture(autouse=True)
def _experiments(monkeypatch):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(Path(__file__).parent.parent / "experiments"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_step_compiles_whole_without_recompiling(family):
    experiment, extra = FAMILIES[family]
    module = build_module([*TINY, *extra], 50, torch.device("cpu"), experiment)
    module._compiled = compile_step(module._losses, backend="eager", fullgraph=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    g = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(5):  # step 0 runs eagerly (it checks the heads), 1-4 compiled
            batch = synthetic_batch(8, (96, 32), module.tokenizer, 50, torch.device("cpu"), g,
                                    module.caption_annotations)
            loss, terms = module.compute_losses(batch, progress=0.3 + 0.37 * step)
            loss.backward()
            assert torch.isfinite(loss)
    stats = torch._dynamo.utils.counters["stats"]
    print(f"\n{family}: {stats['calls_captured']} calls captured in {stats['unique_graphs']} graph")
    assert stats["unique_graphs"] == 1


def test_compiled_run_trains_end_to_end(tiny_synth, tmp_path):
    from tbps.cli import main

    os.environ.pop("TBPS_RUN_DIR", None)
    args = [*tiny_overrides(tiny_synth, tmp_path), "trainer.max_epochs=1", "trainer.max_steps=3",
            "compile=true"]
    assert main(["train", "experiment=synthetic", *args]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train/samples_per_s"] > 0 and 0 <= metrics["test/R1"] <= 100
