"""ID loss: identity classification of both modalities with one shared classifier (IRRA).

Follows IRRA: a linear layer (init N(0, 0.001²), bias 0) over the un-normalised global
features, cross-entropy averaged over image and text. ``accuracy`` is logged as a diagnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..types import EncoderOutput
from ..settings_types import PositiveFloat
from ..components.pair_weights import weighted_mean
from .base import AlignmentHead, HeadContext


class IDHead(AlignmentHead):
    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0) -> None:
        super().__init__(ctx, weight)
        self.classifier = nn.Linear(ctx.embed_dim, ctx.num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def irra_role(self, name: str) -> str:
        return "classifier"  # IRRA's ``classifier``: lr_factor x lr, bias or not

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        img_logits = self.classifier(encoded.image_global).float()
        txt_logits = self.classifier(encoded.text_global).float()
        pid, w = batch["pid"], batch.get("pair_weight")
        loss = (weighted_mean(F.cross_entropy(img_logits, pid, reduction="none"), w)
                + weighted_mean(F.cross_entropy(txt_logits, pid, reduction="none"), w)) / 2
        acc = ((img_logits.argmax(1) == pid).float().mean() + (txt_logits.argmax(1) == pid).float().mean()) / 2
        return {"loss_id": self.weight * loss, "id_accuracy": acc.detach()}
