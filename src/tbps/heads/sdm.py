"""SDM, similarity distribution matching (IRRA, CVPR 2023; docs/methods.md §1).

Follows the paper and its code: KL(p ‖ q) between the softmax of cosine similarities over
a fixed temperature and the normalised identity-match distribution, in both directions,
over the batch gathered from all processes. Nothing here is our own choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..components.pair_weights import weighted_mean
from ..distributed import gather_with_grad
from ..types import EncoderOutput
from ..settings_types import PositiveFloat
from .base import AlignmentHead, HeadContext


def sdm_loss(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor,
             temperature: float = 0.02, eps: float = 1e-8,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """image, text: [B, D] features (any norm); pid: [B]. Returns L_i2t + L_t2i."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    return sdm_from_logits(image @ text.t() / temperature, pid, eps, weights)


def sdm_from_logits(logits: torch.Tensor, pid: torch.Tensor, eps: float = 1e-8,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """SDM on any image×text score matrix [..., B, B] (row i: image i against every caption):
    KL(softmax(row) ‖ identity-match distribution), summed over both directions, averaged
    over rows and any leading dimensions (rows of pair k weighted by ``weights[k]``)."""
    match = (pid[:, None] == pid[None, :]).float()
    log_q = torch.log(match / match.sum(dim=1, keepdim=True) + eps)
    loss = 0.0
    for s in (logits, logits.transpose(-1, -2)):
        log_p = F.log_softmax(s, dim=-1)
        loss = loss + weighted_mean((log_p.exp() * (log_p - log_q)).sum(dim=-1), weights)
    return loss


class SDMHead(AlignmentHead):
    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0, temperature: PositiveFloat = 0.02) -> None:
        super().__init__(ctx, weight)
        self.temperature = temperature

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        img, txt = gather_with_grad(encoded.image_global), gather_with_grad(encoded.text_global)
        pid = gather_with_grad(batch["pid"])
        w = batch.get("pair_weight")
        w = None if w is None else gather_with_grad(w)
        return {"loss_sdm": self.weight * sdm_loss(img, txt, pid, self.temperature, weights=w)}
