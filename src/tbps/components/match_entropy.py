"""σ ordered like the entropy of a caption's matches (ours; the heads' ``match_entropy_weight``,
docs/methods.md §4, "σ ordered by match entropy").

A caption that fits many people cannot be told from them: its softmax over the batch's
images, p_ti = softmax_i(cos(μ_t, μ_i) / τ), is spread over the images of everyone it
fits, and its entropy H_t ≈ log(the number of images it plausibly matches) is the
"one-to-many" count UCFA and PCME++ ask σ to carry. The means, held fixed here (detached),
already put that spread in H; what σ lacks is an objective that asks for it. PCME++'s
closed form cannot: a caption's Σσ² and its mean's distance add up to one offset, and the
means take it (docs/results.md, "σ as the spread of a caption's matches").

The term is 1 − Pearson's correlation, over the batch's captions, between log σ_t (σ
averaged over dimensions, what ``tbps uncertainty`` reads) and H_t (detached). Why a
correlation: it has no level and no scale, so the other terms keep setting how large σ is
(and the match stays calibrated), and this one only orders the captions. Its best answer
among functions of the caption is log σ_t affine in E[H | caption]: the average over the
batches a caption meets, which washes out what one batch's images happen to be. On the
recipes' brief-caption checkpoints the test captions' entropy over the gallery follows
vagueness at a partial ρ of 0.19–0.29 where their σ gives −0.31 to 0.12 (``tbps
uncertainty``, ``match_entropy_vs_log_identities_fitted``; docs/results.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..types import Gaussian


class ImageQueue(nn.Module):
    """The last ``size`` training images' l2-normalised means (detached), for the entropy
    (``match_entropy_memory``): a batch of 64 of ~2,500 training images rarely holds the
    other people a vague caption fits, a few thousand usually do. Saved with the checkpoint;
    empty slots are masked out, so the first steps use what has been seen."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError("an image queue needs the means' dimension (dim)")
        self.register_buffer("mean", torch.zeros(size, dim))
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, image_mean: torch.Tensor) -> None:
        n = min(len(image_mean), len(self.mean))
        idx = (self.ptr + torch.arange(n, device=self.ptr.device)) % len(self.mean)
        self.mean[idx] = F.normalize(image_mean[-n:].detach().float(), dim=-1)
        self.filled[idx] = True
        self.ptr.copy_((self.ptr + n) % len(self.mean))


def match_entropy(text_mean: torch.Tensor, image_mean: torch.Tensor, temperature: float,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Each caption's entropy (nats) of its softmax over the images by cosine / τ [T]; the
    images where ``valid`` [I] is False are left out."""
    logits = (F.normalize(text_mean.float(), dim=-1)
              @ F.normalize(image_mean.float(), dim=-1).t()) / temperature
    if valid is not None:
        logits = logits.masked_fill(~valid[None, :], float("-inf"))
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)


def entropy_order_loss(text: Gaussian, image_mean: torch.Tensor, temperature: float,
                       queue: ImageQueue | None = None, remember: bool = False,
                       floor: float = 0.01) -> torch.Tensor:
    """1 − corr(log σ_t, H_t) over the captions of a batch: σ from ``text`` (trained), H from
    the means (detached), over the batch's images and the ``queue``'s (pushed the batch's
    afterwards when ``remember``). log σ's spread enters the denominator no smaller than
    ``floor`` (a 1% spread of σ): a correlation's gradient grows as 1/spread, and σ starts
    nearly flat, where it would otherwise swamp every other term on the features σ is read
    from."""
    with torch.no_grad():
        images, valid = image_mean.float(), None
        if queue is not None:
            images = torch.cat([F.normalize(images, dim=-1), queue.mean])
            valid = torch.cat([queue.filled.new_ones(len(image_mean)), queue.filled])
        h = match_entropy(text.mean, images, temperature, valid)
        if queue is not None and remember:
            queue.push(image_mean)
        y = h - h.mean()
        y = y / y.pow(2).mean().sqrt().clamp_min(1e-12)
    log_sigma = text.logvar.float().mul(0.5).exp().mean(-1).log()
    x = log_sigma - log_sigma.mean()
    spread = (x.pow(2).mean() + floor ** 2).sqrt()
    return 1 - (x * y).mean() / spread
