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
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..components.momentum import MemoryView
from ..components.pair_weights import weighted_mean
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


def ire_loss(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor, mem: MemoryView,
             temperature: float, alpha: float, prior: str = "paired", kind: str = "ce",
             weights: torch.Tensor | None = None) -> torch.Tensor:
    v, t = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    valid = mem.keys_valid[None, :]
    y = identity_targets(pid, mem.keys_pid, mem.keys_valid)
    with torch.no_grad():
        rel_img = F.softmax((mem.image @ mem.keys_image.t() / temperature)
                            .masked_fill(~valid, float("-inf")), dim=-1)   # p^{i2i}
        rel_txt = F.softmax((mem.text @ mem.keys_text.t() / temperature)
                            .masked_fill(~valid, float("-inf")), dim=-1)   # p^{t2t}
    if prior == "other":
        rel_img, rel_txt = rel_txt, rel_img
    q_t2i = (1 - alpha) * y + alpha * rel_img
    q_i2t = (1 - alpha) * y + alpha * rel_txt
    t2i = t @ mem.keys_image.t() / temperature
    i2t = v @ mem.keys_text.t() / temperature
    return 0.5 * (soft_target_loss(t2i, q_t2i, valid, kind, weights)
                  + soft_target_loss(i2t, q_i2t, valid, kind, weights))


class IREHead(AlignmentHead):
    needs_memory = True

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0,
                 temperature: PositiveFloat = 0.07, alpha: Rate = 0.4,
                 ramp_epochs: NonNegativeFloat = 1.0, prior: Literal["paired", "other"] = "paired",
                 loss: Literal["ce", "kl"] = "ce") -> None:
        super().__init__(ctx, weight)
        if prior not in ("paired", "other") or loss not in ("ce", "kl"):
            raise ValueError("heads.ire: prior must be 'paired' or 'other', loss 'ce' or 'kl'")
        self.temperature, self.alpha, self.ramp_epochs = temperature, alpha, ramp_epochs
        self.prior, self.kind = prior, loss

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        # ``progress`` (fractional epoch) is a float64 tensor: a Python float would be a new
        # constant, and a recompilation, at every step of a compiled training step.
        progress = batch.get("progress")
        if progress is None or not self.ramp_epochs:
            alpha = torch.tensor(self.alpha, dtype=torch.float64)
        else:
            alpha = self.alpha * torch.clamp(progress / self.ramp_epochs, max=1.0)
        loss = ire_loss(encoded.image_global, encoded.text_global, batch["pid"], batch["memory"],
                        self.temperature, alpha, self.prior, self.kind, batch.get("pair_weight"))
        return {"loss_ire": self.weight * loss, "ire_alpha": alpha.float()}
