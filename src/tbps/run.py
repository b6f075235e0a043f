"""Run folders, loggers and callbacks shared by `tbps train` and `tbps eval`."""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (Callback, ModelCheckpoint, ProgressBar,
                                         TQDMProgressBar)
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from .sweep import wandb_logged_in

METRIC_ORDER = ("R1", "R5", "R10", "mAP", "mINP", "rSum")


def make_run_dir(cfg: DictConfig) -> Path:
    """``runs/<experiment>/<timestamp>/``; the path is handed to DDP children through the
    environment so that every process writes to the same folder."""
    if cfg.run_dir:
        path = Path(cfg.run_dir)
    elif int(os.environ.get("LOCAL_RANK", "0")) > 0 and os.environ.get("TBPS_RUN_DIR"):
        path = Path(os.environ["TBPS_RUN_DIR"])  # a DDP child: the launcher's folder
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(cfg.runs_dir) / cfg.experiment / stamp
        n = 1
        while path.exists():
            n += 1
            path = Path(cfg.runs_dir) / cfg.experiment / f"{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TBPS_RUN_DIR"] = str(path)
    return path


def make_loggers(cfg: DictConfig, run_dir: Path, resumed: bool = False) -> list[Logger]:
    """CSV always (if enabled); W&B offline unless logged in, off with WANDB_MODE=disabled.
    A resumed run logs CSV to ``logs/resumed-<time>/`` so that nothing is overwritten."""
    loggers: list[Logger] = []
    if cfg.logger.csv:
        version = f"resumed-{datetime.now():%Y%m%d-%H%M%S}" if resumed else ""
        loggers.append(CSVLogger(run_dir, name="logs", version=version))
    if cfg.logger.wandb and os.environ.get("WANDB_MODE") != "disabled":
        offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_logged_in()
        wb = WandbLogger(project=cfg.logger.project, save_dir=str(run_dir), offline=offline,
                         name=f"{cfg.experiment}/{run_dir.name}", id=wandb_run_id(run_dir),
                         resume="allow")
        # Lightning 2.6 hands wandb.init anonymous=None, which W&B >= 0.22 answers with "The
        # anonymous setting has no effect" on every run: the setting is gone, so is the key
        init = getattr(wb, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
        wb.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
        loggers.append(wb)
    return loggers


def wandb_run_id(run_dir: Path) -> str:
    """The run folder's W&B run id, made on its first start and kept in ``wandb_id``, so
    that a resumed run continues the same W&B run (online and offline) and its charts do
    not break in two."""
    path = run_dir / "wandb_id"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:8]  # W&B's own ids are 8 lowercase letters and digits
    path.write_text(run_id + "\n")
    return run_id


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config -> dotted keys, the form sweeps and overrides use."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


