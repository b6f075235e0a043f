"""What a Lightning + Hydra user types: -m/--multirun, --cfg job, Lightning's own trainer
keys, hydra.* settings; each works or gets the exit-2 paragraph, never a traceback or a
silently ignored key. And a log that reads cleanly off a terminal."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides

from tbps.cli import main

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(autouse=True)
def _experiments(monkeypatch):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)


def test_cfg_job_prints_every_multirun_job_and_runs_none(capsys, tmp_path):
    assert main(["train", "-m", "experiment=synthetic", "seed=4,5", "optim.lr=0.1,0.2",
                 "--cfg", "job", f"runs_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    jobs = [yaml.safe_load(part) for part in out.split("# job ")[1:]]
    assert len(jobs) == 4 and not (tmp_path / "synthetic").exists()
    pairs = [(j["seed"], j["optim"]["lr"]) for j in
             [yaml.safe_load(part.split("\n", 1)[1]) for part in out.split("# job ")[1:]]]
    assert pairs == [(4, 0.1), (4, 0.2), (5, 0.1), (5, 0.2)]
    assert main(["eval", "--cfg=job", "experiment=synthetic", "seed=9"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 9


@pytest.mark.parametrize("args, says", [
    (["hydra.run.dir=/tmp/x"], "run_dir=<folder>"),
    (["hydra.sweep.dir=/tmp/x"], "runs_dir=<folder>"),
    (["hydra/launcher=joblib"], "one after another"),
    (["hydra.job.chdir=true"], "no Hydra job runtime"),
    (["--cfg", "hydra"], "no Hydra job runtime"),
    (["--cfg", "everything"], "takes job or all"),
    (["-x"], "unknown option -x"),
    (["seed=0,1"], "add --multirun"),
    (["+trainer.callbacks=null"], "trainer.callbacks is set by tbps"),
    (["+trainer.logger=false"], "logger.wandb=true|false"),
    (["+trainer.default_root_dir=/tmp/x"], "run_dir=<folder>"),
    (["+trainer.enable_checkpointing=false"], "best.ckpt and last.ckpt"),
    (["trainer.max_epochs=0"], "trains nothing"),
    (["-m", "seed=0,1", "trainer.max_epochs=0"], "trains nothing"),
])
def test_refused_with_one_paragraph(args, says, capsys, tmp_path):
    assert main(["train", "experiment=synthetic", f"runs_dir={tmp_path}", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "synthetic").exists()  # no empty run folder left behind


def test_multirun_trains_each_job_and_no_progress_bar_when_asked(tiny_synth, tmp_path, capsys):
    args = [o for o in tiny_overrides(tiny_synth, "x") if not o.startswith("run_dir")]
    assert main(["train", "--multirun", "experiment=synthetic", *args, "seed=1,2",
                 "trainer.max_steps=2", "+trainer.enable_progress_bar=false",
                 f"runs_dir={tmp_path}"]) == 0
    runs = sorted((tmp_path / "synthetic").glob("*/metrics.json"))
    assert len(runs) == 2
    seeds = sorted(yaml.safe_load((p.parent / "config.yaml").read_text())["seed"] for p in runs)
    assert seeds == [1, 2]
    out = capsys.readouterr().out
    assert "multirun: job 2 of 2" in out and "\r" not in out and "epoch 0 done" not in out


def test_fast_dev_run_smokes_without_a_metrics_file(tiny_synth, tmp_path, capsys):
    """Lightning's smoke run works and leaves no metrics.json for `tbps report` to average."""
    run = tmp_path / "run"
    assert main(["train", "experiment=synthetic", *tiny_overrides(tiny_synth, run),
                 "+trainer.fast_dev_run=true"]) == 0
    assert "not written to metrics.json" in capsys.readouterr().out
    assert (run / "config.yaml").is_file() and not (run / "metrics.json").exists()


def test_off_a_terminal_the_log_is_plain_lines(tiny_synth, tmp_path):
    """A job scheduler's log (stdout not a terminal): no carriage returns or cursor codes,
    one line per epoch; the learning rate is logged per step."""
    args = [o for o in tiny_overrides(tiny_synth, tmp_path / "run")]
    done = subprocess.run([sys.executable, "-m", "tbps.cli", "train", "experiment=synthetic",
                           *args, "trainer.max_epochs=1", "logger.csv=true",
                           "trainer.log_every_n_steps=1"],
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "TBPS_EXPERIMENTS": str(EXPERIMENTS),
                               "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "\r" not in log and "\x1b[A" not in log and "epoch 0 done in" in done.stdout
    metrics = next((tmp_path / "run" / "logs").rglob("metrics.csv")).read_text().splitlines()
    assert any(col.startswith("lr-") for col in metrics[0].split(","))


def test_report_into_a_closed_pipe_is_quiet(tiny_run):
    done = subprocess.run(f"{sys.executable} -m tbps.cli report {tiny_run} --out "
                          f"{tiny_run}/report | head -n 1", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.strip() and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_a_run_that_max_steps_stops_before_validation_warns_of_no_missing_monitor(
        tiny_synth, tmp_path):
    """`trainer.max_steps` ending a run mid-epoch is a user's quick check: "best" is decided
    only where validation ends, so Lightning has no missing val/R1 to warn about."""
    import warnings

    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        assert main(["train", "experiment=synthetic", *tiny_overrides(tiny_synth, run),
                     "trainer.max_steps=2"]) == 0
    assert not [w for w in got if "could not find the monitored key" in str(w.message)]
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
