"""CMPC, cross-modal projection classification (Zhang & Lu, ECCV 2018), as ACSA's code uses
it (``docs/methods.md`` §3): a classifier W [D, identities] (Xavier-uniform), its columns
l2-normalised; each modality's feature is projected onto the other's direction,
ṽ = (v·t̂) t̂ and t̃ = (t·v̂) v̂, and classified: CE(ṽᵀW̃, pid) + CE(t̃ᵀW̃, pid). Nothing here is
our own choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..settings_types import PositiveFloat
from ..types import EncoderOutput
from .base import AlignmentHead, HeadContext


def cmpc_loss(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor,
              weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss, accuracy) for features [B, D] and a classifier ``weight`` [D, C]."""
    image, text = image.float(), text.float()
    v_hat, t_hat = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    v_proj = (image * t_hat).sum(-1, keepdim=True) * t_hat
    t_proj = (text * v_hat).sum(-1, keepdim=True) * v_hat
    w = F.normalize(weight.float(), dim=0)
    li, lt = v_proj @ w, t_proj @ w
    loss = F.cross_entropy(li, pid) + F.cross_entropy(lt, pid)
    acc = ((li.argmax(1) == pid).float().mean() + (lt.argmax(1) == pid).float().mean()) / 2
    return loss, acc.detach()


class CMPCHead(AlignmentHead):
    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0) -> None:
        super().__init__(ctx, weight)
        self.classifier = nn.Parameter(torch.empty(ctx.embed_dim, ctx.num_classes))
        nn.init.xavier_uniform_(self.classifier)

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        loss, acc = cmpc_loss(encoded.image_global, encoded.text_global, batch["pid"],
                              self.classifier)
        return {"loss_cmpc": self.weight * loss, "cmpc_accuracy": acc}