class RandomStates(Callback):
    """Saves the Python, NumPy and torch random states with every checkpoint and restores
    them on resume, so that a resumed run draws the same masks, samples and augmentations
    as an uninterrupted one (exactly so with data.num_workers=0; worker processes start
    fresh random streams)."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only, so that checkpoints load with weights_only=True
        states = {"python": random.getstate(), "torch": torch.get_rng_state(),
                  "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class TrainThroughput(Callback):
    """Training samples per second over the epochs' training phases (validation excluded),
    and the seconds of ``fit`` — both summed over every resume of the run (kept in the
    checkpoints), so that a run's figures add up however often it was interrupted."""

    def __init__(self) -> None:
        self.samples, self.seconds, self._start = 0, 0.0, 0.0
        self._fit_before, self._fit_start = 0.0, None

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.samples += batch["image"].shape[0] * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._start
        module.log("train/samples_per_s", self.samples_per_s)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    @property
    def fit_seconds(self) -> float:
        """Seconds in ``fit`` over this command and every earlier start of the run."""
        now = 0.0 if self._fit_start is None else time.perf_counter() - self._fit_start
        return self._fit_before + now

    def state_dict(self) -> dict:
        return {"samples": self.samples, "seconds": self.seconds, "fit_seconds": self.fit_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.seconds = int(state["samples"]), float(state["seconds"])
        self._fit_before = float(state.get("fit_seconds", 0.0))


def callbacks(run_dir: Path, val_prefix: str = "val", show_progress: bool = True
              ) -> tuple[list[Callback], ModelCheckpoint, TrainThroughput]:
    # "best" is decided where validation ends, never at a training epoch's end: a run that
    # `trainer.max_steps` stops before its first validation has no val/R1 to compare, and
    # Lightning would warn that the monitored key is missing (and save nothing either way)
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=f"{val_prefix}/R1",
                           mode="max", auto_insert_metric_name=False, enable_version_counter=False,
                           save_on_train_epoch_end=False)
    # last.ckpt every epoch. Not ``save_last=True``: Lightning 2.6 writes "last" only when it
    # also wrote a top-k file, so a run whose validation stopped improving kept an old
    # last.ckpt and a resumed run repeated epochs.
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None,
                           save_top_k=1, every_n_epochs=1, auto_insert_metric_name=False,
                           enable_version_counter=False)
    speed = TrainThroughput()
    shown = [progress_display()] if show_progress else []
    return [ckpt, last, speed, RandomStates(), *shown], ckpt, speed


def progress_display() -> Callback:
    """A bar on a terminal; plain lines elsewhere (a job scheduler's log, ``| tee``), where
    a bar's carriage returns and cursor codes would fill the file. `tbps train` and
    `tbps eval` both use it."""
    return TQDMProgressBar(refresh_rate=10) if sys.stdout.isatty() else LineProgress()


class LineProgress(ProgressBar):
    """One line per ``every`` training steps and one per epoch and evaluation, for logs."""

    def __init__(self, every: int = 50) -> None:
        super().__init__()
        self.every, self._enabled, self._start = every, True, 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, flush=True)

    def _values(self, trainer: L.Trainer) -> str:
        shown = {k: v for k, v in self.get_metrics(trainer, trainer.lightning_module).items()
                 if k != "v_num"}
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in shown.items())

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.every == 0:
            self._print(f"epoch {trainer.current_epoch} step {batch_idx + 1}/"
                        f"{trainer.num_training_batches} {self._values(trainer)}")

    def on_train_epoch_end(self, trainer, module) -> None:
        self._print(f"epoch {trainer.current_epoch} done in "
                    f"{time.perf_counter() - self._start:.0f} s: {self._values(trainer)}")

    def on_test_end(self, trainer, module) -> None:
        self._print("test done")


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    path.write_text(json.dumps({k: round(float(v), 4) for k, v in sorted(metrics.items())}, indent=1))


def print_table(metrics: dict[str, float], title: str) -> None:
    table = Table(title=title)
    table.add_column("split")
    for m in METRIC_ORDER:
        table.add_column(m, justify="right")
    for split in ("val", "val_on_test", "val_holdout", "test", "test_last"):
        # a re-scoring head's runs: the fused ranking, then the global ranking alone
        parts = sorted({k[len(split) + 1:-3] for k in metrics
                        if k.startswith(f"{split}/") and k.endswith("/R1") and k.count("/") == 2
                        and k != f"{split}/global/R1"})
        rows = [(split, split), (f"{split}/global", f"{split} (global only)")]
        rows += [(f"{split}/{p}", f"{split} ({p} alone)") for p in parts]
        for key, label in rows:
            if f"{key}/R1" in metrics:
                table.add_row(label, *(f"{metrics[f'{key}/{m}']:.2f}" for m in METRIC_ORDER))
        if f"{split}/fusion_weight" in metrics:
            table.caption = f"fused: w·global + (1 − w)·local, w = {metrics[f'{split}/fusion_weight']:.2f} (chosen on validation)"
    Console(width=100).print(table)
