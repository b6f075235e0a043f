"""RDE: robust dual embedding for noisy correspondence (Qin et al., CVPR 2024;
``QinYang79/RDE``; docs/methods.md §5).

As the code runs it:

- Two embeddings per modality: BGE, the encoder's global feature, and TSE, the token
  selection embedding (``tbps.components.token_selection``) over the last layer's [CLS] /
  [EOT] attention.
- The triplet alignment loss (TAL, ``tal_per_pair``) of each, per pair, summed (not
  averaged) over the pairs the consensus division calls clean.
- Before every epoch (from ``division_start_epoch``), the confident consensus division
  (``tbps.components.consensus``) over both views' per-pair TAL, made from a forward-only
  pass over every training pair (the head contract's preparation step).
- Ranking by BGE, TSE, or (the code's default, ``inference: mean``) the mean of their
  cosines, which is the cosine of the two normalised embeddings side by side: one
  embedding, so evaluation, the gallery index, search and serve rank the same way, and
  evaluation also reports BGE and TSE alone (``test/bge/*``, ``test/tse/*``).
- TSE's layers train at their own learning rate (``tse_lr``: the code's hard-coded 1e-3).

Our choices: ``division_start_epoch`` (the code divides from the first epoch, over CLIP's
pretrained features; from random weights the first division would be noise, so the
embedded recipe starts it later; every pair counts as clean before); the mixture's
initialisation is seeded. The code leaves the whole model in eval mode after the first
division (its README: the paper's numbers were made so); ``paper_eval_mode: true`` does
the same to the only modules that mode changes, TSE's BatchNorms (CLIP has no dropout).
``loss_history`` (0, the code: off) divides by each pair's normalised losses averaged over
the divisions so far (``components.consensus.averaged_losses``), kept in the checkpoint.
``clean_threshold`` (0.5, the code) is the posterior of the low-mean component above which a
view calls a pair clean: higher calls fewer pairs clean, fewer of them swapped. It applies to
a view only when its mixture's components are apart, Ashman's D ≥
``clean_threshold_separation`` (2, the usual bound for two separated Gaussians), else 0.5:
where the losses do not separate (early in training, or clean captions) almost no posterior
passes 0.95, and the model would train on nothing. Off in every recipe: on SynthPedes at 30%
noise, with ``loss_history`` 0.5 and D ≥ 2.5, it divided at precision 0.944-0.957 over five
seeds but kept 2 points less R@1 than the code's rule (docs/results.md, "A later gate, D ≥
2.5, and five seeds").
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..components.consensus import (SEPARATED, MixtureFit, averaged_losses, division_quality,
                                    consensus_division)
from ..components.token_selection import TokenSelectionEmbedding
from ..distributed import gather_with_grad
from ..settings_types import NonNegativeFloat, NonNegativeInt, OpenRate, PositiveFloat, PositiveInt
from ..types import EncoderOutput, RetrievalInput
from .base import AlignmentHead, HeadContext


def tal_per_pair(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor, tau: float,
                 margin: float) -> torch.Tensor:
    """RDE's triplet alignment loss of each pair k of a batch [B]: for caption k against
    the images and for image k against the captions,
    [m − Σ_{p∈P} α_p s_p + τ·log Σ_{n∉P} exp(s_n/τ)]_+ with α the detached softmax of s/τ
    over the positives P (same person id) and s the cosine; the two directions summed."""
    scores = F.normalize(text.float(), dim=-1) @ F.normalize(image.float(), dim=-1).t()
    positive = pid[:, None] == pid[None, :]

    def direction(s: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax((s / tau).masked_fill(~positive, float("-inf")), -1).detach()
        pos = (alpha * s).sum(-1)
        negatives = (s / tau).masked_fill(positive, float("-inf"))
        has_negative = (~positive).any(-1)
        # log Σ exp over no negative is −inf: the term is 0 (the code's clamp), and safe to
        # differentiate
        upper = tau * torch.logsumexp(negatives.masked_fill(~has_negative[:, None], 0.0), -1)
        term = (margin - pos + upper).clamp(min=0)
        return torch.where(has_negative, term, torch.zeros_like(term))

    return direction(scores) + direction(scores.t())


class RDEHead(AlignmentHead):
    needs_attention = True

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0, tau: PositiveFloat = 0.015,
                 margin: NonNegativeFloat = 0.1, select_ratio: OpenRate = 0.3,
                 tse_dim: PositiveInt = 1024, tse_lr: PositiveFloat | None = 1e-3,
                 inference: Literal["mean", "bge", "tse"] = "mean",
                 division_start_epoch: NonNegativeInt = 0, gmm_max_iter: PositiveInt = 10,
                 gmm_tol: PositiveFloat = 1e-2, gmm_reg_covar: PositiveFloat = 5e-4,
                 paper_eval_mode: bool = False,
                 loss_history: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
                 clean_threshold: Annotated[float, Field(ge=0.5, lt=1.0)] = 0.5,
                 clean_threshold_separation: NonNegativeFloat = SEPARATED) -> None:
        super().__init__(ctx, weight)
        if inference not in ("mean", "bge", "tse"):
            raise ValueError(f"heads.rde.inference={inference!r}: choose mean, bge or tse")
        self.tau, self.margin, self.tse_lr, self.inference = tau, margin, tse_lr, inference
        self.image_tse = TokenSelectionEmbedding(ctx.embed_dim, tse_dim, select_ratio)
        self.text_tse = TokenSelectionEmbedding(ctx.embed_dim, tse_dim, select_ratio)
        self.division_start_epoch = division_start_epoch
        self.fit = MixtureFit(gmm_max_iter, gmm_tol, gmm_reg_covar)
        self.paper_eval_mode = paper_eval_mode
        # the division: 1 = clean, per training pair; every pair is clean before the first
        self.register_buffer("clean", torch.ones(ctx.num_train_pairs))
        self.register_buffer("divided_epoch", torch.tensor(-1))
        self.loss_history, self.clean_threshold = loss_history, clean_threshold
        self.clean_threshold_separation = clean_threshold_separation
        if loss_history > 0:  # each view's averaged losses, per training pair
            self.register_buffer("history", torch.zeros(2, ctx.num_train_pairs,
                                                        dtype=torch.float64))

    # --- training --------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.paper_eval_mode and self.divided_epoch.item() >= 0:
            self.image_tse.eval()  # the code's model stays in eval mode after its division
            self.text_tse.eval()
        return self

    def _tse(self, tokens: torch.Tensor, attention: torch.Tensor, ids: torch.Tensor | None
             ) -> torch.Tensor:
        if ids is None:
            return self.image_tse.forward_image(tokens, attention)
        return self.text_tse.forward_text(tokens, attention, ids, self.ctx.eos_id,
                                          self.ctx.context_length)

    def _per_pair(self, encoded: EncoderOutput, batch: dict) -> tuple[torch.Tensor, ...]:
        """Both views' TAL per pair on the batch gathered from every process, and its pairs'
        indices."""
        i_tse = self._tse(encoded.image_tokens, encoded.image_attention, None)
        t_tse = self._tse(encoded.text_tokens, encoded.text_attention, batch["caption_ids"])
        img, txt = gather_with_grad(encoded.image_global), gather_with_grad(encoded.text_global)
        i_tse, t_tse = gather_with_grad(i_tse), gather_with_grad(t_tse)
        pid, index = gather_with_grad(batch["pid"]), gather_with_grad(batch["index"])
        bge = tal_per_pair(img, txt, pid, self.tau, self.margin)
        tse = tal_per_pair(i_tse, t_tse, pid, self.tau, self.margin)
        return bge, tse, index

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        bge, tse, index = self._per_pair(encoded, batch)
        if len(self.clean) == 0:
            raise ValueError("the RDE head holds no division: build the module with "
                             "num_train_pairs (tbps train does)")
        label = self.clean[index].to(bge.dtype)
        return {"loss_bge": self.weight * (label * bge).sum(),
                "loss_tse": self.weight * (label * tse).sum(),
                "rde_clean_share": label.detach().mean()}

    def own_lr(self, name: str) -> float | None:
        return self.tse_lr if name.startswith(("image_tse.", "text_tse.")) else None

    # --- the consensus division before each epoch --------------------------------------------
    def prepares_for(self, epoch: int) -> bool:
        return epoch >= self.division_start_epoch and int(self.divided_epoch) != epoch

    @torch.no_grad()
    def preparation_scores(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        bge, tse, _ = self._per_pair(encoded, batch)
        return {"bge": bge, "tse": tse}

    def prepare(self, scores: dict[str, torch.Tensor], noisy: torch.Tensor, epoch: int,
                seed: int) -> dict[str, float]:
        bge, tse = scores["bge"], scores["tse"]
        if self.loss_history > 0:
            first = int(self.divided_epoch) < 0
            bge, tse = (averaged_losses(None if first else self.history[k], loss,
                                        self.loss_history) for k, loss in enumerate((bge, tse)))
            self.history.copy_(torch.stack([bge, tse]).to(self.history))
        labels, said = consensus_division(bge, tse, self.fit, seed * 1000 + epoch,
                                          self.clean_threshold,
                                          self.clean_threshold_separation)
        self.clean.copy_(labels.to(self.clean))
        self.divided_epoch.fill_(epoch)
        said.update(division_quality(labels, noisy))
        return {f"division_{k}": v for k, v in said.items()}

    # --- inference ---------------------------------------------------------------------------
    def claims_retrieval(self, modality) -> bool:
        return self.inference != "bge"

    def retrieval_embedding(self, modality, inputs: RetrievalInput) -> torch.Tensor:
        tse = self._tse(inputs.tokens, inputs.attention, inputs.ids)
        if self.inference == "tse":
            return tse
        # cos([b̂, t̂], [b̂', t̂']) = (cos_bge + cos_tse) / 2: the code's mean of similarities
        return torch.cat([F.normalize(inputs.global_feature.float(), dim=-1),
                          F.normalize(tse, dim=-1)], -1)

    def retrieval_parts(self) -> dict[str, slice]:
        if self.inference != "mean":
            return {}
        d = self.ctx.embed_dim
        return {"bge": slice(0, d), "tse": slice(d, d + self.image_tse.out.out_features)}
