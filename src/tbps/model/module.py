"""TBPSModule: the LightningModule that wires encoder, heads, optimiser and the metric.

It holds no loss math and knows no head by name: it asks each head for extra inputs,
encodes, sums the ``loss_*`` terms the heads return and logs everything else. It is built
from the resolved config plus the tokenizer, both kept in the checkpoint, so
``TBPSModule.load_from_checkpoint(path)`` rebuilds the whole model with no other file.
The path from inputs to rankings (embeddings, re-scoring, uncertainty, explanations) is
``tbps.model.inference.InferencePath``, mixed in here.
"""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from ..data.datamodule import val_metric_prefix
from ..components.distributions import ModalityDistributions
from ..components.pair_division import PairDivision
from ..components.pair_weights import confidence_weights
from ..settings import PairWeights
from ..components.momentum import EncoderCopy, FeatureMemory, MomentumEncoder
from ..components.text_augment import CaptionAugment
from ..data.tokenizer import CaptionTokenizer
from ..distributed import world_size
from ..errors import ConfigError, DivergedError
from ..heads.base import HeadContext
from ..heads.mlm import replacement_ids
from ..metrics import TextToImageRetrieval
from .compile import compile_step, mark_token_dim_dynamic
from .encoder import build_dual_encoder
from .inference import InferencePath
from .loop_state import finish_saved_epoch
from .optim import irra_param_groups, param_groups, uniform_param_groups, warmup_cosine


# Parameters that start from scratch even over CLIP weights: optim.new_module_lr_factor
NEW_MODULES = ("heads.", "distributions.")


