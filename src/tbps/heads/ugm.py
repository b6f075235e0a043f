"""CRUE's UGM: uncertainty-guided modelling (the "GUC" loss; Huang et al., TOMM 2025).

Follows the paper's figure (``docs/methods.md`` §2, UGM): each modality's global
feature becomes a Gaussian (mean μ, variance σ²); several reparameterised samples of an
image are scored against the text memory and samples of a caption against the image
memory, each trained towards the identity labels. A weak or mismatched pair can lower its
loss by raising σ, which spreads its samples and averages (down-weights) its gradient.

Our choices where the paper is silent (all config keys): μ is the feature itself and
log σ² a linear layer (so inference is unchanged); ``num_samples`` = 7 (PCME); samples are
L2-normalised; τ = 0.07; hard identity targets over the keys (current batch's momentum
features, then the queue); a KL(N(μ, σ²) ‖ N(0, I)) term with ``kl_weight`` = 1e-4
(PCME++'s vib_beta) keeps σ from collapsing or exploding. ``distill_alpha`` hands a share
of those targets to the momentum model's own cross-modal prediction (ALBEF's momentum
distillation, as in IRE; off by default).

σ on the mean's scale (``sample_around: normalised``, the default): samples are drawn
around the l2-normalised mean, so σ is measured against a unit-length feature. Drawn around
the raw feature (``raw``, the earlier behaviour), the encoder can cancel any σ by growing
the feature's norm, and σ stops meaning anything.
``sigma_on_sphere`` (with ``raw``) shows the match, ranking and uncertainty σ/‖μ‖ instead,
the spread those samples have once normalised (``_shown``).

A probabilistic match (PCME++, ``match_weight`` > 0, the default 1): the batch's image and
caption Gaussians, compared with PCME++'s closed-form sampled distance d, give every pair
P(match) = sigmoid(−a·d + b) (learnable a, b), trained with binary cross-entropy against
"same person". This is what makes CRUE's uncertainty readable per pair (``tbps
uncertainty``, search) and gives σ a pairwise reason to grow on captions that fit many.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ..components.gaussian import (GaussianEmbedding, kl_to_standard_normal, on_sphere,
                                   sample, variance_prior)
from ..components.matching import (ProbabilisticMatch, check_match_estimate,
                                   expected_distance_embedding)
from ..components.pair_weights import weighted_mean
from ..errors import ConfigError
from ..types import EncoderOutput, Gaussian
from ..settings_types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Rate
from ..distributed import gather_with_grad
from .base import AlignmentHead, HeadContext
from .ire import (distilled, identity_targets, key_softmax, masked_log_softmax, ramped,
                  soft_target_loss)


def ugm_loss(mean: torch.Tensor, logvar: torch.Tensor, keys: torch.Tensor, target: torch.Tensor,
             valid: torch.Tensor, temperature: float, num_samples: int,
             generator: torch.Generator | None = None, normalise_mean: bool = False,
             weights: torch.Tensor | None = None,
             average: Literal["loss", "probability"] = "loss") -> torch.Tensor:
    """Mean over rows (weighted by ``weights``) of CE(target, softmax(ẑ · keys / τ)), ẑ
    normalised samples (drawn around the normalised mean with ``normalise_mean``): averaged
    over the samples (``average: loss``), or of the softmax averaged over the samples
    (``probability``: CE(target, mean_s softmax), Kendall & Gal's loss attenuation)."""
    centre = F.normalize(mean, dim=-1) if normalise_mean else mean
    z = F.normalize(sample(centre, logvar, num_samples, generator), dim=-1)   # [S, B, D]
    logits = z @ keys.t() / temperature                                      # [S, B, K]
    if average == "loss":
        return soft_target_loss(logits.flatten(0, 1), target.repeat(num_samples, 1),
                                valid[None, :],
                                weights=None if weights is None else weights.repeat(num_samples))
    log_p = masked_log_softmax(logits, valid)
    # empty keys' -inf out before the log-mean-exp: its gradient there would be 0 · nan
    log_p = torch.where(valid, log_p, torch.zeros_like(log_p))
    log_p = torch.logsumexp(log_p, 0) - math.log(num_samples)
    return weighted_mean(-(target * log_p).sum(1), weights)


class UGMHead(AlignmentHead):
    needs_memory = True

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0,
                 temperature: PositiveFloat = 0.07, num_samples: PositiveInt = 7,
                 kl_weight: NonNegativeFloat = 1e-4, learned_mean: bool = False,
                 init_logvar: float = -4.0,
                 sample_around: Literal["normalised", "raw"] = "normalised",
                 match_weight: NonNegativeFloat = 1.0, init_scale: PositiveFloat = 5.0,
                 init_shift: float | Literal["auto"] = "auto",
                 rank_by: Literal["mean", "distribution"] = "mean",
                 match_memory: NonNegativeInt = 0,
                 match_estimate: Literal["closed", "sampled"] = "closed",
                 match_samples: PositiveInt = 7,
                 match_trains_sigma: bool = True,
                 match_lr: PositiveFloat | None = None,
                 match_refit_shift: bool = False,
                 match_mls_weight: NonNegativeFloat = 0.0,
                 match_mls_pairs: Literal["identity", "soft"] = "identity",
                 match_entropy_weight: NonNegativeFloat = 0.0,
                 match_entropy_temperature: PositiveFloat = 0.1,
                 match_entropy_memory: NonNegativeInt = 0,
                 match_entropy_target: Literal["entropy", "own_rank"] = "entropy",
                 sigma_prior_weight: NonNegativeFloat = 0.0,
                 sample_average: Literal["loss", "probability"] = "loss",
                 distill_alpha: Rate = 0.0, distill_ramp_epochs: NonNegativeFloat = 2.0,
                 sigma_on_sphere: bool = False, sigma_detached: bool = False,
                 sigma_hidden: NonNegativeInt = 0) -> None:
        super().__init__(ctx, weight)
        if sigma_on_sphere and sample_around != "raw":
            raise ConfigError("heads.ugm.sigma_on_sphere carries σ of samples drawn around the "
                              "raw feature onto the unit sphere; around the normalised mean "
                              "σ is on it already: set heads.ugm.sample_around=raw or "
                              "heads.ugm.sigma_on_sphere=false")
        self.sigma_on_sphere = sigma_on_sphere
        self.distill_alpha, self.distill_ramp_epochs = distill_alpha, distill_ramp_epochs
        self.match_lr = match_lr
        self.sigma_prior_weight, self.sample_average = sigma_prior_weight, sample_average
        check_match_estimate("ugm", match_estimate, rank_by)
        if rank_by == "distribution" and match_weight == 0:
            raise ConfigError("heads.ugm.rank_by=distribution ranks by the probabilistic "
                              "match: set heads.ugm.match_weight above 0")
        self.rank_by = rank_by
        self.sample_around, self.match_weight = sample_around, match_weight
        self.match = ProbabilisticMatch(init_scale, init_shift, memory_size=match_memory,
                                        dim=ctx.embed_dim, estimate=match_estimate,
                                        num_samples=match_samples,
                                        trains_sigma=match_trains_sigma,
                                        refit_shift=match_refit_shift,
                                        mls_weight=match_mls_weight,
                                        mls_pairs=match_mls_pairs,
                                        entropy_weight=match_entropy_weight,
                                        entropy_temperature=match_entropy_temperature,
                                        entropy_memory=match_entropy_memory,
                                        entropy_target=match_entropy_target)
        self.image_gauss = GaussianEmbedding(ctx.embed_dim, learned_mean, init_logvar,
                                             sigma_detached=sigma_detached,
                                             sigma_hidden=sigma_hidden)
        self.text_gauss = GaussianEmbedding(ctx.embed_dim, learned_mean, init_logvar,
                                            sigma_detached=sigma_detached,
                                            sigma_hidden=sigma_hidden)
        self.temperature, self.num_samples, self.kl_weight = temperature, num_samples, kl_weight
        self.learned_mean = learned_mean

    def claims_retrieval(self, modality):
        """With ``rank_by: distribution``, ranking is by the expected distance between the
        Gaussians (P(match)'s order); with ``learned_mean``, by the learned means; otherwise
        μ is the feature itself and nothing is claimed."""
        return self.learned_mean or self.rank_by == "distribution"

    def retrieval_embedding(self, modality, inputs):
        gauss = self.image_gauss if modality == "image" else self.text_gauss
        if self.rank_by == "distribution":
            return expected_distance_embedding(modality, self._gaussian(gauss, inputs.global_feature))
        return gauss.mean_projection(inputs.global_feature)

    def retrieval_parts(self):
        return {"mean": slice(0, self.ctx.embed_dim)} if self.rank_by == "distribution" else {}

    def distribution(self, modality, inputs):
        gauss = self.image_gauss if modality == "image" else self.text_gauss
        return self._gaussian(gauss, inputs.global_feature)

    def _gaussian(self, gauss, feature: torch.Tensor) -> Gaussian:
        return self._shown(*gauss(feature))

    def _shown(self, mean: torch.Tensor, logvar: torch.Tensor) -> Gaussian:
        """The Gaussian UGM shows its match, ranking and uncertainty: (μ, log σ²), or with
        ``sigma_on_sphere`` (ours) the spread its normalised samples have, σ/‖μ‖: a sample
        μ + σε drawn around the raw feature and l2-normalised moves on the unit sphere by
        σ/‖μ‖ to first order, so that is the uncertainty the sampled loss acts on, and on
        the scale of the unit means the match compares (σ alone can be cancelled by the
        norm). The norm is detached: the match reads it, the sampled loss trains it."""
        return Gaussian(mean, on_sphere(mean, logvar) if self.sigma_on_sphere else logvar)

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        mem = batch["memory"]
        mu_v, lv_v = self.image_gauss(encoded.image_global)
        mu_t, lv_t = self.text_gauss(encoded.text_global)
        y = identity_targets(batch["pid"], mem.keys_pid, mem.keys_valid)
        y_v = y_t = y   # the image's samples against the text keys, the caption's against the images'
        out = {}
        if self.distill_alpha:
            share = ramped(self.distill_alpha, self.distill_ramp_epochs, batch.get("progress"))
            y_v = distilled(y, y, key_softmax(mem.image, mem.keys_text, mem.keys_valid,
                                              self.temperature), share)
            y_t = distilled(y, y, key_softmax(mem.text, mem.keys_image, mem.keys_valid,
                                              self.temperature), share)
            out["ugm_distill_alpha"] = share.float()
        centred, w = self.sample_around == "normalised", batch.get("pair_weight")
        loss = 0.5 * (ugm_loss(mu_v, lv_v, mem.keys_text, y_v, mem.keys_valid, self.temperature,
                               self.num_samples, normalise_mean=centred, weights=w,
                               average=self.sample_average)
                      + ugm_loss(mu_t, lv_t, mem.keys_image, y_t, mem.keys_valid,
                                 self.temperature, self.num_samples, normalise_mean=centred,
                                 weights=w, average=self.sample_average))
        kl = kl_to_standard_normal(mu_v, lv_v) + kl_to_standard_normal(mu_t, lv_t)
        out |= {"loss_ugm": self.weight * loss, "loss_ugm_kl": self.kl_weight * kl,
                "ugm_sigma_image": lv_v.detach().mul(0.5).exp().mean(),
                "ugm_sigma_text": lv_t.detach().mul(0.5).exp().mean()}
        if self.sigma_prior_weight > 0:
            out["loss_ugm_sigma_prior"] = self.sigma_prior_weight * (
                variance_prior(lv_v) + variance_prior(lv_t))
        if self.match_weight > 0:
            pid = gather_with_grad(batch["pid"])
            parts, _ = self.match.loss_terms(
                self._shown(gather_with_grad(mu_t), gather_with_grad(lv_t)),
                self._shown(gather_with_grad(mu_v), gather_with_grad(lv_v)), pid,
                None if w is None else gather_with_grad(w))
            # the σ terms apart (loss_ugm_match_mls, loss_ugm_match_order)
            out |= {"loss_ugm_match" + ("" if k == "match" else "_" + k): self.match_weight * v
                    for k, v in parts.items()}
            out["ugm_shift"] = self.match.shift.detach()
        return out

    def own_lr(self, name: str) -> float | None:
        """a and b at ``match_lr`` when set (ours): a σ left to other terms moves every
        distance by Σσ², and b has to follow it faster than the encoder's rate allows."""
        return self.match_lr if name.startswith("match.") else None

    def match_probability(self, text, image):
        return self.match.probability(text, image) if self.match_weight > 0 else None

    @torch.no_grad()
    def pair_confidence(self, encoded, batch):
        if self.match_weight == 0:
            return None
        text = self._gaussian(self.text_gauss, encoded.text_global)
        image = self._gaussian(self.image_gauss, encoded.image_global)
        return self.match.probability(text, image).diagonal()

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        # a checkpoint from before 2026-12-02 has no probabilistic match: it loads without
        # one (no P(match)), rather than with an untrained a and b
        if prefix + "image_gauss.logvar.weight" in state and prefix + "match.scale" not in state:
            for name, value in self.match.state_dict().items():
                state[prefix + "match." + name] = value
            self.match_weight = 0.0
        super()._load_from_state_dict(state, prefix, *args, **kwargs)
