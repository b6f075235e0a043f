"""The training step of every experiment family compiles whole: one graph, no graph break
(``fullgraph=True`` raises on any), and no recompilation across steps whose captions are
trimmed to different lengths, with a changing epoch fraction (``error_on_recompile``).
Dynamo's tracing is what decides both, so the checks use its ``eager`` backend;
``compile=true`` itself (inductor) trains a tiny run end to end, to the eager run's weights."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from tbps.bench.train_step import build_module, synthetic_batch
from tbps.data.datamodule import collate_trimmed
from tbps.model.compile import compile_step

TINY = ["data.image_size=[96,32]", "encoder.embed_dim=32", "encoder.vision.embed_dim=32",
        "encoder.vision.depth=1", "encoder.vision.num_heads=2", "encoder.text.hidden_size=32",
        "encoder.text.intermediate_size=64", "encoder.text.num_hidden_layers=1",
        "encoder.text.num_attention_heads=2"]
FAMILIES = {
    "irra": ("synthetic", ["heads.mlm.depth=1", "heads.mlm.num_heads=2"]),  # SDM + ID + MLM
    "crue": ("crue_synthetic", ["memory.size=64"]),  # ID + CMPM + IRE + UGM, memory, augment
    # the same, P(match) deciding which pairs enter the memory
    "crue_memory_gate": ("crue_synthetic", ["memory.size=64",
                                            "pair_weights={from_epoch:0,apply_to:memory}"]),
    # the same with activation checkpointing in both towers (the MLM's text pass too)
    "irra_checkpointed": ("synthetic", ["heads.mlm.depth=1", "heads.mlm.num_heads=2",
                                        "encoder.grad_checkpointing=true"]),
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
    # PCME++'s match reading σ, PFE's term training it, b solved every step (a loop of
    # Newton steps inside the compiled step)
    "crue_pfe": ("crue_synthetic", ["memory.size=64", "heads.ugm.match_mls_weight=1",
                                    "heads.ugm.match_trains_sigma=false",
                                    "heads.ugm.match_refit_shift=true"]),
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
    lengths = set()  # captions trimmed per batch, as training trims them: no recompile either
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(5):  # step 0 runs eagerly (it checks the heads), 1-4 compiled
            batch = synthetic_batch(8, (96, 32), module.tokenizer, 50, torch.device("cpu"), g,
                                    module.caption_annotations)
            batch = collate_trimmed([{k: v[i] for k, v in batch.items()} for i in range(8)])
            lengths.add(batch["caption_ids"].shape[1])
            loss, terms = module.compute_losses(batch, progress=0.3 + 0.37 * step)
            loss.backward()
            assert torch.isfinite(loss)
    stats = torch._dynamo.utils.counters["stats"]
    print(f"\n{family}: {stats['calls_captured']} calls captured in {stats['unique_graphs']} graph")
    assert stats["unique_graphs"] == 1
    assert len(lengths) >= 3


def test_compiled_run_trains_end_to_end_as_the_eager_run(tiny_synth, tmp_path):
    """`compile=true` through inductor: three steps (the first eager, then one compilation for
    every caption length) give the weights the same three eager steps give. Inductor draws
    its own random numbers (MLM's masking), so the test asks it to draw eager's."""
    import torch._inductor.config as inductor_config

    from tbps.cli import main

    os.environ.pop("TBPS_RUN_DIR", None)
    weights = {}
    for compiled in (False, True):
        run = tmp_path / f"compile_{compiled}"
        args = [*tiny_overrides(tiny_synth, run), "trainer.max_epochs=1", "trainer.max_steps=3",
                f"compile={str(compiled).lower()}"]
        # the config's own patch: monkeypatch's undo would delete the key from the config
        # module, and torch.export (search's ONNX export) fails on it later in the process
        with inductor_config.patch(fallback_random=True):
            assert main(["train", "experiment=synthetic", *args]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert "test/R1" in metrics and metrics["train/samples_per_s"] > 0
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 3
        weights[compiled] = ckpt["state_dict"]
    assert weights[True].keys() == weights[False].keys()
    for key, eager in weights[False].items():
        torch.testing.assert_close(_without_key_bias(key, weights[True][key]),
                                   _without_key_bias(key, eager), rtol=1e-4, atol=1e-5, msg=key)


def _without_key_bias(name: str, value: torch.Tensor) -> torch.Tensor:
    """An attention key's bias gets no gradient (a softmax ignores a shift shared by every
    key), so AdamW turns each run's float noise in it into steps of about lr: the third of a
    packed q/k/v bias that belongs to the keys, and a separate key bias, are left out."""
    if name.endswith("k_proj.bias"):
        return value[:0]
    if name.endswith(("qkv.bias", "in_proj_bias")):
        q, _, v = value.chunk(3)
        return torch.cat([q, v])
    return value
