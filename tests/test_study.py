"""`tbps study` trains what is missing two at a time, skips what finished, continues what
was stopped, and ends with the report; its arguments are checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_overrides

from tbps.cli import main
from tbps.errors import ConfigError
from tbps.study import plan, record

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _tiny(root, tmp_path):
    return [a for a in tiny_overrides(root, tmp_path / "unused")
            if not a.startswith(("heads.", "run_dir", "trainer.max_epochs"))]


def test_study_trains_skips_and_reports(tiny_synth, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent.parent / "src"),
                                                      os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "study"
    args = ["study", "--out", str(out), "--methods", "clip_synthetic", "acsa_synthetic",
            "--noise", "0", "0.3", "--seeds", "0", "--epochs", "1", *_tiny(tiny_synth, tmp_path)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "4 to train" in text and text.count("done ") == 4
    for run in plan(out, ["clip_synthetic", "acsa_synthetic"], [0.0, 0.3], [0]):
        metrics = json.loads((run.folder / "metrics.json").read_text())
        # the study tests the last epoch's model too; after one epoch it is the best one
        assert metrics["test_last/R1"] == metrics["test/R1"]
        assert metrics["test_last/mAP"] == metrics["test/mAP"]
    report = (out / "report" / "report.md").read_text()
    assert "acsa_synthetic" in report and "clip_synthetic" in report
    assert "R1 (last epoch)" in report
    assert (out / "report" / "report.png").is_file()
    # a second call trains nothing, and says when finished runs came from another processor
    moved = plan(out, ["acsa_synthetic"], [0.3], [0])[0].folder / "machine.json"
    entries = json.loads(moved.read_text())
    moved.write_text(json.dumps([{**entries[0], "processor": "Other CPU 9000"}]))
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "4 finished, 0 to train" in text
    assert "note: 1 finished run here trained on Other CPU 9000" in text
    moved.write_text(json.dumps(entries))

    # the published record (make docs-study): configs and metrics, no checkpoints; a seed
    # recorded on another day stays, and the report over the record sees all of them
    dest = tmp_path / "record"
    earlier = dest / "clip_synthetic" / "noise0-seed7"
    earlier.mkdir(parents=True)
    first = plan(out, ["clip_synthetic"], [0.0], [0])[0].folder
    (earlier / "config.yaml").write_text((first / "config.yaml").read_text()
                                         .replace("seed: 0", "seed: 7"))
    (earlier / "metrics.json").write_text((first / "metrics.json").read_text())
    # `tbps uncertainty --out RUN/uncertainty.json` beside one run: it travels with that run
    measured = plan(out, ["clip_synthetic"], [0.3], [0])[0].folder
    (measured / "uncertainty.json").write_text('{"noise": {}}\n')
    copied = record(out, dest)
    assert len(copied) == 4
    for folder in copied:
        extra = ["uncertainty.json"] if out / folder.relative_to(dest) == measured else []
        assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "machine.json",
                                                            "metrics.json", *extra]
        src = out / folder.relative_to(dest)
        assert json.loads((folder / "metrics.json").read_text()) == \
            json.loads((src / "metrics.json").read_text())
    assert main(["report", str(dest), "--by", "data.noise_rate", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out.split("\n\nwritten")[0])["groups"]
    seeds = {(r["experiment"], r["data.noise_rate"]): r["seeds"] for r in rows}
    assert seeds == {("clip_synthetic", 0.0): 2, ("clip_synthetic", 0.3): 1,
                     ("acsa_synthetic", 0.0): 1, ("acsa_synthetic", 0.3): 1}


def test_record_refuses_a_study_without_finished_runs(tmp_path):
    (tmp_path / "study" / "synthetic" / "noise0-seed0").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no finished run"):
        record(tmp_path / "study", tmp_path / "record")
    done = subprocess.run([sys.executable, "-m", "tbps.study", "record", str(tmp_path / "nope"),
                           str(tmp_path / "record")], capture_output=True, text=True)
    assert done.returncode == 2 and "run the study first" in done.stderr


def test_study_refuses_bad_arguments(capsys):
    assert main(["study", "--epochs", "0", "--dry-run"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_a_run_is_trained_by_one_study_at_a_time(tmp_path, capsys):
    """Two studies over one folder: a run another live process holds, or one that finished
    since the study was planned, is skipped, not trained twice into the same checkpoints;
    the lock of a process that has ended is taken over."""
    from tbps.study import LOCK, claim, run_study

    folder = tmp_path / "study" / "synthetic" / "noise0-seed0"
    assert claim(folder) is None
    assert (folder / LOCK).read_text() == str(os.getpid())
    assert "another study is training it" in claim(folder)

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (folder / LOCK).write_text(str(ended.pid))
    assert claim(folder) is None  # a stopped study's lock
    (folder / LOCK).write_text("half-writ")
    assert claim(folder) is None

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK).write_text(str(holder.pid))
        run_study(tmp_path / "study", ["synthetic"], [0.0], [0], epochs=1, parallel=1)
        text = capsys.readouterr().out
        assert f"skipped {folder}: another study is training it (process {holder.pid}" in text
        assert "trained 0 runs" in text and "started" not in text
        assert (folder / LOCK).read_text() == str(holder.pid)  # left to its holder
    finally:
        holder.kill()
        holder.wait()

    (folder / "metrics.json").write_text("{}")
    assert claim(folder) == "finished meanwhile"