class TBPSModule(InferencePath, L.LightningModule):
    def __init__(self, cfg: dict, tokenizer_json: str, num_classes: int,
                 num_train_pairs: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg
        self.tokenizer = CaptionTokenizer.from_json(tokenizer_json, cfg["tokenizer"]["context_length"])
        tok = self.tokenizer
        enc = cfg["encoder"]
        self.encoder = build_dual_encoder(enc["vision"], enc["text"], enc["embed_dim"],
                                          tok.vocab_size, tok.context_length, tok.eos_id,
                                          tok.pad_id, tok.sos_id, enc.get("text_pool", "eos"),
                                          enc.get("global_bottleneck", False),
                                          enc.get("grad_checkpointing", False))
        self.encoder.tokenizer = tok  # encode_text(list of str) works on a loaded checkpoint
        ctx = HeadContext(embed_dim=enc["embed_dim"], num_classes=num_classes,
                          vocab_size=tok.vocab_size, mask_id=tok.mask_id, pad_id=tok.pad_id,
                          special_ids=tuple(tok.special_ids), sos_id=tok.sos_id,
                          eos_id=tok.eos_id, text_pool=self.encoder.text_pool,
                          image_grid=self.encoder.grid_size,
                          context_length=tok.context_length, num_train_pairs=num_train_pairs)
        # "object": heads get the HeadContext itself, not an OmegaConf copy of it (which
        # torch.compile cannot trace through)
        self.heads = nn.ModuleDict({name: instantiate(h, ctx=ctx, _convert_="object")
                                    for name, h in cfg["heads"].items()})
        # Optional shared parts, built when the config asks for them (CRUE does):
        # a momentum encoder with feature queues, and augmentation of the online caption.
        self.momentum, self.memory, self.text_augment = None, None, None
        mem = cfg.get("memory")
        if mem:
            self.momentum = MomentumEncoder(self.encoder, mem["momentum"])
            self.memory = FeatureMemory(mem["size"], enc["embed_dim"])
        needing = [n for n, h in self.heads.items() if h.needs_memory]
        if needing and self.memory is None:
            raise ConfigError(f"heads {needing} need a momentum encoder and feature memory: "
                              "set memory.size and memory.momentum (see experiments/crue_*.yaml)")
        # pair weights from P(match): relative to the batch, or a division before each epoch
        # (the settings' defaults fill the keys a config leaves out)
        self.pair_weights, self.pair_division = None, None
        weights = PairWeights(**cfg["pair_weights"]) if cfg.get("pair_weights") else None
        if weights is not None and weights.by == "division":
            self.pair_division = PairDivision(ctx.num_train_pairs, weights.from_epoch,
                                              weights.min_separation, weights.min_clean_share)
        elif weights is not None:
            self.pair_weights = weights.model_dump(include={"from_epoch", "ratio", "ramp_epochs"})
        self.weigh_losses = weights is None or weights.apply_to in ("losses", "both")
        self.gate_memory = weights is not None and weights.apply_to in ("memory", "both")
        if self.gate_memory and (weights.by != "batch" or not mem):
            raise ConfigError("pair_weights.apply_to=memory needs by: batch and a feature memory "
                              "(memory.size, memory.momentum; see experiments/crue_*.yaml)")
        # UCFA's shared part: a Gaussian per modality that several heads read
        dist = cfg.get("distributions")
        self.distributions = ModalityDistributions(enc["embed_dim"], **dist) if dist else None
        needing = [n for n, h in self.heads.items() if h.needs_distributions]
        if needing and self.distributions is None:
            raise ConfigError(f"heads {needing} read each modality's Gaussian: set "
                              "distributions (variance_from, init_logvar, kl_weight; see "
                              "experiments/ucfa_*.yaml)")
        aug = cfg.get("text_augment")
        if aug:
            self.text_augment = CaptionAugment(ctx.special_ids, tok.mask_id, tok.pad_id,
                                               replacement_ids(tok.vocab_size, ctx.special_ids),
                                               **aug)
        self._retrieval = {m: self._claimed_retrieval(m) for m in ("image", "text")}
        # the encoder computes the global tokens' attention rows only when a head reads them
        self._attention = any(h.needs_attention for h in self.heads.values())
        # and the captions' input word embeddings only when the distributions read σ from them
        self._words = self.distributions is not None and self.distributions.reads_words
        self._checked_losses = False
        # compile: true -> the training step (encoder, heads, shared parts) through
        # torch.compile, after a first eager step (tbps.model.compile)
        self._compiled = compile_step(self._losses) if cfg.get("compile") else None
        self.nonfinite_skipped = 0
        # a head that re-scores the global ranking's best candidates at inference (ACSA)
        rescorers = [n for n, h in self.heads.items() if h.rescores]
        if len(rescorers) > 1:
            raise ConfigError(f"heads {rescorers} each re-score the ranking at inference; at "
                              "most one may")
        self._rescorer_name = rescorers[0] if rescorers else None
        extra = self._rescorer.rescoring_keys if self._rescorer is not None else None
        self.val_metric = TextToImageRetrieval(extra_keys=extra)
        self.test_metric = TextToImageRetrieval(extra_keys=extra)
        # the fusion weight chosen on the validation split; saved with every checkpoint
        self.fusion_weight: float | None = None
        self.best_val: dict[str, float] = {}
        # 'val', or 'val_on_test' / 'val_holdout' when validation is not the official split
        self.val_prefix = val_metric_prefix(cfg["data"].get("val_split", "val"))
        self.count_skipped = bool(cfg["data"].get("skip_bad_images", False))
        # the epoch whose preparation pass was last checked, and what the heads reported
        self._checked_preparation = -1
        self.last_preparation: dict[str, float] = {}

    def load_encoder_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Loads pretrained weights into the encoder and restarts every copy of it (the
        momentum encoder) from them, so no copy keeps the random initialisation it was
        built from. A resumed run does not come here: its copies come from the checkpoint."""
        self.encoder.load_state_dict(state)
        for part in self.modules():
            if isinstance(part, EncoderCopy):
                part.copy_from(self.encoder)

    # --- training ------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Once an epoch, before its first step: the heads that prepare from a pass over the
        training pairs do so (``tbps.model.preparation``). Here rather than in
        ``on_train_epoch_start``, which Lightning skips for an epoch resumed from a
        checkpoint; a head that already prepared for the epoch (restored mid-epoch) says so."""
        if self._checked_preparation == self.current_epoch:
            return
        from .preparation import prepare_heads

        self._checked_preparation = self.current_epoch
        report = prepare_heads(self, self.current_epoch)
        if not report:
            return
        self.last_preparation = report
        self.log_dict({f"train/{k}": float(v) for k, v in report.items()},
                      on_step=False, on_epoch=True, batch_size=1)
        if self.trainer.is_global_zero:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in report.items())
            print(f"epoch {self.current_epoch} preparation: {shown}", flush=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        skipped = batch.pop("skipped_images", 0)
        if self.count_skipped:
            self.log("train/skipped_images", float(skipped), reduce_fx="sum", on_step=False,
                     on_epoch=True, batch_size=1)
        progress = self.current_epoch + batch_idx / max(1, self.trainer.num_training_batches)
        loss, terms = self.compute_losses(batch, progress)
        if not self._all_finite(loss):
            return self._on_nonfinite(terms)
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs)
        return loss

    @staticmethod
    def _all_finite(loss: torch.Tensor) -> bool:
        """Whether every process's loss is finite (one host sync per step; every rank then
        takes the same branch, so a skip or a stop never leaves a rank waiting)."""
        finite = torch.isfinite(loss.detach()).float()
        if world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def _on_nonfinite(self, terms: dict[str, torch.Tensor]) -> None:
        """``nonfinite_loss: stop`` (default) ends the run before this step's update, so the
        last checkpoint is from before the divergence; ``skip`` drops the step and counts it."""
        bad = [k for k, v in terms.items() if k.startswith("loss_") and not torch.isfinite(v).all()]
        where = f"step {self.global_step} (epoch {self.current_epoch})"
        if self.cfg.get("nonfinite_loss", "stop") == "skip":
            self.nonfinite_skipped += 1
            print(f"warning: non-finite loss at {where} in {', '.join(bad) or 'the sum'}: step "
                  f"skipped ({self.nonfinite_skipped} so far)", flush=True)
            return None
        raise DivergedError(
            f"training diverged at {where}: non-finite {', '.join(bad) or 'loss sum'}. Nothing "
            "of this step was applied; the run's checkpoints/last.ckpt is from before it. Lower "
            "optim.lr, raise the head's temperature, or set nonfinite_loss=skip to drop such "
            "steps and count them")

    def compute_losses(self, batch: dict, progress: float = 0.0
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step's loss and its terms, without logging (the benchmark times
        exactly this). ``progress`` is the fractional epoch, for heads that ramp. The first
        step runs eagerly and checks that every head returns a loss; later steps run the
        compiled step when ``compile: true``."""
        batch["progress"] = torch.tensor(progress, dtype=torch.float64,
                                         device=batch["image"].device)
        if not self._checked_losses:
            self._checked_losses = True
            return self._losses(batch, check=True)
        if self._compiled is not None:
            mark_token_dim_dynamic(batch)
            return self._compiled(batch)
        return self._losses(batch)

    def _losses(self, batch: dict, check: bool = False
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.memory is not None:
            view = self._momentum_view(batch)
        if self.text_augment is not None:  # the momentum encoder above saw the clean caption
            batch["caption_ids"] = self.text_augment(batch["caption_ids"])
        for head in self.heads.values():
            batch.update(head.extra_inputs(batch))
        extra = {k: v for k, v in batch.items() if k.endswith("_ids") and k != "caption_ids"}
        encoded = self.encode(batch["image"], batch["caption_ids"], extra)
        terms: dict[str, torch.Tensor] = {}
        if self.distributions is not None:
            batch["distributions"] = self.distributions(encoded)
            terms.update(self.distributions.regularisers(batch["distributions"]))
        admitted = None
        if self.pair_weights is not None:
            weights = confidence_weights(self.pair_confidence(encoded, batch),
                                         batch.get("progress"), **self.pair_weights)
            if self.weigh_losses:
                batch["pair_weight"] = weights
            if self.gate_memory:   # a pair the weights doubt at all stays out of the memory
                admitted = weights >= 1.0
                terms["memory_admitted"] = admitted.float().mean()
        elif self.pair_division is not None:
            if check:  # fail at the first step, not at the first division's pass
                self.pair_confidence(encoded, batch)
            batch["pair_weight"] = self.pair_division.weights(batch["index"])
        if "pair_weight" in batch:
            terms["pair_weight_mean"] = batch["pair_weight"].mean()
        for name, head in self.heads.items():
            out = head(encoded, batch)
            if check and not any(k.startswith("loss_") for k in out):
                raise ConfigError(f"head {name!r} ({type(head).__name__}) returned no 'loss_*' "
                                  "term, so it would train nothing: return its loss under a key "
                                  "that starts with 'loss_', or remove it from heads=[...]")
            terms.update(out)
        if self.memory is not None:
            self.memory.enqueue(view, admitted)
        loss = sum(v for k, v in terms.items() if k.startswith("loss_"))
        return loss, terms

    def pair_confidence(self, encoded, batch: dict) -> torch.Tensor:
        """Each local training pair's P(match) [B], the first head's that has one (the pair
        weights and the division read it: ``components.pair_weights``, ``pair_division``)."""
        for head in self.heads.values():
            confidence = head.pair_confidence(encoded, batch)
            if confidence is not None:
                return confidence
        raise ConfigError("pair_weights is set, but no head of this experiment has a "
                          "probabilistic match to weigh pairs by (heads.dcl or heads.ugm with "
                          "match_weight > 0 do): remove pair_weights")

    @torch.no_grad()
    def _momentum_view(self, batch: dict):
        """EMA step (after the last optimizer step), momentum features of the batch, and the
        keys heads score against; ``batch['memory']`` carries them to the heads."""
        self.momentum.update(self.encoder)
        m = self.momentum.encoder
        image = m.encode_image(batch["image"])
        text = m.encode_text(batch["caption_ids"])
        view = self.memory.view(image, text, batch["pid"])
        batch["memory"] = view
        return view

    # --- evaluation: dataloader 0 = gallery images, 1 = query captions -------------------
    def _eval_step(self, metric: TextToImageRetrieval, batch: dict, dataloader_idx: int) -> None:
        if dataloader_idx == 0:
            feature, kept = self.gallery_entries(batch["image"])
        else:
            feature, kept = self.query_entries(batch)
        metric.update(feature, batch["pid"], is_query=dataloader_idx == 1, extra=kept)

    def _fused(self, metric: TextToImageRetrieval, weights: list[float]
               ) -> tuple[dict[str, float], dict[float, dict[str, float]]]:
        return metric.compute_fused(self._rescorer.rescore, weights, self._rescorer.top_k)

    def _eval_results(self, metric: TextToImageRetrieval, prefix: str, choose: bool
                      ) -> dict[str, float]:
        """The metrics under ``prefix`` (and each retrieval part's under ``prefix/<part>/``).
        With a re-scoring head: the fused ranking's under
        the usual keys, the global ranking's under ``prefix/global/``, and the fusion weight
        (``choose``: the best of the head's grid by R@1 here, on validation; otherwise the
        weight chosen there)."""
        parts = {f"{prefix}/{name}/{k}": v
                 for name, values in metric.compute_parts(self.retrieval_parts).items()
                 for k, v in values.items()}
        if self._rescorer is None:
            return {**{f"{prefix}/{k}": v for k, v in metric.compute().items()}, **parts}
        grid = list(self._rescorer.fusion_grid)
        if choose:
            plain, fused = self._fused(metric, grid)
            w = max(grid, key=lambda g: (fused[g]["R1"], -grid.index(g)))  # first of a tie
            self.fusion_weight = w
        else:
            w = self.inference_fusion_weight
            plain, fused = self._fused(metric, [w])
        out = {f"{prefix}/{k}": v for k, v in fused[w].items()}
        out.update({f"{prefix}/global/{k}": v for k, v in plain.items()})
        out[f"{prefix}/fusion_weight"] = w
        return {**out, **parts}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(self.val_metric, batch, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(self.test_metric, batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        p = self.val_prefix
        values = self._eval_results(self.val_metric, p, choose=True)
        self.val_metric.reset()
        if self.trainer.sanity_checking:
            return
        self.log(f"{p}/R1", values.pop(f"{p}/R1"), prog_bar=True)
        self.log_dict(values)
        values[f"{p}/R1"] = self.trainer.callback_metrics[f"{p}/R1"].item()
        if values[f"{p}/R1"] > self.best_val.get(f"{p}/R1", -1.0):
            self.best_val = dict(values, **{f"{p}/epoch": float(self.current_epoch)})

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._eval_results(self.test_metric, "test", choose=False))
        self.test_metric.reset()

    # --- checkpoints: the best validation result travels with them (for resumed runs) ---
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tbps_best_val"] = dict(self.best_val)
        checkpoint["tbps_nonfinite_skipped"] = self.nonfinite_skipped
        checkpoint["tbps_fusion_weight"] = self.fusion_weight
        checkpoint["tbps_last_preparation"] = dict(self.last_preparation)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        finish_saved_epoch(checkpoint)  # before Lightning restores its loops from it
        self.best_val = dict(checkpoint.get("tbps_best_val", {}))
        self.nonfinite_skipped = int(checkpoint.get("tbps_nonfinite_skipped", 0))
        self.fusion_weight = checkpoint.get("tbps_fusion_weight")
        self.last_preparation = dict(checkpoint.get("tbps_last_preparation", {}))

    # --- optimisation --------------------------------------------------------------------
    def irra_role(self, name: str) -> str:
        """Which of IRRA's optimiser name tests the parameter ``name`` answers to: a head's
        parameter as the head says (``AlignmentHead.irra_role``), another new module's
        (the shared Gaussians) "cross", the encoder's "plain"."""
        if name.startswith("heads."):
            head, rest = name[len("heads."):].split(".", 1)
            return self.heads[head].irra_role(rest)
        return "cross" if name.startswith(NEW_MODULES) else "plain"

    def own_lr(self, name: str) -> float | None:
        """A parameter's own learning rate, as its head says (``AlignmentHead.own_lr``)."""
        if not name.startswith("heads."):
            return None
        head, rest = name[len("heads."):].split(".", 1)
        return self.heads[head].own_lr(rest)

    def configure_optimizers(self):
        o = self.cfg["optim"]
        rule = o.get("param_rule", "by_module")
        if rule == "irra":
            groups = irra_param_groups(self, o["lr"], o["weight_decay"],
                                       o["new_module_lr_factor"], o["bias_lr_factor"],
                                       self.irra_role, self.own_lr)
        elif rule == "uniform":
            groups = uniform_param_groups(self, o["lr"], o["weight_decay"], self.own_lr)
        else:
            groups = param_groups(self, o["lr"], o["weight_decay"], NEW_MODULES,
                                  o["new_module_lr_factor"], o["bias_lr_factor"], self.own_lr)
        optimizer = instantiate(o["optimizer"], groups)
        interval = o.get("interval", "step")
        if interval == "epoch":  # IRRA steps its scheduler once per epoch
            total, per_epoch = self.trainer.max_epochs, 1
        else:
            total = self.trainer.estimated_stepping_batches
            per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        schedule = warmup_cosine(total, int(o["warmup_epochs"] * per_epoch), o["warmup_factor"],
                                 o["min_lr_factor"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
