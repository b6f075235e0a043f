"""`tbps train` and `tbps eval`: build data and model from a config, fit, test, report."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from . import STARTED
from .data.datamodule import TBPSDataModule
from .data.tokenizer import CaptionTokenizer
from .errors import ConfigError, TBPSError
from .machine import record_start
from .model.encoder import DualEncoder
from .model.checkpoint import load_checkpoint
from .model.checkpoint_io import AtomicCheckpointIO, partial_writes
from .model.module import TBPSModule
from .run import (callbacks, make_loggers, make_run_dir, print_table, progress_display,
                  write_metrics)


def build_data(cfg: DictConfig) -> TBPSDataModule:
    try:
        dm = instantiate(cfg.data, _convert_="all")
    except InstantiationException as exc:  # Hydra wraps our own clear errors: unwrap them
        if isinstance(exc.__cause__, TBPSError):
            raise exc.__cause__ from None
        raise
    dm.prepare_data()
    return dm


def build_tokenizer_and_weights(cfg: DictConfig, dm: TBPSDataModule
                                ) -> tuple[CaptionTokenizer, DualEncoder | None]:
    """CLIP runs (``encoder.pretrained``): the CLIP tokenizer and the loaded encoder, whose
    architecture is written into ``cfg.encoder`` so that checkpoints rebuild without the
    weights file. From-scratch runs: a BPE tokenizer trained on the training captions."""
    for key, kind in (("swin_weights", "file"), ("bert_weights", "folder")):
        path = cfg.encoder.get(key)
        if path and not (Path(path).is_file() if kind == "file" else Path(path).is_dir()):
            raise ConfigError(f"encoder.{key}={path}: no such {kind}; give the local "
                              f"{'Swin-T checkpoint' if kind == 'file' else 'bert-base-uncased folder'}"
                              " or leave it unset (random weights)")
    if cfg.encoder.get("bert_weights"):  # encoder=swin_bert with BERT's own vocabulary
        tok = CaptionTokenizer.bert(cfg.encoder.bert_weights, cfg.tokenizer.context_length)
        with open_dict(cfg):
            cfg.tokenizer.vocab_size = tok.vocab_size
        return tok, None
    if "pretrained" not in cfg.encoder:
        tok = CaptionTokenizer.train(dm.records["train"].captions, cfg.tokenizer.vocab_size,
                                     cfg.tokenizer.context_length)
        return tok, None
    source = cfg.encoder.pretrained
    if not source:
        raise ConfigError(f"experiment {cfg.experiment!r} starts from CLIP weights: set "
                          "CLIP_WEIGHTS (or encoder.pretrained=) to OpenAI's ViT-B-16.pt, an "
                          "open_clip checkpoint or a Hugging Face CLIP folder")
    enc = DualEncoder.from_pretrained(source, tuple(cfg.data.image_size),
                                      cfg.encoder.pos_interpolation, cfg.encoder.act,
                                      cfg.encoder.text_pool)
    with open_dict(cfg):
        cfg.encoder.vision = enc.arch["vision"]
        cfg.encoder.text = enc.arch["text"]
        cfg.encoder.embed_dim = enc.arch["embed_dim"]
        cfg.tokenizer.context_length = enc.arch["context_length"]
        cfg.tokenizer.vocab_size = enc.arch["vocab_size"]
    return enc.tokenizer, enc


def _loads(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint, else why not (memory-mapped: cheap)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - truncated files raise many kinds
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None if isinstance(ckpt, dict) and "state_dict" in ckpt else "not a training checkpoint"


def find_resume(cfg: DictConfig) -> Path:
    """``resume=true``: the newest last.ckpt of the experiment's runs that loads (any that
    do not are reported and skipped); ``resume=<run folder or .ckpt>``: that one."""
    if cfg.resume is not True:
        path = Path(str(cfg.resume))
        path = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"resume={cfg.resume}: no {path}; pass a run folder that holds "
                              "checkpoints/last.ckpt, a .ckpt file, or resume=true")
        why = _loads(path)
        if why:
            raise ConfigError(f"resume={cfg.resume}: {path} does not load ({why}); pass "
                              "another checkpoint or run folder")
        return path
    found = sorted(Path(cfg.runs_dir, cfg.experiment).glob("*/checkpoints/last.ckpt"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise ConfigError(f"resume=true but no run of {cfg.experiment!r} under {cfg.runs_dir}/"
                          f"{cfg.experiment}/ has checkpoints/last.ckpt; train without resume")
    for path in found:
        why = _loads(path)
        if why is None:
            return path
        print(f"resume: skipped {path}: it does not load ({why})", flush=True)
    raise ConfigError(f"resume=true but none of the {len(found)} last.ckpt files of "
                      f"{cfg.experiment!r} loads (listed above); train without resume")


def clear_partial_writes(run_dir: Path) -> None:
    for tmp in partial_writes(run_dir / "checkpoints"):
        print(f"resume: removed {tmp}, a checkpoint write that a killed process left "
              "unfinished", flush=True)
        tmp.unlink(missing_ok=True)  # under DDP every rank clears; one wins


def resumed_config(cfg: DictConfig, ckpt: Path) -> DictConfig:
    """The interrupted run's own config, with this command's trainer settings (so that a
    resumed run may change devices or max_epochs) and its run folder."""
    run_dir = ckpt.parent.parent
    saved = OmegaConf.load(run_dir / "config.yaml")
    with open_dict(saved):
        saved.trainer = cfg.trainer
        saved.run_dir = str(run_dir)
        saved.resume = str(ckpt)
    return saved


def test_last(trainer: L.Trainer, module: TBPSModule, dm) -> dict[str, float]:
    """The test metrics of the model as training left it (last.ckpt's weights), as
    ``test_last/*``: RDE reports "Best" (chosen on validation) and "Last" side by side, and
    on a small validation split the two can differ by more than methods do."""
    got = trainer.test(module, datamodule=dm, verbose=False)[0]
    return {"test_last" + k[len("test"):]: v for k, v in got.items() if k.startswith("test/")}


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains, tests the best checkpoint, writes the run folder; returns metrics.json's dict.
    With ``resume``, continues an interrupted run in its own folder from its last.ckpt
    (weights, optimizer, scheduler, epoch, queues, random states)."""
    resume = find_resume(cfg) if cfg.get("resume") else None
    if resume is not None:
        cfg = resumed_config(cfg, resume)
        print(f"resuming {resume}", flush=True)
        clear_partial_writes(resume.parent.parent)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_data(cfg)
    _ = dm.records  # read and check the annotations before a run folder exists
    if resume is None:
        tok, pretrained = build_tokenizer_and_weights(cfg, dm)  # and the CLIP weights
    else:  # everything learnt, CLIP weights included, comes from the checkpoint
        tok = CaptionTokenizer.from_json((resume.parent.parent / "tokenizer.json").read_text(),
                                         cfg.tokenizer.context_length)
        pretrained = None
    run_dir = make_run_dir(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))  # with the CLIP architecture
    tok.save(run_dir / "tokenizer.json")
    module = TBPSModule(OmegaConf.to_container(cfg, resolve=True), tok.to_json(), dm.num_train_ids,
                        dm.num_train_pairs)
    dm.set_tokenizer(tok, module.caption_annotations)
    if pretrained is not None:
        module.load_encoder_weights(pretrained.state_dict())
    elif resume is None and (cfg.encoder.get("swin_weights") or cfg.encoder.get("bert_weights")):
        from .model.swin_bert import load_swin_weights, load_bert_weights

        if cfg.encoder.get("swin_weights"):
            load_swin_weights(module.encoder.vision, cfg.encoder.swin_weights)
        if cfg.encoder.get("bert_weights"):
            load_bert_weights(module.encoder.text, cfg.encoder.bert_weights)
        module.load_encoder_weights(module.encoder.state_dict())  # and every copy of it
    cbs, ckpt, speed = callbacks(run_dir, dm.val_prefix,
                                 show_progress=cfg.trainer.get("enable_progress_bar", True))
    loggers = make_loggers(cfg, run_dir, resumed=resume is not None)
    if loggers:  # the learning rate of every parameter group, per step
        cbs.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(**cfg.trainer, default_root_dir=run_dir, callbacks=cbs, logger=loggers,
                        plugins=[AtomicCheckpointIO()])
    if trainer.is_global_zero:  # what this start trains on, beside the figures it makes
        record_start(run_dir, trainer.strategy.root_device.type,
                     trainer.num_devices * trainer.num_nodes)
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    # read before testing: trainer.test(ckpt_path=best) restores the callbacks' state as the
    # best checkpoint saved it, at a validation, which counts that epoch's samples but not
    # yet its seconds (samples/s came out inflated, 1e12 when epoch 1 was the best)
    fit_seconds = speed.fit_seconds  # this command's and every earlier start's
    samples_per_s = speed.samples_per_s
    # the last preparation pass's report (RDE: the division's quality), before testing loads
    # the best checkpoint, which holds its own epoch's
    prepared = {f"train/{k}": v for k, v in module.last_preparation.items()}
    last = test_last(trainer, module, dm) if cfg.eval.get("test_last") else {}
    test = trainer.test(module, datamodule=dm, ckpt_path=ckpt.best_model_path or None,
                        verbose=False)[0]
    metrics = {**module.best_val, **test, **last, "train/samples_per_s": samples_per_s,
               "train/seconds": fit_seconds,
               "train/nonfinite_skipped": float(module.nonfinite_skipped),
               **prepared}
    if trainer.is_global_zero:
        if cfg.trainer.get("fast_dev_run"):  # a smoke run: one batch, no checkpoint
            print("fast_dev_run: a smoke run of a batch or two; its metrics are not written "
                  "to metrics.json, so `tbps report` never averages them with real runs")
        else:
            write_metrics(run_dir / "metrics.json", metrics)
        print_table(metrics, f"{cfg.experiment}: {run_dir}")
        print(f"training {fit_seconds:.0f} s, {samples_per_s:.0f} samples/s; "
              f"{time.perf_counter() - STARTED:.0f} s since the command started; "
              f"run folder {run_dir}")
    return metrics


def find_checkpoint(cfg: DictConfig) -> Path:
    if cfg.eval.ckpt:
        path = Path(cfg.eval.ckpt)
        if not path.is_file():
            raise ConfigError(f"checkpoint {path} not found; pass CKPT=<path to a .ckpt file>")
        return path
    found = sorted(Path(cfg.runs_dir, cfg.experiment).glob("*/checkpoints/best.ckpt"))
    if not found:
        raise ConfigError(f"no checkpoint given and none under {cfg.runs_dir}/{cfg.experiment}/; "
                          f"train first (make train EXP={cfg.experiment}) or pass CKPT=<path>")
    return found[-1]


def evaluate(cfg: DictConfig, overrides: list[str]) -> dict[str, float]:
    """Tests a checkpoint with the data config it was trained with (``data.*`` overrides
    from the command line applied, e.g. a new ``data.root``)."""
    path = find_checkpoint(cfg)
    module = load_checkpoint(path)
    data_cfg = OmegaConf.merge(OmegaConf.create({"data": module.cfg["data"]}),
                               OmegaConf.from_dotlist([o for o in overrides if o.startswith("data.")]))
    dm = build_data(data_cfg)
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)  # a re-scoring head's too
    trainer_cfg = {**cfg.trainer, "logger": False, "enable_checkpointing": False}
    shown = [progress_display()] if trainer_cfg.get("enable_progress_bar", True) else []
    trainer = L.Trainer(**trainer_cfg, callbacks=shown)
    with torch.inference_mode():
        test = trainer.test(module, datamodule=dm, verbose=False)[0]
    out = path.parent.parent / "metrics_eval.json"
    if trainer.is_global_zero:
        write_metrics(out, test)
        print_table(test, f"eval {path}")
        print(f"written {out}")
    return test
