"""CMPM, cross-modal projection matching (Zhang & Lu, ECCV 2018; IRRA's `cmpm`).

Follows IRRA's code: logits are projections of the raw feature of one modality onto the
normalised feature of the other (no temperature), and the target distribution is the
identity-match row divided by its L2 norm; KL(p ‖ q) in both directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad
from ..types import EncoderOutput
from .base import AlignmentHead


def cmpm_loss(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor,
              eps: float = 1e-8) -> torch.Tensor:
    image, text = image.float(), text.float()
    match = (pid[:, None] == pid[None, :]).float()
    log_q = torch.log(match / match.norm(dim=1, keepdim=True) + eps)
    i2t = image @ F.normalize(text, dim=-1).t()
    t2i = text @ F.normalize(image, dim=-1).t()
    loss = 0.0
    for s in (i2t, t2i):
        log_p = F.log_softmax(s, dim=1)
        loss = loss + (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return loss


class CMPMHead(AlignmentHead):
    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        img, txt = gather_with_grad(encoded.image_global), gather_with_grad(encoded.text_global)
        return {"loss_cmpm": self.weight * cmpm_loss(img, txt, gather_with_grad(batch["pid"]))}
