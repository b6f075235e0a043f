"""Typed contracts between the stages: what the encoder hands to the heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EncoderOutput:
    """Everything heads may read from one forward pass of the dual encoder.

    Shapes: B images/captions, N = 1 + patches, L = text context, D = joint dimension.
    Token sequences are after the projection into the joint space, as in IRRA.
    """

    image_tokens: torch.Tensor  # [B, N, D], token 0 is the class token
    text_tokens: torch.Tensor  # [B, L, D]
    image_global: torch.Tensor  # [B, D] projected class token, not normalised
    text_global: torch.Tensor  # [B, D] projected end-of-text token, not normalised
    text_mask: torch.Tensor  # [B, L] bool, True at real (non-padding) tokens
    # Extra captions a head asked for (e.g. "mlm_ids" -> token features of masked text).
    extra_text: dict[str, torch.Tensor] = field(default_factory=dict)
    # The last layer's attention row of the global token, averaged over heads, when a head
    # asks for it (``AlignmentHead.needs_attention``): [CLS] over the N image tokens [B, N],
    # [EOT] over the caption [B, L] (zero after the end-of-text token).
    image_attention: torch.Tensor | None = None
    text_attention: torch.Tensor | None = None
    # The caption's input word embeddings in the joint space [B, L, D], when the shared
    # distributions read σ from them (``DualEncoder.encode_text_words``)
    text_words: torch.Tensor | None = None


@dataclass
class RetrievalInput:
    """One modality of a batch as a head's retrieval embedding reads it
    (``AlignmentHead.retrieval_embedding``)."""

    tokens: torch.Tensor  # [B, N, D] image tokens or [B, L, D] text tokens
    global_feature: torch.Tensor  # [B, D], what ranking uses when no head claims it
    attention: torch.Tensor | None  # the global token's attention row, if a head needs it
    ids: torch.Tensor | None = None  # [B, L] the captions' token ids (text only)
    mask: torch.Tensor | None = None  # [B, L] True at real tokens (text only)
    # the shared distributions' Gaussian of each item, when the model has them (UCFA)
    gaussian: "Gaussian | None" = None
    # [B, L, D] the captions' input word embeddings, when the distributions read them (text)
    words: torch.Tensor | None = None


@dataclass
class Gaussian:
    """A batch of diagonal Gaussians, float32: means [B, D] and log-variances [B, D]."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def sigma(self) -> torch.Tensor:
        """Each item's mean standard deviation over the dimensions [B]: its uncertainty."""
        return self.logvar.mul(0.5).exp().mean(-1)


@dataclass
class Uncertainty:
    """What a model that predicts uncertainty says about a batch (``TBPSModule.uncertainty``):
    each image's and caption's σ [B] (mean over dimensions), and, for a model with a match
    probability, P(match) of every caption with every image [B_text, B_image]."""

    image_sigma: torch.Tensor | None = None
    text_sigma: torch.Tensor | None = None
    match_probability: torch.Tensor | None = None


@dataclass
class Explanation:
    """Where each phrase of a caption looks in one image (``TBPSModule.explain``)."""

    phrases: list[str]  # as the tokenizer reads them, in caption order
    maps: torch.Tensor  # [P, gh, gw] over the patch grid, each scaled to [0, 1]
    source: str  # what the maps are: the head's attention, or token similarity
