"""A seeded tiny run killed with SIGKILL mid-epoch, or in the middle of writing a checkpoint,
and resumed with resume=true ends with the same metrics as the same run left alone; a
resumed run continues its W&B run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _cmd(root, runs, extra=()):
    args = [o for o in tiny_overrides(root, "x") if not o.startswith("run_dir")]
    return [sys.executable, "-m", "tbps.cli", "train", "experiment=synthetic", *args,
            "data.batch_size=4", "trainer.max_epochs=8", "seed=7", f"runs_dir={runs}", *extra]


def _env():
    env = {**os.environ, "TBPS_EXPERIMENTS": str(EXPERIMENTS), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    env.pop("TBPS_RUN_DIR", None)
    return env


def _metrics(runs):
    (path,) = Path(runs, "synthetic").glob("*/metrics.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def uninterrupted(tiny_synth, tmp_path_factory):
    whole = tmp_path_factory.mktemp("whole")
    done = subprocess.run(_cmd(tiny_synth, whole), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return _metrics(whole)


def _same_metrics(a, b):
    for key in ("test/R1", "test/R5", "test/mAP", "test/mINP", "val/R1", "val/epoch"):
        assert b[key] == pytest.approx(a[key], abs=1e-4), key


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_synth, tmp_path, uninterrupted):
    broken = tmp_path / "broken"
    proc = subprocess.Popen(_cmd(tiny_synth, broken), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(broken.glob("synthetic/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint"
        time.sleep(0.05)
    # into the next epoch: an epoch takes ~0.3 s on an idle 2-core machine, and the seven
    # after the first checkpoint ~2 s, so a kill a second later could find the run done
    time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = broken.glob("synthetic/*")
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run(_cmd(tiny_synth, broken, ["resume=true"]), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    _same_metrics(uninterrupted, _metrics(broken))


# Runs tbps with torch.save slowed down: the SLOW_AT-th write of a checkpoint's temporary
# file writes half its bytes, signals MARKER and waits to be killed.
SLOW_WRITER = """
import io, os, sys, time, torch
real, count = torch.save, [0]
def slow_save(obj, f, *args, **kwargs):
    if not str(getattr(f, "name", "")).endswith(".tmp"):
        return real(obj, f, *args, **kwargs)
    count[0] += 1
    buf = io.BytesIO()
    real(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    if count[0] == int(os.environ["SLOW_AT"]):
        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        open(os.environ["MARKER"], "w").close()
        time.sleep(600)
    f.write(data)
torch.save = slow_save
from tbps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_a_checkpoint_write_then_resume(tiny_synth, tmp_path, uninterrupted):
    broken, marker = tmp_path / "broken", tmp_path / "writing"
    cmd = [sys.executable, "-c", SLOW_WRITER, *_cmd(tiny_synth, broken)[3:]]
    # writes 1-2: best + last of epoch 0; write 3: epoch 1's first file
    proc = subprocess.Popen(cmd, env={**_env(), "SLOW_AT": "3", "MARKER": str(marker)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before the write"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = broken.glob("synthetic/*")
    ckpts = run / "checkpoints"
    assert list(ckpts.glob(".*.tmp")), "the killed write left no temporary file"
    for name in ("last.ckpt", "best.ckpt"):  # whole files of epoch 0, never a torn one
        state = torch.load(ckpts / name, map_location="cpu", weights_only=True)
        assert state["epoch"] == 0, name

    resumed = subprocess.run(_cmd(tiny_synth, broken, ["resume=true"]), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {ckpts / 'last.ckpt'}" in resumed.stdout
    assert "removed" in resumed.stdout and not list(ckpts.glob(".*.tmp"))
    _same_metrics(uninterrupted, _metrics(broken))


def test_resume_skips_a_checkpoint_that_does_not_load(tiny_synth, tmp_path):
    """The newest run's last.ckpt is truncated: resume=true says so and takes the older run."""
    from tbps.train import find_resume
    from omegaconf import OmegaConf

    runs = tmp_path / "runs"
    old, new = runs / "synthetic" / "a" / "checkpoints", runs / "synthetic" / "b" / "checkpoints"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, old / "last.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, new / "last.ckpt")
    data = (new / "last.ckpt").read_bytes()
    (new / "last.ckpt").write_bytes(data[: len(data) // 2])
    cfg = OmegaConf.create({"resume": True, "runs_dir": str(runs), "experiment": "synthetic"})
    assert find_resume(cfg) == old / "last.ckpt"


def test_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    from tbps.cli import main

    os.environ["TBPS_EXPERIMENTS"] = str(EXPERIMENTS)
    assert main(["train", "experiment=synthetic", f"runs_dir={tmp_path}", "resume=true"]) == 2
    assert "has checkpoints/last.ckpt" in capsys.readouterr().err


def test_extending_a_finished_run_trains_the_added_steps_and_epochs(tiny_synth, tmp_path):
    """A finished 1-epoch run (its last.ckpt written at the end of epoch 0) resumed with
    more steps trains them, and resumed with more epochs trains and validates them; no
    start burns an empty epoch, and the recorded training time adds up."""
    from tbps.cli import main

    run = tmp_path / "run"
    args = [o for o in tiny_overrides(tiny_synth, run) if not o.startswith("trainer.max_epochs")]
    os.environ["TBPS_EXPERIMENTS"] = str(EXPERIMENTS)

    def step(*extra):
        assert main(["train", "experiment=synthetic", *args, *extra]) == 0
        last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        return last["global_step"], json.loads((run / "metrics.json").read_text())

    steps, first = step("trainer.max_epochs=1")
    more, second = step("trainer.max_epochs=2", f"trainer.max_steps={steps + 3}", f"resume={run}")
    assert more == steps + 3 and second["train/seconds"] > first["train/seconds"]
    # an epoch that max_steps cut short counts as ended (Lightning's rule): epoch 2 in full
    done, third = step("trainer.max_epochs=3", f"resume={run}")
    assert done == more + steps and third["train/seconds"] > second["train/seconds"]
    same, _ = step("trainer.max_epochs=3", f"resume={run}")  # nothing left to train
    assert same == done
    # every start names its machine; a resume never overwrites the first start's entry
    starts = json.loads((run / "machine.json").read_text())
    assert len(starts) == 4
    assert all(e["label"] == starts[0]["label"] for e in starts)
