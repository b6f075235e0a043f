"""Bad settings stop every command before data or model are built (exit 2, the key named);
a diverged loss stops a run clearly or is skipped and counted; a resumed run continues
its W&B run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from tbps.cli import main
from tbps.heads.base import AlignmentHead
from tbps.settings_types import NonNegativeInt

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(autouse=True)
def _experiments(monkeypatch):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)


# One bad value per key family: (experiment, override, what the message must name).
BAD_SETTINGS = [
    ("synthetic", "optim.lr=abc", "optim.lr='abc'"),
    ("synthetic", "optim.lr=0", "optim.lr=0: Input should be greater than 0"),
    ("synthetic", "optim.lrr=0.1", "did you mean optim.lr?"),
    ("synthetic", "optim.interval=week", "'step' or 'epoch'"),
    ("synthetic", "optim.warmup_factor=1.5", "optim.warmup_factor=1.5"),
    ("synthetic", "data.batch_size=0", "data.batch_size=0"),
    ("synthetic", "data.batch_size=2.5", "data.batch_size=2.5"),
    ("synthetic", "data.noise_rate=1.5", "data.noise_rate=1.5"),
    ("synthetic", "data.sampler=balanced", "'random' or 'identity'"),
    ("synthetic", "data.val_split=dev", "data.val_split='dev'"),
    ("synthetic", "data.caption_cleaning=strip", "data.caption_cleaning='strip'"),
    ("synthetic", "data.image_size=[100,32]", "multiples of encoder.vision.patch_size=8"),
    ("synthetic", "data.augment.flop=0.5", "did you mean data.augment.flip?"),
    ("synthetic", "data.synth.identities=-3", "data.synth.identities=-3"),
    ("synthetic", "heads.sdm.temperature=-1", "heads.sdm.temperature=-1"),
    ("synthetic", "heads.sdm.weight=0", "heads.sdm.weight=0"),
    ("synthetic", "heads.mlm.mask_prob=1.5", "heads.mlm.mask_prob=1.5"),
    ("synthetic", "heads.mlm.dept=2", "did you mean heads.mlm.depth?"),
    ("synthetic", "+heads.sdm.tau=0.1", "unknown setting heads.sdm.tau"),
    ("synthetic", "trainer.max_epochs=-5", "trainer.max_epochs=-5"),
    ("synthetic", "trainer.max_epoch=3", "did you mean trainer.max_epochs?"),
    ("synthetic", "tokenizer.vocab_size=0", "tokenizer.vocab_size=0"),
    ("synthetic", "+encoder.text_pool=max", "encoder.text_pool='max'"),
    ("synthetic", "encoder.embed_dim=0", "encoder.embed_dim=0"),
    ("synthetic", "logger.wandb=maybe", "logger.wandb='maybe'"),
    ("synthetic", "seed=-1", "seed=-1"),
    ("synthetic", "nonfinite_loss=ignore", "'stop' or 'skip'"),
    ("synthetic", "memory.size=10", "memory is off (null)"),
    ("crue_synthetic", "memory.momentum=1.0", "memory.momentum=1.0"),
    ("crue_synthetic", "text_augment.mask=2", "text_augment.mask=2"),
    ("crue_synthetic", "heads.ire.prior=both", "'paired' or 'other'"),
    ("crue_synthetic", "heads.ugm.num_samples=0", "heads.ugm.num_samples=0"),
    ("ucfa_synthetic", "heads.dcl.distance=kl", "'w2' or 'csd'"),
    ("ucfa_synthetic", "heads.uamlr.uncertainty=both", "'points', 'weight' or 'none'"),
    ("ucfa_synthetic", "distributions.variance_from=patches", "'words' or 'global_and_words'"),
    ("ucfa_synthetic", "heads.pcl.num_samples=0", "heads.pcl.num_samples=0"),
    ("ucfa_synthetic", "heads.uamlr.num_samples=0", "heads.uamlr.num_samples=0"),
    ("ucfa_synthetic", "heads.uamlr.mask_prob=0", "heads.uamlr.mask_prob=0"),
    ("ucfa_synthetic", "heads.uamlr.mask_prob=1.5", "heads.uamlr.mask_prob=1.5"),
    ("synthetic", "heads=[sdm,dcl]", "heads ['dcl'] need distributions, which is off"),
    ("synthetic", "heads=[sdm,ugm]", "heads ['ugm'] need memory, which is off"),
    ("ucfa_synthetic", "+text_augment.delete=0.1", "text_augment.delete would misalign"),
    ("acsa_synthetic", "heads.acsa.fusion_weight=1.5", "heads.acsa.fusion_weight=1.5"),
    ("acsa_synthetic", "heads.acsa.fusion_grid=[0.9,-0.1]", "heads.acsa.fusion_grid.1=-0.1"),
    ("acsa_synthetic", "heads.acsa.top_k=0", "heads.acsa.top_k=0"),
    ("acsa_synthetic", "heads.acsa.num_phrases=0", "heads.acsa.num_phrases=0"),
    ("acsa_synthetic", "heads.acsa.phrase_mode=words", "'span' or 'separate'"),
    ("acsa_synthetic", "heads.acsa.part_mode=grid", "'stripes' or 'channel_split'"),
]


@pytest.mark.parametrize("experiment,override,named", BAD_SETTINGS)
def test_a_bad_setting_stops_train_before_anything_is_built(experiment, override, named,
                                                             tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(["train", f"experiment={experiment}", override, "data.root=/nonexistent",
                 f"runs_dir={runs}"])
    err = capsys.readouterr().err
    assert code == 2 and named in err, err
    assert "Traceback" not in err and not runs.exists()  # no run folder, no data read


def test_eval_bench_and_sweep_runs_check_settings_too(capsys):
    assert main(["eval", "experiment=synthetic", "optim.lr=abc"]) == 2
    assert "optim.lr='abc'" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--only", "train", "--experiment", "nosuch"]) == 2
    assert "unknown experiment 'nosuch'" in capsys.readouterr().err
    assert main(["train", "--experiment=synthetic", "--optim.lr=-1"]) == 2  # W&B agent form
    assert "optim.lr=-1" in capsys.readouterr().err


BAD_ARGUMENTS = [
    ["search", "--ckpt", "x.ckpt", "--gallery", ".", "--query", "  "],
    ["search", "--ckpt", "x.ckpt", "--gallery", ".", "--query", "a man", "--topk", "0"],
    ["search", "--ckpt", "x.ckpt", "--gallery", ".", "--query", "a man", "--device", "tpu"],
    ["search", "--ckpt", "x.ckpt", "--gallery", ".", "--query", "a man", "--batch-size", "-1"],
    ["synth", "--out", "OUT", "--identities", "-3"],
    ["synth", "--out", "OUT", "--noise-rate", "1.5"],
    ["synth", "--out", "OUT", "--omit-rate", "-0.1"],
    ["synth", "--out", "OUT", "--height", "4"],
    ["synth", "--out", "OUT", "--workers", "0"],
    ["check-data", "--dataset", "cuhk-pedes", "--root", ".", "--workers", "0"],
    ["check-data", "--root", ".", "--dataset", "market"],
    ["bench", "--steps", "0"],
    ["bench", "--batch-size", "x"],
    ["bench", "--peak-tflops", "0"],
]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_every_tool_refuses_bad_arguments(argv, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {argv[-2]}" in err, err
    assert not (tmp_path / "out").exists()


def test_synth_library_call_refuses_bad_knobs(tmp_path):
    from tbps.data.synthpedes.generate import SynthConfig, generate
    from tbps.errors import ConfigError

    with pytest.raises(ConfigError, match="identities"):
        generate(tmp_path, SynthConfig(identities=-3))
    assert not any(tmp_path.iterdir())


class NaNHead(AlignmentHead):
    """A loss that turns NaN on its ``at``-th training call (counted from 1)."""

    def __init__(self, ctx, weight: float = 1.0, at: NonNegativeInt = 0) -> None:
        super().__init__(ctx, weight)
        self.at, self.calls = at, 0

    def forward(self, encoded, batch):
        self.calls += 1
        bad = float("nan") if self.calls == self.at else 0.0
        return {"loss_nan": encoded.image_global.sum() * 0.0 + bad}


def _nan_run(tiny_synth, run, *extra):
    args = [*tiny_overrides(tiny_synth, run), "trainer.max_epochs=3",
            "+heads.nan={_target_: test_reliability.NaNHead, at: 12}", *extra]
    return main(["train", "experiment=synthetic", *args])


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tiny_synth, tmp_path,
                                                                     capsys):
    assert _nan_run(tiny_synth, tmp_path) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 11 (epoch" in err and "non-finite loss_nan" in err, err
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert last["global_step"] < 12  # from before the divergence, and whole
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values()
               if v.is_floating_point())
    assert not (tmp_path / "metrics.json").exists()


def test_skip_mode_drops_the_step_and_counts_it(tiny_synth, tmp_path, capsys):
    import json

    assert _nan_run(tiny_synth, tmp_path, "nonfinite_loss=skip") == 0
    assert "step skipped (1 so far)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train/nonfinite_skipped"] == 1


def test_a_resumed_run_continues_its_wandb_run_offline(tiny_synth, tmp_path):
    pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "TBPS_EXPERIMENTS": str(EXPERIMENTS),
           "WANDB_SILENT": "true"}
    run = tmp_path / "run"
    base = [sys.executable, "-m", "tbps.cli", "train", "experiment=synthetic",
            *[o for o in tiny_overrides(tiny_synth, run) if not o.startswith("logger.wandb")],
            "logger.wandb=true"]
    first = subprocess.run([*base, "trainer.max_epochs=1"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run([*base, "trainer.max_epochs=2", f"resume={run}"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    run_id = (run / "wandb_id").read_text().strip()
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline
