"""The one path from inputs to a model's uncertainty (``TBPSModule.uncertainty``).

Which part of the model predicts it is asked, never named: the shared ``distributions``
component (UCFA) first, then the heads in config order (``AlignmentHead.distribution``:
CRUE's UGM), for each item's Gaussian; then the heads for a probabilistic match
(``AlignmentHead.match_probability``: DCL's PCME++ matching). `tbps uncertainty`, the
notebooks and search all come here.
"""

from __future__ import annotations

import torch

from ..errors import TBPSError
from ..types import Gaussian, RetrievalInput, Uncertainty


class NoUncertainty(TBPSError):
    """The model predicts no uncertainty (no Gaussian per item)."""


def _models(module) -> list:
    return ([module.distributions] if module.distributions is not None else []) \
        + list(module.heads.values())


def distribution(module, modality: str, side: RetrievalInput) -> Gaussian | None:
    """The first Gaussian a part of ``module`` models ``side``'s items as, or ``None``."""
    for part in _models(module):
        found = part.distribution(modality, side)
        if found is not None:
            return found
    return None


def match_probability(module, text: Gaussian, image: Gaussian) -> torch.Tensor | None:
    """P(match) [T, I] from the first head that defines a probabilistic match, or ``None``."""
    for head in module.heads.values():
        prob = head.match_probability(text, image)
        if prob is not None:
            return prob
    return None


def _side(module, modality: str, inputs: torch.Tensor) -> tuple[RetrievalInput, Gaussian]:
    side = module.image_side(inputs) if modality == "image" else module.text_side(inputs)
    found = distribution(module, modality, side)
    if found is None:
        raise NoUncertainty("this model predicts no uncertainty: no part of it models an "
                            f"{modality} as a distribution (UCFA's `distributions` and CRUE's "
                            "`ugm` head do)")
    return side, found


@torch.no_grad()
def gaussian(module, modality: str, inputs: torch.Tensor) -> Gaussian:
    """The Gaussians of a batch of images (pixels) or captions (token ids); raises
    ``NoUncertainty`` for a model that predicts none."""
    return _side(module, modality, inputs)[1]


@torch.no_grad()
def gaussian_and_embedding(module, modality: str, inputs: torch.Tensor
                           ) -> tuple[Gaussian, torch.Tensor]:
    """The Gaussians and the retrieval embeddings (as ``embed_images`` / ``embed_texts``
    make them) of one batch, from one pass through the encoder."""
    side, found = _side(module, modality, inputs)
    return found, module._embed(modality, side)


@torch.no_grad()
def uncertainty(module, images: torch.Tensor | None = None,
                ids: torch.Tensor | None = None) -> Uncertainty:
    """σ of each image [B_i] and caption [B_t], and P(match) [B_t, B_i] when both are given
    and a head defines it. Raises ``NoUncertainty`` for a model that predicts none."""
    out = Uncertainty()
    # captions first: the cheaper side tells a model without uncertainty soonest
    text = None if ids is None else gaussian(module, "text", ids)
    image = None if images is None else gaussian(module, "image", images)
    out.text_sigma = None if text is None else text.sigma
    out.image_sigma = None if image is None else image.sigma
    if text is not None and image is not None:
        out.match_probability = match_probability(module, text, image)
    return out
