"""Down-weighting the training pairs a model's own match probability doubts (issue 25;
UGM's stated purpose: "handles weak and noise-matched image–text pairs").

A head with a probabilistic match reports each training pair's P(match)
(``AlignmentHead.pair_confidence``); with ``pair_weights`` set, the module turns it into a
weight per pair, w_k = min(1, P_kk / (ratio · median over the batch of P)), detached, from
epoch ``from_epoch`` on (before it every weight is 1; ``ramp_epochs`` fades them in), and
hands it to the heads in ``batch["pair_weight"]``. A pair's own terms are then weighted
means with w (its identity loss on both sides, its rows in CMPM, SDM, IRE and UGM in both
directions, its caption's row of the probabilistic matching, its caption's reconstruction,
its samples as anchors of the point contrast). The median is over the batch gathered from
every process, so every process weights alike. With every weight 1 the losses are exactly
the unweighted ones.

Why relative to the batch median: P(match) is calibrated over all pairs, where true pairs
are rare, so a clean training pair's P(match) is often 0.1–0.4 and changes through
training; what separates a swapped caption is that its P(match) is far below its batch's
(on ``ucfa_synthetic`` after 6 epochs at 30% noise: median 0.14 clean, 0.005 swapped).
"""

from __future__ import annotations

import torch

from ..distributed import gather_with_grad


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of per-pair values [..., B] with per-pair weights [B] (broadcast over leading
    dimensions), or the plain mean without weights."""
    if weights is None:
        return values.mean()
    w = weights.to(values.dtype).expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1e-12)


@torch.no_grad()
def confidence_weights(confidence: torch.Tensor, progress: torch.Tensor | None,
                       from_epoch: float, ratio: float, ramp_epochs: float = 0.0
                       ) -> torch.Tensor:
    """Weights [B] of the local pairs from their P(match) [B] (see the module docstring).
    With ``ramp_epochs`` r > 0 the weights fade in: 1 − λ·(1 − w), λ rising linearly from 0
    at ``from_epoch`` to 1 at ``from_epoch`` + r, so the loss does not change all at once."""
    everyone = gather_with_grad(confidence.float())
    w = (confidence.float() / (ratio * everyone.median()).clamp_min(1e-12)).clamp(max=1.0)
    if progress is None:
        return w
    # no Python branch on a tensor: the training step still compiles
    if ramp_epochs > 0:
        strength = ((progress - from_epoch) / ramp_epochs).clamp(0.0, 1.0).to(w.dtype)
    else:
        strength = (progress >= from_epoch).to(w.dtype)
    return 1.0 - strength * (1.0 - w)
