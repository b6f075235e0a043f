"""CMPM, cross-modal projection matching (Zhang & Lu, ECCV 2018; IRRA's `cmpm`).

Follows IRRA's code: logits are projections of the raw feature of one modality onto the
normalised feature of the other (no temperature), and the target distribution is the
identity-match row divided by its L2 norm; KL(p ‖ q) in both directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..components.pair_weights import weighted_mean
from ..distributed import gather_with_grad
from ..types import EncoderOutput
from ..settings_types import PositiveFloat
from .base import AlignmentHead, HeadContext


def cmpm_loss(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor,
              eps: float = 1e-8, weights: torch.Tensor | None = None) -> torch.Tensor:
    image, text = image.float(), text.float()
    i2t = image @ F.normalize(text, dim=-1).t()
    t2i = text @ F.normalize(image, dim=-1).t()
    return cmpm_from_logits(i2t, t2i, pid, eps, weights)


def cmpm_from_logits(i2t: torch.Tensor, t2i: torch.Tensor, pid: torch.Tensor,
                     eps: float = 1e-8, weights: torch.Tensor | None = None) -> torch.Tensor:
    """CMPM's KL on any score matrices (rows: image i over captions; caption j over
    images), towards the L2-normalised identity-match row, summed over both."""
    match = (pid[:, None] == pid[None, :]).float()
    log_q = torch.log(match / match.norm(dim=1, keepdim=True) + eps)
    loss = 0.0
    for s in (i2t, t2i):
        log_p = F.log_softmax(s, dim=1)
        loss = loss + weighted_mean((log_p.exp() * (log_p - log_q)).sum(dim=1), weights)
    return loss


class CMPMHead(AlignmentHead):
    """``off_below``: ACSA's code drops CMPM from the loss whenever its value is below this
    (0.5 there); None (the default) always keeps it."""

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0,
                 off_below: PositiveFloat | None = None) -> None:
        super().__init__(ctx, weight)
        self.off_below = off_below

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        img, txt = gather_with_grad(encoded.image_global), gather_with_grad(encoded.text_global)
        w = batch.get("pair_weight")
        loss = cmpm_loss(img, txt, gather_with_grad(batch["pid"]),
                         weights=None if w is None else gather_with_grad(w))
        if self.off_below is not None:  # no data-dependent branch: the step still compiles
            loss = torch.where(loss.detach() < self.off_below, loss * 0.0, loss)
        return {"loss_cmpm": self.weight * loss}
