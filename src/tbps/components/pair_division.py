"""A division of the training pairs by the model's own match probability, remade before
every epoch (``pair_weights: {by: division}``; issue 25: UGM's stated purpose, "handles
weak and noise-matched image–text pairs", with RDE's way of acting on it).

Before each epoch from ``from_epoch`` on, the forward-only pass over the training pairs
(``tbps.model.preparation``) gives every pair its P(match) from the first head with a
probabilistic match (``AlignmentHead.pair_confidence``: CRUE's UGM, UCFA's DCL). A
two-component Gaussian mixture is fitted to −log P(match), min-max normalised, as RDE's
consensus division fits one to each view's loss (``components.consensus``); a pair is clean
when the posterior of the low-loss component exceeds 0.5 (NCR's ``split_prob``, as RDE).
The pair's weight in training is then 1 if clean, 0 if not (``batch["pair_weight"]``: every
head's per-pair terms; a pair judged noisy still serves as a negative for the others).

Why −log P(match) and one view: P(match) is what the method learns to say about a pair,
and on ``crue_synthetic`` at 30% swapped captions its mixture separates them with
precision 0.94 and recall 0.96 of "clean" (RDE's consensus of two TAL views on the same data:
0.88 / 0.93). Why the separation gate (``min_separation``, Ashman's D of the two
components): a model trained on clean captions also has hard pairs, and a mixture fitted
to them splits off its tail (about 10% of the pairs at D ≈ 1.9 on clean data, against D ≈ 3.3
with swapped captions); below the gate the division calls every pair clean, so that data
without noise is not thinned. Why the share floor (``min_clean_share``, 0.5): early in
training the mixture finds another split, the pairs the model has learned against those it
has not, and calls the smaller, learned group clean (15–45% of the pairs after one or two
epochs of ``crue_synthetic``, clean captions or not); the methods of this field assume
that most pairs are clean (RDE's highest noise rate is 50%), so a division that keeps fewer
than half divides nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..distributed import gather_with_grad
from .consensus import MixtureFit, division_quality, mixture, split_prob


def divide(neg_log_match: np.ndarray, fit: MixtureFit, seed: int, min_separation: float,
           min_clean_share: float = 0.5) -> tuple[np.ndarray, dict[str, float]]:
    """−log P(match) per pair [N] -> (0/1 clean labels [N], what the mixture said: its
    separation D, the share it would call clean, whether the division stands); every pair
    is clean when D < ``min_separation`` or when fewer than ``min_clean_share`` of the pairs
    would be."""
    prob, separation = mixture(neg_log_match, fit, seed)
    labels = split_prob(prob)
    stands = separation >= min_separation and labels.mean() >= min_clean_share
    said = {"separation": separation, "mixture_clean_share": float(labels.mean()),
            "divided": float(stands)}
    return (labels if stands else np.ones(len(prob), dtype=np.int64)), said


class PairDivision(nn.Module):
    """The division's state (saved with the checkpoint, so a resumed epoch keeps it) and the
    preparation interface the module's pass drives, as a head's (``AlignmentHead.prepare``)."""

    def __init__(self, num_pairs: int, from_epoch: float, min_separation: float = 0.0,
                 min_clean_share: float = 0.5, fit: MixtureFit = MixtureFit()) -> None:
        super().__init__()
        self.from_epoch, self.min_separation, self.fit = from_epoch, min_separation, fit
        self.min_clean_share = min_clean_share
        # 1 = clean, per training pair; every pair is clean before the first division
        self.register_buffer("clean", torch.ones(num_pairs))
        self.register_buffer("divided_epoch", torch.tensor(-1))

    def prepares_for(self, epoch: int) -> bool:
        return epoch >= self.from_epoch and int(self.divided_epoch) != epoch

    @torch.no_grad()
    def preparation_scores(self, confidence: torch.Tensor) -> dict[str, torch.Tensor]:
        """The local batch's P(match) [B] -> −log P(match) of the batch gathered from every
        process (the pass gathers the pairs' indices alike)."""
        everyone = gather_with_grad(confidence.float())
        return {"neg_log_match": -everyone.clamp_min(1e-12).log()}

    def prepare(self, scores: dict[str, torch.Tensor], noisy: torch.Tensor, epoch: int,
                seed: int) -> dict[str, float]:
        labels, said = divide(scores["neg_log_match"].double().cpu().numpy(), self.fit,
                              seed * 1000 + epoch, self.min_separation, self.min_clean_share)
        self.clean.copy_(torch.from_numpy(labels).to(self.clean))
        self.divided_epoch.fill_(epoch)
        said.update(clean_share=float(self.clean.mean()),
                    **division_quality(self.clean, noisy))
        return {f"pair_division_{k}": v for k, v in said.items()}

    def weights(self, index: torch.Tensor) -> torch.Tensor:
        """The local pairs' weights [B] from their indices into the training pairs."""
        return self.clean[index]
