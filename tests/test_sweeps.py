"""Every sweep file, run as `wandb agent` would run it: the command line is built with W&B's
own argument formatting, runs a few steps offline, and the swept values reach the config
(and the W&B run's config, under the same dotted keys)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SYNTH

REPO = Path(__file__).resolve().parent.parent
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
TINY_MODEL = ["encoder.embed_dim=32", "encoder.vision.embed_dim=32", "encoder.vision.depth=1",
              "encoder.vision.num_heads=2", "encoder.text.hidden_size=32",
              "encoder.text.intermediate_size=64", "encoder.text.num_hidden_layers=1",
              "encoder.text.num_attention_heads=2", "data.num_workers=0", "data.batch_size=8",
              "data.eval_batch_size=32", "data.pin_memory=false", "trainer.max_epochs=1",
              "trainer.max_steps=3"]


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The command `wandb agent` runs for one set of parameters (wandb_agent.Agent)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
    from wandb.wandb_agent import Agent

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(interpreter=[sys.executable],  # the agent says "python"
                      program=[sweep["program"]], env=["/usr/bin/env"])
    out = []
    for chunk in sweep.get("command", Agent.DEFAULT_SWEEP_COMMAND):
        c = str(chunk)
        out += sweep_vars.get(c[2:-1], []) if c.startswith("${") and c.endswith("}") else [c]
    return out


def _params(sweep: dict) -> dict:
    """A value for every parameter that is not its default: the last choice, or the max."""
    return {k: (p["values"][-1] if "values" in p else p.get("max", p.get("value")))
            for k, p in sweep["parameters"].items()}


def _run(cmd, run_dir, wandb_mode="disabled"):
    env = {**os.environ, "TBPS_EXPERIMENTS": str(REPO / "experiments"), "WANDB_MODE": wandb_mode,
           "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    env.pop("TBPS_RUN_DIR", None)
    done = subprocess.run([*cmd, f"run_dir={run_dir}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (" ".join(cmd), done.stderr[-3000:])
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def _dotted(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_parameters_reach_the_config(path, tiny_synth, tmp_path):
    from fake_benchmarks import write_rstpreid

    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"]["name"].startswith("val") and sweep["program"] == "train.py"
    params = _params(sweep)
    cmd = agent_command(sweep, params)
    assert cmd[:3] == ["/usr/bin/env", sys.executable, "train.py"]
    assert all(f"{k}={v}" in cmd for k, v in params.items())
    if "experiment=synthetic" in cmd:
        extra = [f"data.root={tiny_synth}", *[f"data.synth.{k}={v}" for k, v in TINY_SYNTH.items()],
                 "heads.mlm.depth=1", "heads.mlm.num_heads=2"]
        mode = "offline"
    else:  # a real-data experiment: a fake RSTPReid copy and a tiny encoder instead of CLIP
        write_rstpreid(tmp_path / "data")
        extra = ["encoder=tiny", f"data.root={tmp_path / 'data'}", "data.image_size=[64,32]",
                 "trainer=cpu", "tokenizer.vocab_size=300", "memory.size=32"]
        mode = "disabled"
    cfg = _run([*cmd, *extra, *TINY_MODEL], tmp_path / "run", mode)
    for key, value in params.items():
        assert _dotted(cfg, key) == pytest.approx(value), key
    if mode == "offline":  # the W&B run's config has the same dotted keys
        (wb,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
        data = wb.read_bytes()
        for key, value in params.items():
            assert _config_item(key, _dotted(cfg, key)) in data, key


def _config_item(key: str, value) -> bytes:
    """A W&B ConfigItem record as protobuf bytes: key (field 1), value_json (field 16)."""
    k, v = key.encode(), json.dumps(value).encode()
    return b"\n" + bytes([len(k)]) + k + b"\x82\x01" + bytes([len(v)]) + v


def test_ui_default_command_with_double_hyphens(tiny_synth, tmp_path):
    """A sweep made in the W&B UI keeps the default command: python train.py --key=value."""
    sweep = {"program": "train.py", "parameters": {}}
    params = {"experiment": "synthetic", "optim.lr": 0.002, "heads.sdm.weight": 0.5}
    cmd = agent_command(sweep, params)
    assert "--optim.lr=0.002" in cmd
    extra = [f"data.root={tiny_synth}", *[f"data.synth.{k}={v}" for k, v in TINY_SYNTH.items()],
             "heads.mlm.depth=1", "heads.mlm.num_heads=2"]
    cfg = _run([*cmd, *extra, *TINY_MODEL], tmp_path / "run")
    assert cfg["optim"]["lr"] == 0.002 and cfg["heads"]["sdm"]["weight"] == 0.5
    assert cfg["experiment"] == "synthetic"


@pytest.mark.parametrize("env", [{"WANDB_MODE": "offline"}, {"HOME": "nohome"}])
def test_a_sweep_without_a_server_stops_with_one_paragraph(env, tmp_path, monkeypatch, capsys):
    from tbps.cli import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, str(tmp_path / v) if k == "HOME" else v)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(SWEEPS[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("wandb login" in err or "offline" in err)
    assert list(tmp_path.glob(".sweep*")) == []
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read the sweep file" in capsys.readouterr().err
