"""Shared fixtures: no network, tiny data sets written in the real on-disk format."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on the two cores: one thread each, so that they do not
    # fight over the cores (subprocesses the tests start inherit it too)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

TINY_SYNTH = {"identities": 48, "images_per_identity": 3, "captions_per_image": 2,
              "height": 96, "width": 32, "val_share": 0.2, "test_share": 0.3, "seed": 3}


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A small SynthPedes data set in the CUHK-PEDES layout, shared by the session."""
    from tbps.data.synthpedes.generate import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(**TINY_SYNTH))
    return root


def copy_images(tiny_synth, folder, n: int, sub: str, every: int, first: int = 0):
    """The first ``n`` SynthPedes images as a user's folder, ``NNN.jpg``: those with
    ``i % every == first`` in ``sub/``, the others at the top."""
    import shutil

    src = sorted((tiny_synth / "CUHK-PEDES" / "imgs").rglob("*.jpg"))[:n]
    (folder / sub).mkdir(parents=True)
    for i, p in enumerate(src):
        shutil.copy(p, folder / (sub if i % every == first else "") / f"{i:03d}.jpg")
    return folder


def tiny_overrides(root, run_dir) -> list[str]:
    """Hydra overrides that make the synthetic experiment run in seconds."""
    synth = [f"data.synth.{k}={v}" for k, v in TINY_SYNTH.items()]
    return [f"data.root={root}", *synth, "data.num_workers=0", "data.batch_size=16",
            "data.eval_batch_size=64", "encoder.embed_dim=32", "encoder.vision.embed_dim=32",
            "encoder.vision.depth=1", "encoder.vision.num_heads=2", "encoder.text.hidden_size=32",
            "encoder.text.intermediate_size=64", "encoder.text.num_hidden_layers=1",
            "encoder.text.num_attention_heads=2", "heads.mlm.depth=1", "heads.mlm.num_heads=2",
            "trainer.max_epochs=2", "logger.wandb=false", f"run_dir={run_dir}"]


def tiny_module(tiny_synth, run_dir, experiment: str = "synthetic", *extra):
    """(an untrained tiny TBPSModule of ``experiment`` in eval mode, its data module), built
    as `tbps train` builds them, with a tokenizer trained on the tiny captions."""
    from pathlib import Path

    import torch
    from omegaconf import OmegaConf

    from tbps.config import compose_experiment
    from tbps.data.tokenizer import CaptionTokenizer
    from tbps.model.module import TBPSModule
    from tbps.train import build_data

    os.environ["TBPS_EXPERIMENTS"] = str(Path(__file__).resolve().parent.parent / "experiments")
    args = tiny_overrides(tiny_synth, run_dir)
    if experiment != "synthetic":  # the MLM sizes apply to the synthetic experiment's head
        args = [o for o in args if "mlm" not in o]
    cfg = compose_experiment(experiment, [*args, *extra])
    dm = build_data(cfg)
    tok = CaptionTokenizer.train(dm.records["train"].captions, cfg.tokenizer.vocab_size,
                                 cfg.tokenizer.context_length)
    dm.set_tokenizer(tok)
    torch.manual_seed(0)
    module = TBPSModule(OmegaConf.to_container(cfg, resolve=True), tok.to_json(),
                        dm.num_train_ids, dm.num_train_pairs).eval()
    return module, dm


@pytest.fixture(scope="session")
def tiny_run(tiny_synth, tmp_path_factory):
    """One tiny trained run of the synthetic experiment (run folder with checkpoints),
    shared by the tests that need a trained model."""
    from pathlib import Path

    from tbps.cli import main

    run = tmp_path_factory.mktemp("run")
    os.environ["TBPS_EXPERIMENTS"] = str(Path(__file__).resolve().parent.parent / "experiments")
    os.environ.pop("TBPS_RUN_DIR", None)
    assert main(["train", "experiment=synthetic", *tiny_overrides(tiny_synth, run)]) == 0
    return run


@pytest.fixture(scope="session")
def rde_run(tiny_synth, tmp_path_factory):
    """One tiny trained run of rde_synthetic at 30% swapped captions (2 epochs, divided
    before the second), shared by the RDE and search tests."""
    from pathlib import Path

    from tbps.cli import main

    run = tmp_path_factory.mktemp("rde_run")
    os.environ["TBPS_EXPERIMENTS"] = str(Path(__file__).resolve().parent.parent / "experiments")
    os.environ.pop("TBPS_RUN_DIR", None)
    args = [a for a in tiny_overrides(tiny_synth, run) if "mlm" not in a]
    assert main(["train", "experiment=rde_synthetic", *args, "data.noise_rate=0.3",
                 "heads.rde.tse_dim=24"]) == 0
    return run


@pytest.fixture(scope="session")
def ucfa_run(tiny_synth, tmp_path_factory):
    """One tiny trained run of ucfa_synthetic at 30% swapped captions (1 epoch), shared by
    the UCFA and uncertainty tests."""
    from pathlib import Path

    from tbps.cli import main

    run = tmp_path_factory.mktemp("ucfa_run")
    os.environ["TBPS_EXPERIMENTS"] = str(Path(__file__).resolve().parent.parent / "experiments")
    os.environ.pop("TBPS_RUN_DIR", None)
    args = [a for a in tiny_overrides(tiny_synth, run) if not a.startswith("heads.mlm")]
    assert main(["train", "experiment=ucfa_synthetic", *args, "data.noise_rate=0.3",
                 "heads.uamlr.num_heads=2", "heads.uamlr.depth=1", "trainer.max_epochs=1",
                 "trainer.log_every_n_steps=1"]) == 0
    return run


def step_distributions(module, batch: dict, progress: float = 1.0):
    """One ``compute_losses`` on ``batch``: (its loss, its terms, the shared distributions the
    step drew, still in the autograd graph), for tests that follow σ's gradients."""
    seen = {}
    forward = module.distributions.forward

    def keep(encoded):
        seen["d"] = forward(encoded)
        return seen["d"]

    module.distributions.forward = keep
    try:
        loss, terms = module.compute_losses(batch, progress=progress)
    finally:
        del module.distributions.forward  # back to the class's method
    return loss, terms, seen["d"]
