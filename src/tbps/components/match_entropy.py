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

``target: own_rank`` orders σ by another reading of the count that needs the identities a
training batch has: log(1 + other people's images nearer the caption than its own person's),
which a caption fitting N people puts near log(N/2) whatever the scale of its similarities
(``own_rank``).
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
        self.register_buffer("pid", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, image_mean: torch.Tensor, pid: torch.Tensor | None = None) -> None:
        n = min(len(image_mean), len(self.mean))
        idx = (self.ptr + torch.arange(n, device=self.ptr.device)) % len(self.mean)
        self.mean[idx] = F.normalize(image_mean[-n:].detach().float(), dim=-1)
        self.pid[idx] = -1 if pid is None else pid[-n:].to(self.pid)
        self.filled[idx] = True
        self.ptr.copy_((self.ptr + n) % len(self.mean))

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        # checkpoints written before the queue kept identities (2026-12-05): their images
        # are remembered as of no known person, which own_rank leaves out
        if prefix + "mean" in state and prefix + "pid" not in state:
            state[prefix + "pid"] = torch.full((len(state[prefix + "mean"]),), -1,
                                               dtype=torch.long)
        super()._load_from_state_dict(state, prefix, *args, **kwargs)


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


def own_rank(text_mean: torch.Tensor, image_mean: torch.Tensor, same: torch.Tensor,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Each caption's log(1 + the number of other people's images [I] nearer to it by cosine
    than its own person's images are on average) [T]; ``same`` [T, I]: "same person", the
    images where ``valid`` [I] is False are left out. A caption that fits N people ranks its
    own about N/2 images down whatever its scale, where the entropy also reads how sharp the
    caption's similarities are (``match_entropy_target: own_rank``)."""
    cos = F.normalize(text_mean.float(), dim=-1) @ F.normalize(image_mean.float(), dim=-1).t()
    others = ~same
    if valid is not None:
        same, others = same & valid[None, :], others & valid[None, :]
    own = (cos * same).sum(-1) / same.sum(-1).clamp_min(1)
    return ((cos > own[:, None]) & others).sum(-1).float().log1p()


def entropy_order_loss(text: Gaussian, image_mean: torch.Tensor, temperature: float,
                       queue: ImageQueue | None = None, remember: bool = False,
                       floor: float = 0.01, target: str = "entropy",
                       pid: torch.Tensor | None = None) -> torch.Tensor:
    """1 − corr(log σ_t, H_t) over the captions of a batch: σ from ``text`` (trained), H from
    the means (detached), over the batch's images and the ``queue``'s (pushed the batch's
    afterwards when ``remember``). H is the match entropy, or with ``target: own_rank`` the
    log rank of the caption's own person (``own_rank``; ``pid``: the batch's identities,
    caption i and image i share ``pid[i]``). log σ's spread enters the denominator no
    smaller than ``floor`` (a 1% spread of σ): a correlation's gradient grows as 1/spread,
    and σ starts nearly flat, where it would otherwise swamp every other term on the
    features σ is read from."""
    if target not in ("entropy", "own_rank"):
        raise ValueError(f"target is 'entropy' or 'own_rank', not {target!r}")
    if pid is None and target == "own_rank":
        raise ValueError("own_rank needs the batch's identities (pid)")
    with torch.no_grad():
        images, valid = image_mean.float(), None
        if queue is not None:
            images = torch.cat([F.normalize(images, dim=-1), queue.mean])
            valid = torch.cat([queue.filled.new_ones(len(image_mean)), queue.filled])
        if target == "own_rank":
            pids = pid if queue is None else torch.cat([pid.to(queue.pid), queue.pid])
            if valid is not None:  # remembered images of no known person (pid −1) left out
                valid = valid & (pids >= 0)
            h = own_rank(text.mean, images, pid[:, None] == pids[None, :], valid)
        else:
            h = match_entropy(text.mean, images, temperature, valid)
        if queue is not None and remember:
            queue.push(image_mean, pid)
        y = h - h.mean()
        y = y / y.pow(2).mean().sqrt().clamp_min(1e-12)
    log_sigma = text.logvar.float().mul(0.5).exp().mean(-1).log()
    x = log_sigma - log_sigma.mean()
    spread = (x.pow(2).mean() + floor ** 2).sqrt()
    return 1 - (x * y).mean() / spread
