"""The ID loss on samples of each modality's Gaussian, the likelihood averaged over them
(Kendall & Gal, NeurIPS 2017, "learned loss attenuation"; ours for UCFA, docs/methods.md §4).

IRRA's ID loss (``heads/id_loss.py``: one shared classifier over both modalities' global
features, the same initialisation and optimiser role) with each feature replaced by J =
``num_samples`` draws z = μ + σε of its Gaussian (the shared ``distributions``; μ is the
feature itself) and the loss −log mean_s softmax(W z_s)_y: the probability averaged over the
samples, not the loss. Why: σ then measures what the identity posterior cannot settle. For a
caption the classifier already places (softmax sharp on its person) every sample that strays
costs, so σ is pushed down; for one that several people fit (the posterior spread over them)
the averaged probability is flat in σ to second order, so σ is not pushed at all; for one the
classifier gets wrong, the samples that land nearer its person raise the average, so σ grows.
Averaging the loss instead (UGM's way) punishes σ most where the posterior is spread, the
opposite. At inference nothing changes: ranking reads the means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..components.gaussian import sample
from ..components.pair_weights import weighted_mean
from ..settings_types import PositiveFloat, PositiveInt
from ..types import EncoderOutput
from .base import HeadContext
from .id_loss import IDHead


def sampled_identity_nll(classifier: torch.nn.Module, mean: torch.Tensor, logvar: torch.Tensor,
                         pid: torch.Tensor, num_samples: int) -> torch.Tensor:
    """−log mean_s softmax(W z_s)_y per row [B], z_s = mean + σε (J samples)."""
    z = sample(mean.float(), logvar.float(), num_samples)                 # [J, B, D]
    log_p = F.log_softmax(classifier(z).float(), dim=-1)                  # [J, B, C]
    picked = log_p.gather(-1, pid[None, :, None].expand(num_samples, -1, 1)).squeeze(-1)
    return -(torch.logsumexp(picked, 0) - math.log(num_samples))


class SampledIDHead(IDHead):
    needs_distributions = True

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0,
                 num_samples: PositiveInt = 7) -> None:
        super().__init__(ctx, weight)
        self.num_samples = num_samples

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        d, pid, w = batch["distributions"], batch["pid"], batch.get("pair_weight")
        image = sampled_identity_nll(self.classifier, d.image_mean, d.drawn(d.image_logvar), pid,
                                     self.num_samples)
        text = sampled_identity_nll(self.classifier, d.text_mean, d.drawn(d.text_logvar), pid,
                                    self.num_samples)
        loss = (weighted_mean(image, w) + weighted_mean(text, w)) / 2
        with torch.no_grad():
            acc = ((self.classifier(d.image_mean).argmax(1) == pid).float().mean()
                   + (self.classifier(d.text_mean).argmax(1) == pid).float().mean()) / 2
        return {"loss_id": self.weight * loss, "id_accuracy": acc}
