"""CRUE's IRE: intra-modality relation exploration (the "IRC" loss; Huang et al., TOMM 2025).

Follows the paper's figure (``docs/methods.md`` §2, IRE): a caption's prediction
over the image memory is trained towards hard identity labels mixed ("⊕") with the paired
image's own similarity to that memory, and an image's prediction over the text memory
towards identity labels mixed with the paired caption's similarity to the text memory. So
a caption may also match images that look like its image, and near-identical negatives are
not pushed away as hard.

Our choices where the paper is silent (all config keys): the mix is convex with weight
``alpha`` = 0.4 (RaSa), ramped in linearly over ``ramp_epochs`` = 1; the intra-modal
relations use the momentum features (stop-gradient); τ = 0.07 (RaSa); the loss is cross-
entropy against the soft targets (``loss: kl`` gives KL(p‖q), SDM's direction); the keys
are the current global batch's momentum features followed by the queue; ``prior: other``
swaps which modality supplies the relation (an ablation).

Momentum distillation (ALBEF, Li et al., NeurIPS 2021; ours, off by default): a share
``distill_alpha`` of the target is the momentum model's own cross-modal prediction, the
momentum caption over the image keys and the momentum image over the text keys, ramped in
over ``distill_ramp_epochs``. The intra-modal relation of the figure agrees with the label
even on a swapped pair (the paired image's neighbours are its own identity's); the cross-modal
one is the only part of the target that can disagree with a wrong label, which is why
ALBEF uses it on noisy web pairs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..components.momentum import MemoryView
from ..components.pair_weights import weighted_mean
from ..errors import ConfigError
from ..types import EncoderOutput
from ..settings_types import NonNegativeFloat, PositiveFloat, Rate
from .base import AlignmentHead, HeadContext


def identity_targets(pid: torch.Tensor, keys_pid: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, K]: 1/#positives where the key has the sample's person id, else 0."""
    match = ((pid[:, None] == keys_pid[None, :]) & valid[None, :]).float()
    return match / match.sum(1, keepdim=True).clamp(min=1)


def masked_log_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)


def soft_target_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                     kind: str = "ce", weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows (weighted by ``weights``) of CE(target, softmax(logits)) or
    KL(softmax(logits) ‖ target)."""
    log_p = masked_log_softmax(logits, valid)
    log_p = torch.where(valid, log_p, torch.zeros_like(log_p))  # no -inf * 0
    if kind == "ce":
        return weighted_mean(-(target * log_p).sum(1), weights)
    p = log_p.exp() * valid
    return weighted_mean((p * (log_p - torch.log(target + 1e-8))).sum(1), weights)


def ramped(value: float, ramp_epochs: float, progress: torch.Tensor | None) -> torch.Tensor:
    """``value`` scaled linearly from 0 over the first ``ramp_epochs`` epochs. ``progress``
    (fractional epoch) is a float64 tensor: a Python float would be a new constant, and a
    recompilation, at every step of a compiled training step."""
    if progress is None or not ramp_epochs:
        return torch.tensor(value, dtype=torch.float64)
    return value * torch.clamp(progress / ramp_epochs, max=1.0)


@torch.no_grad()
def key_softmax(queries: torch.Tensor, keys: torch.Tensor, keys_valid: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """[B, K]: softmax over the valid keys of momentum queries (a target, no gradient)."""
    logits = (queries @ keys.t() / temperature).masked_fill(~keys_valid[None, :], float("-inf"))
    return F.softmax(logits, dim=-1)


def distilled(target: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor,
              share: float | torch.Tensor | None) -> torch.Tensor:
    """ALBEF's momentum distillation: ``share`` of the label's part of ``target`` handed to
    the momentum model's cross-modal ``prediction``."""
    return target if share is None else target + share * (prediction - label)


def ire_loss(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor, mem: MemoryView,
             temperature: float, alpha: float, prior: str = "paired", kind: str = "ce",
             weights: torch.Tensor | None = None,
             distill_alpha: float | torch.Tensor | None = None) -> torch.Tensor:
    v, t = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    valid = mem.keys_valid[None, :]
    y = identity_targets(pid, mem.keys_pid, mem.keys_valid)
    rel_img = key_softmax(mem.image, mem.keys_image, mem.keys_valid, temperature)   # p^{i2i}
    rel_txt = key_softmax(mem.text, mem.keys_text, mem.keys_valid, temperature)     # p^{t2t}
    if prior == "other":
        rel_img, rel_txt = rel_txt, rel_img
    q_t2i = (1 - alpha) * y + alpha * rel_img
    q_i2t = (1 - alpha) * y + alpha * rel_txt
    if distill_alpha is not None:
        q_t2i = distilled(q_t2i, y, key_softmax(mem.text, mem.keys_image, mem.keys_valid,
                                                temperature), distill_alpha)
        q_i2t = distilled(q_i2t, y, key_softmax(mem.image, mem.keys_text, mem.keys_valid,
                                                temperature), distill_alpha)
    t2i = t @ mem.keys_image.t() / temperature
    i2t = v @ mem.keys_text.t() / temperature
    return 0.5 * (soft_target_loss(t2i, q_t2i, valid, kind, weights)
                  + soft_target_loss(i2t, q_i2t, valid, kind, weights))


class IREHead(AlignmentHead):
    needs_memory = True

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0,
                 temperature: PositiveFloat = 0.07, alpha: Rate = 0.4,
                 ramp_epochs: NonNegativeFloat = 1.0, prior: Literal["paired", "other"] = "paired",
                 loss: Literal["ce", "kl"] = "ce", distill_alpha: Rate = 0.0,
                 distill_ramp_epochs: NonNegativeFloat = 2.0) -> None:
        super().__init__(ctx, weight)
        if prior not in ("paired", "other") or loss not in ("ce", "kl"):
            raise ValueError("heads.ire: prior must be 'paired' or 'other', loss 'ce' or 'kl'")
        if alpha + distill_alpha > 1:
            raise ConfigError(f"heads.ire: alpha ({alpha}) + distill_alpha ({distill_alpha}) "
                              "is the share of the target that is not the label: at most 1")
        self.temperature, self.alpha, self.ramp_epochs = temperature, alpha, ramp_epochs
        self.prior, self.kind = prior, loss
        self.distill_alpha, self.distill_ramp_epochs = distill_alpha, distill_ramp_epochs

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        progress = batch.get("progress")
        alpha = ramped(self.alpha, self.ramp_epochs, progress)
        out, distill = {}, None
        if self.distill_alpha:
            distill = ramped(self.distill_alpha, self.distill_ramp_epochs, progress)
            out["ire_distill_alpha"] = distill.float()
        loss = ire_loss(encoded.image_global, encoded.text_global, batch["pid"], batch["memory"],
                        self.temperature, alpha, self.prior, self.kind, batch.get("pair_weight"),
                        distill)
        return {"loss_ire": self.weight * loss, "ire_alpha": alpha.float(), **out}
