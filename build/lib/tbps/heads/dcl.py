"""UCFA's distribution contrast learning, DCL (Deng et al., Visual Intelligence 2025).

What follows the abstract: "distributions with the same identity are as similar as possible
across modalities through distribution-based contrastive learning". Everything else is our
reconstruction (``docs/methods.md`` §4, each a config key): the distance between an image's
and a caption's Gaussian is the squared 2-Wasserstein distance (``distance: w2``) or PCME++'s
closed-form sampled distance (``csd``); the means are l2-normalised first, so the distance
has the scale of cosine similarity (‖μ_i − μ_j‖² = 2 − 2 cos) whatever the feature norm;
the logits are −a·d + b with learnable a, b (PCME++'s initial 5 and 5); the targets are the
identity labels and the loss is SDM's KL in both directions, over the batch gathered from
all processes. Under a softmax over one row, b cancels: it only sets the sigmoid match
probability σ(−a·d + b) that we log (``dcl_match_prob``), as in PCME++.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..components.gaussian import csd_distance, w2_distance
from ..distributed import gather_with_grad
from ..settings_types import PositiveFloat
from ..types import EncoderOutput
from .base import AlignmentHead, HeadContext
from .sdm import sdm_from_logits

DISTANCES = {"w2": w2_distance, "csd": csd_distance}


def distribution_distance(mean_v: torch.Tensor, logvar_v: torch.Tensor, mean_t: torch.Tensor,
                          logvar_t: torch.Tensor, distance: str = "w2") -> torch.Tensor:
    """[B_v, B_t] distances between image and caption Gaussians, means l2-normalised."""
    return DISTANCES[distance](F.normalize(mean_v, dim=-1), logvar_v,
                               F.normalize(mean_t, dim=-1), logvar_t)


class DCLHead(AlignmentHead):
    needs_distributions = True

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0,
                 distance: Literal["w2", "csd"] = "w2", init_scale: PositiveFloat = 5.0,
                 init_shift: float = 5.0) -> None:
        super().__init__(ctx, weight)
        self.distance = distance
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))   # a
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))   # b

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        d = batch["distributions"]
        mu_v, lv_v = gather_with_grad(d.image_mean), gather_with_grad(d.image_logvar)
        mu_t, lv_t = gather_with_grad(d.text_mean), gather_with_grad(d.text_logvar)
        pid = gather_with_grad(batch["pid"])
        logits = -self.scale * distribution_distance(mu_v, lv_v, mu_t, lv_t, self.distance) \
            + self.shift
        loss = sdm_from_logits(logits, pid)
        positive = (pid[:, None] == pid[None, :])
        match_prob = torch.sigmoid(logits.detach())[positive].mean()
        return {"loss_dcl": self.weight * loss, "dcl_scale": self.scale.detach(),
                "dcl_match_prob": match_prob}
