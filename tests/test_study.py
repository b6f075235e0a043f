"""`tbps study` trains what is missing two at a time, skips what finished, continues what
was stopped, and ends with the report; its arguments are checked."""

import os
from pathlib import Path

from conftest import tiny_overrides

from tbps.cli import main
from tbps.study import plan

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
        assert (run.folder / "metrics.json").is_file()
    report = (out / "report" / "report.md").read_text()
    assert "acsa_synthetic" in report and "clip_synthetic" in report
    assert (out / "report" / "report.png").is_file()
    # a second call trains nothing
    assert main(args) == 0
    assert "4 finished, 0 to train" in capsys.readouterr().out


def test_study_refuses_bad_arguments(capsys):
    assert main(["study", "--epochs", "0", "--dry-run"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
