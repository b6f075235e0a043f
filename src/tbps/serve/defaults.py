"""What `tbps serve` serves with no arguments: the newest `synthetic` run's best checkpoint
over the test images of the data set it trained on, so that `make train` then `make serve`
works on a fresh clone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import ConfigError


def newest_synthetic_checkpoint(runs: Path = Path("runs")) -> Path:
    found = sorted(runs.glob("synthetic/*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"no {runs}/synthetic/*/checkpoints/best.ckpt: run `make train` first, "
                          "or pass --ckpt CKPT --gallery DIR")
    return found[-1]


def test_gallery(ckpt: Path) -> Path:
    """``<run>/serve_gallery/``: the test split's images of the run's data set, linked (or
    copied where links cannot be made), made once. Hard links, not symlinks: the index
    leaves out links that lead outside the folder."""
    from omegaconf import OmegaConf

    from ..train import build_data

    run = ckpt.parent.parent
    folder = run / "serve_gallery"
    done = folder / ".complete"
    if done.is_file():
        return folder
    config = run / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{config} is missing, so the test images of {ckpt}'s data set are "
                          "unknown; pass --gallery DIR")
    data = OmegaConf.load(config).data
    paths = build_data(OmegaConf.create({"data": data})).records["test"].image_paths
    folder.mkdir(exist_ok=True)
    for p in paths:
        target = folder / Path(p).name
        if not target.exists():
            try:
                os.link(p, target)
            except OSError:
                shutil.copy2(p, target)
    done.touch()
    return folder
