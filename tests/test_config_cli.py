"""Experiments compose; user mistakes give one clear message and exit status 2."""

import json
from pathlib import Path

import pytest

from tbps.cli import main
from tbps.config import compose_experiment, known_experiments, split_experiment
from tbps.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("name", known_experiments(EXPERIMENTS))
def test_every_experiment_composes(name):
    cfg = compose_experiment(name, folder=EXPERIMENTS)
    assert cfg.experiment == name and cfg.heads and cfg.data._target_


def test_overrides_and_wandb_form():
    name, rest = split_experiment(["--experiment=synthetic", "--optim.lr=0.5", "seed=3"])
    assert name == "synthetic" and rest == ["optim.lr=0.5", "seed=3"]
    cfg = compose_experiment(name, [*rest, "heads=[sdm,itc]"], folder=EXPERIMENTS)
    assert cfg.optim.lr == 0.5 and cfg.seed == 3 and set(cfg.heads) == {"sdm", "itc"}


def test_unknown_experiment_lists_known(monkeypatch, capsys):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    assert main(["train", "experiment=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and "synthetic" in err and "Traceback" not in err


def test_unknown_head_lists_known():
    with pytest.raises(ConfigError, match="unknown head 'foo'.*known heads: acsa, cmpc, cmpm, dcl, id, ire, itc, mlm, pcl, rde, sampled_id, sdm, uamlr, ugm"):
        compose_experiment("synthetic", ["heads=[sdm,foo]"], folder=EXPERIMENTS)


def test_missing_data_root(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    code = main(["train", "data=cuhk_pedes", f"data.root={tmp_path / 'nowhere'}",
                 f"run_dir={tmp_path / 'run'}", "logger.wandb=false"])
    err = capsys.readouterr().err
    assert code == 2 and "reid_raw.json not found" in err and "DATA_ROOT" in err


def test_unset_data_root(monkeypatch, capsys):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.delenv("DATA_ROOT", raising=False)
    assert main(["train", "data=cuhk_pedes", "logger.wandb=false"]) == 2
    assert "set DATA_ROOT" in capsys.readouterr().err


def test_malformed_reid_raw_via_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    (tmp_path / "CUHK-PEDES").mkdir()
    (tmp_path / "CUHK-PEDES" / "reid_raw.json").write_text(json.dumps([{"split": "train"}]))
    code = main(["train", "data=cuhk_pedes", f"data.root={tmp_path}", f"run_dir={tmp_path / 'r'}",
                 "logger.wandb=false"])
    err = capsys.readouterr().err
    assert code == 2 and "record 0" in err and "'captions'" in err
