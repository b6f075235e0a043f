"""UCFA's distribution contrast learning, DCL (Deng et al., Visual Intelligence 2025).

What follows the abstract: "distributions with the same identity are as similar as possible
across modalities through distribution-based contrastive learning". Everything else is our
reconstruction (``docs/methods.md`` §4, each a config key): the distance between an image's
and a caption's Gaussian is the squared 2-Wasserstein distance (``distance: w2``) or PCME++'s
closed-form sampled distance (``csd``); the means are l2-normalised first, so the distance
has the scale of cosine similarity (‖μ_i − μ_j‖² = 2 − 2 cos) whatever the feature norm;
the logits are −a·d + b with learnable a, b (``components.matching``: a from PCME++'s 5, b
from the first batch's base rate), over the batch gathered from all processes, with the
identity labels as targets. Two objectives
(``objective``):

- ``pcme`` (the default, PCME++'s probabilistic matching): every (image, caption) pair of
  the batch is a binary "same person?" question answered by P(match) = sigmoid(−a·d + b),
  trained with binary cross-entropy (mean over pairs, ×2 for the two directions, as PCME++'s
  code). b learns here (it sets how far apart a match may be), P(match) is a probability a
  user can read, and σ trades off like PCME++'s: raising it lowers P(match) with every
  image, which pays for a caption that several people fit and costs one that fits one.
- ``sdm``: SDM's KL in both directions over the row-wise softmax of the logits (the earlier
  reconstruction). Under a softmax over one row b cancels, so it never learns, and
  P(match) is not calibrated: kept for comparison.

Ranking (``rank_by``): by the means' cosine (``mean``, the earlier behaviour) or by the
expected distance between the Gaussians (``distribution``: PCME++'s csd, the order of
P(match)), exact over the whole gallery through the retrieval-embedding contract
(``components.matching.expected_distance_embedding``); evaluation then also reports the
means' ranking under ``<split>/mean/``.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..components.matching import (ProbabilisticMatch, check_match_estimate,
                                   expected_distance_embedding)
from ..errors import ConfigError
from ..distributed import gather_with_grad
from ..settings_types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from ..types import EncoderOutput, Gaussian
from .base import AlignmentHead, HeadContext
from .sdm import sdm_from_logits


class DCLHead(AlignmentHead):
    needs_distributions = True

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0,
                 distance: Literal["w2", "csd"] = "csd", init_scale: PositiveFloat = 5.0,
                 init_shift: float | Literal["auto"] = "auto",
                 objective: Literal["pcme", "sdm"] = "pcme",
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
                 match_entropy_target: Literal["entropy", "own_rank"] = "entropy") -> None:
        super().__init__(ctx, weight)
        self.match_lr = match_lr
        self.objective, self.rank_by = objective, rank_by
        check_match_estimate("dcl", match_estimate, rank_by, distance)
        if match_estimate == "sampled" and objective != "pcme":
            raise ConfigError("heads.dcl.match_estimate=sampled averages P(match) over samples "
                              "for PCME's matching loss: set heads.dcl.objective=pcme")
        if match_memory and objective != "pcme":
            raise ConfigError("heads.dcl.match_memory remembers Gaussians for PCME++'s "
                              "matching loss: set heads.dcl.objective=pcme, or match_memory=0")
        if rank_by == "distribution" and distance != "csd":
            raise ConfigError("heads.dcl.rank_by=distribution ranks by PCME++'s expected "
                              f"distance, which needs heads.dcl.distance=csd (got {distance!r})")
        if objective == "sdm" and init_shift == "auto":
            init_shift = 5.0  # a softmax never moves b: PCME++'s start, as before
        self.match = ProbabilisticMatch(init_scale, init_shift, distance, match_memory,
                                        ctx.embed_dim, match_estimate, match_samples,
                                        match_trains_sigma, match_refit_shift,
                                        match_mls_weight, match_mls_pairs,
                                        match_entropy_weight, match_entropy_temperature,
                                        match_entropy_memory, match_entropy_target)

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        d = batch["distributions"]
        mu_v, lv_v = gather_with_grad(d.image_mean), gather_with_grad(d.image_logvar)
        mu_t, lv_t = gather_with_grad(d.text_mean), gather_with_grad(d.text_logvar)
        pid = gather_with_grad(batch["pid"])
        text, image = d.shown(Gaussian(mu_t, lv_t)), d.shown(Gaussian(mu_v, lv_v))
        w = batch.get("pair_weight")
        if self.objective == "pcme":
            parts, logits = self.match.loss_terms(text, image, pid,
                                                  None if w is None else gather_with_grad(w))
        else:
            logits = self.match.logits(text, image)
            parts = {"match": sdm_from_logits(logits.t(), pid,
                                              weights=None if w is None else gather_with_grad(w))}
        positive = (pid[:, None] == pid[None, :]).float()
        prob = torch.sigmoid(logits.detach().float())
        # masked means, not boolean indexing: no data-dependent shape in a compiled step
        # the σ terms apart (loss_dcl_mls, loss_dcl_order), so each is logged and read alone
        losses = {"loss_dcl" + ("" if k == "match" else "_" + k): self.weight * v
                  for k, v in parts.items()}
        return {**losses, "dcl_scale": self.match.scale.detach(),
                "dcl_shift": self.match.shift.detach(),
                "dcl_match_prob": (prob * positive).sum() / positive.sum().clamp(min=1),
                "dcl_nonmatch_prob": (prob * (1 - positive)).sum()
                / (1 - positive).sum().clamp(min=1)}

    def own_lr(self, name: str) -> float | None:
        """a and b at ``match_lr`` when set (ours): a σ left to other terms moves every
        distance by Σσ², and b has to follow it faster than the encoder's rate allows."""
        return self.match_lr if name.startswith("match.") else None

    def match_probability(self, text: Gaussian, image: Gaussian) -> torch.Tensor:
        return self.match.probability(text, image)

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        # checkpoints before 2026-12-02 kept a and b on the head itself
        for name in ("scale", "shift"):
            if prefix + name in state:
                state[prefix + "match." + name] = state.pop(prefix + name)
                state.setdefault(prefix + "match.shift_pending", torch.tensor(False))
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    @torch.no_grad()
    def pair_confidence(self, encoded, batch):
        d = batch["distributions"]
        return self.match.probability(d.shown(Gaussian(d.text_mean, d.text_logvar)),
                                      d.shown(Gaussian(d.image_mean, d.image_logvar))).diagonal()

    def claims_retrieval(self, modality):
        """With ``rank_by: distribution``, ranking is by the expected distance between the
        Gaussians (P(match)'s order); evaluation also reports the means' ranking (``mean``)."""
        return self.rank_by == "distribution"

    def retrieval_embedding(self, modality, inputs):
        return expected_distance_embedding(modality, inputs.gaussian)

    def retrieval_parts(self):
        return {"mean": slice(0, self.ctx.embed_dim)}
