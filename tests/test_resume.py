"""A seeded tiny run killed with SIGKILL mid-epoch and resumed with resume=true ends with
the same metrics as the same run left alone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _cmd(root, runs, extra=()):
    args = [o for o in tiny_overrides(root, "x") if not o.startswith("run_dir")]
    return [sys.executable, "-m", "tbps.cli", "train", "experiment=synthetic", *args,
            "data.batch_size=4", "trainer.max_epochs=4", "seed=7", f"runs_dir={runs}", *extra]


def _env():
    env = {**os.environ, "TBPS_EXPERIMENTS": str(EXPERIMENTS), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    env.pop("TBPS_RUN_DIR", None)
    return env


def _metrics(runs):
    (path,) = Path(runs, "synthetic").glob("*/metrics.json")
    return json.loads(path.read_text())


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_synth, tmp_path):
    whole = tmp_path / "whole"
    done = subprocess.run(_cmd(tiny_synth, whole), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    broken = tmp_path / "broken"
    proc = subprocess.Popen(_cmd(tiny_synth, broken), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(broken.glob("synthetic/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint"
        time.sleep(0.05)
    time.sleep(1.0)  # into the next epoch
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = broken.glob("synthetic/*")
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run(_cmd(tiny_synth, broken, ["resume=true"]), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    a, b = _metrics(whole), _metrics(broken)
    for key in ("test/R1", "test/R5", "test/mAP", "test/mINP", "val/R1", "val/epoch"):
        assert b[key] == pytest.approx(a[key], abs=1e-4), key


def test_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    from tbps.cli import main

    os.environ["TBPS_EXPERIMENTS"] = str(EXPERIMENTS)
    assert main(["train", "experiment=synthetic", f"runs_dir={tmp_path}", "resume=true"]) == 2
    assert "has checkpoints/last.ckpt" in capsys.readouterr().err
