"""Probabilistic embeddings of both modalities, shared by every head of a training step
(UCFA's distribution contrast, point contrast and attribute reconstruction read the same
distributions; ``docs/methods.md`` §4).

Built by the training module when the config sets ``distributions`` (like ``memory``):
each modality's global feature becomes a diagonal Gaussian through the shared
``GaussianEmbedding`` component, with the global feature itself as the mean, so inference
on the means ranks on the features and costs nothing extra. The variance reads the whole
token sequence (``variance_from: tokens``, UCFA's PROPOSAL: attention pooling + a residual
from the global token), the global feature alone (``global``), or both side by side, each
with its own weights (``global_and_tokens``, ours); for captions, the mean of the caption's
input word embeddings alone or beside the global feature (``words``, ``global_and_words``,
ours; images then read their global feature). The KL regulariser to
N(0, I) (β = ``kl_weight``, PCME++'s vib_beta 1e-4) belongs here, not to any one head, so
that it stays when a head is ablated. Ours, off by default: ``sigma_detached`` (σ reads the
features without passing gradient to the encoder) and ``sigma_hidden`` (a hidden layer before
log σ², ``components/gaussian.py``); ``sigma_on_sphere``: the match, ranking and uncertainty
read σ/‖μ‖ (``Distributions.shown``), the spread PCL's samples drawn around the raw feature
have once normalised, while the sampling heads draw with σ itself; ``samples_train_sigma:
false``: the sampling heads draw with σ as given (``Distributions.drawn``, detached), so σ
is trained only by the match, the ordering term and the KL, not by what its samples cost.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from ..types import EncoderOutput, Gaussian, RetrievalInput
from .gaussian import (READS_WORDS, GaussianEmbedding, VarianceFrom, kl_to_standard_normal,
                       on_sphere, variance_prior)


@dataclass
class Distributions:
    """The batch's Gaussians, float32: means [B, D] and log-variances [B, D] (what the
    sampling heads draw from); ``sigma_on_sphere``: what ``shown`` hands the match."""

    image_mean: torch.Tensor
    image_logvar: torch.Tensor
    text_mean: torch.Tensor
    text_logvar: torch.Tensor
    sigma_on_sphere: bool = False
    samples_train_sigma: bool = True

    def shown(self, gaussian: Gaussian) -> Gaussian:
        """The Gaussian the match, ranking and uncertainty read: as drawn from, or with
        ``sigma_on_sphere`` the spread of its samples once l2-normalised, σ/‖μ‖ (PCL draws
        around the raw feature and normalises; DCL compares normalised means)."""
        return _shown(gaussian, self.sigma_on_sphere)

    def drawn(self, logvar: torch.Tensor) -> torch.Tensor:
        """The log-variance the sampling heads (PCL, UAMLR, the sampled ID loss) draw with:
        the one that is trained, or with ``samples_train_sigma: false`` the same values
        detached, so that a loss paid on the samples moves the means and never σ."""
        return logvar if self.samples_train_sigma else logvar.detach()


def _shown(gaussian: Gaussian, sigma_on_sphere: bool) -> Gaussian:
    if not sigma_on_sphere:
        return gaussian
    return Gaussian(gaussian.mean, on_sphere(gaussian.mean, gaussian.logvar))


class ModalityDistributions(nn.Module):
    def __init__(self, dim: int, variance_from: VarianceFrom = "tokens",
                 init_logvar: float = -4.0, kl_weight: float = 1e-4,
                 sigma_prior_weight: float = 0.0, sigma_detached: bool = False,
                 sigma_hidden: int = 0, sigma_on_sphere: bool = False,
                 samples_train_sigma: bool = True) -> None:
        super().__init__()
        self.sigma_on_sphere, self.samples_train_sigma = sigma_on_sphere, samples_train_sigma
        self.kl_weight, self.sigma_prior_weight = kl_weight, sigma_prior_weight
        # an image has no words: with a word variant its σ reads the global feature
        self.reads_words = variance_from in READS_WORDS
        self.image, self.text = (GaussianEmbedding(dim, init_logvar=init_logvar,
                                                   variance_from=source,
                                                   sigma_detached=sigma_detached,
                                                   sigma_hidden=sigma_hidden)
                                 for source in ("global" if self.reads_words else variance_from,
                                                variance_from))

    def forward(self, encoded: EncoderOutput) -> Distributions:
        # image: the patch tokens (the class token is the residual); text: real tokens only,
        # or the caption's input word embeddings (the encoder adds them when ``reads_words``)
        patches = encoded.image_tokens[:, 1:] if self.image.reads_sequence else None
        mu_v, lv_v = self.image(encoded.image_global, patches)
        sequence = encoded.text_words if self.reads_words else encoded.text_tokens
        mu_t, lv_t = (self.text(encoded.text_global, sequence, encoded.text_mask)
                      if self.text.reads_sequence else self.text(encoded.text_global))
        return Distributions(mu_v, lv_v, mu_t, lv_t, self.sigma_on_sphere,
                             self.samples_train_sigma)

    def regularisers(self, d: Distributions) -> dict[str, torch.Tensor]:
        """Weighted loss terms of the distributions themselves, and their mean σ."""
        kl = kl_to_standard_normal(d.image_mean, d.image_logvar) \
            + kl_to_standard_normal(d.text_mean, d.text_logvar)
        out = {}
        if self.sigma_prior_weight > 0:
            out["loss_sigma_prior"] = self.sigma_prior_weight * (
                variance_prior(d.image_logvar) + variance_prior(d.text_logvar))
        return {**out, "loss_kl": self.kl_weight * kl,
                "sigma_image": d.image_logvar.detach().mul(0.5).exp().mean(),
                "sigma_text": d.text_logvar.detach().mul(0.5).exp().mean()}

    def distribution(self, modality: str, inputs: RetrievalInput) -> Gaussian:
        """The Gaussian of each item of a batch as training's match reads it (``forward``,
        ``Distributions.shown``), from the inputs ranking reads (``TBPSModule.image_side`` /
        ``text_side``)."""
        if modality == "image":
            patches = inputs.tokens[:, 1:] if self.image.reads_sequence else None
            found = self.image(inputs.global_feature, patches)
        elif self.text.reads_sequence:
            sequence = inputs.words if self.reads_words else inputs.tokens
            found = self.text(inputs.global_feature, sequence, inputs.mask)
        else:
            found = self.text(inputs.global_feature)
        return _shown(Gaussian(*found), self.sigma_on_sphere)
