"""ITC, the symmetric InfoNCE of CLIP (IRRA's `itc` alternative; docs/methods.md §1).

Follows CLIP: cross-entropy over cosine similarities scaled by 1/τ with the diagonal as
targets, averaged over both directions, on the batch gathered from all processes. The
fixed temperature (IRRA's τ = 0.02 unless configured) is IRRA's choice, not CLIP's learned one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad
from ..types import EncoderOutput
from ..settings_types import PositiveFloat
from .base import AlignmentHead, HeadContext


def itc_loss(image: torch.Tensor, text: torch.Tensor, temperature: float = 0.02) -> torch.Tensor:
    """image, text: [B, D], row i of each is a matching pair."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = image @ text.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class ITCHead(AlignmentHead):
    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0, temperature: PositiveFloat = 0.02) -> None:
        super().__init__(ctx, weight)
        self.temperature = temperature

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        img, txt = gather_with_grad(encoded.image_global), gather_with_grad(encoded.text_global)
        return {"loss_itc": self.weight * itc_loss(img, txt, self.temperature)}
