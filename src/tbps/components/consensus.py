"""RDE's confident consensus division (CCD; Qin et al., CVPR 2024, ``processor/processor.py``).

Each view's per-pair losses are min-max normalised to [0, 1]; a two-component Gaussian
mixture (scikit-learn's, as the code) is fitted to them, and a pair is clean in that view
when the posterior of the low-mean component exceeds 0.5 (our ``threshold`` may ask for
more where the mixture is well separated; if every pair would be clean,
the 1% with the lowest posterior are not: NCR's ``split_prob``). A pair both views call
clean is clean, one neither calls clean is noisy, and a disagreement is drawn at random
(0 or 1 with equal chance).

The code leaves the mixture's k-means initialisation unseeded; here ``seed`` fixes it, so
a division can be made again exactly (and every process makes the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


# Ashman's D above which two Gaussians count as cleanly apart (the usual bound)
SEPARATED = 2.0


@dataclass(frozen=True)
class MixtureFit:
    """The code's two settings: 10 iterations at tol 1e-2 (reg 5e-4) by default, 100 at 1e-4
    (reg 1e-6) "for a better fit" when the noise rate exceeds 0.4 or on RSTPReid."""

    max_iter: int = 10
    tol: float = 1e-2
    reg_covar: float = 5e-4


def normalised(losses: np.ndarray) -> np.ndarray:
    """(x − min) / (max − min); all zeros when every loss is the same."""
    losses = np.asarray(losses, dtype=np.float64)
    span = losses.max() - losses.min()
    return (losses - losses.min()) / span if span > 0 else np.zeros_like(losses)


def mixture(losses: np.ndarray, fit: MixtureFit = MixtureFit(), seed: int = 0
            ) -> tuple[np.ndarray, float]:
    """A two-component mixture fitted to the normalised ``losses`` [N] -> (the posterior of
    its low-mean component [N], its separation: Ashman's D = √2·|μ₁ − μ₂| / √(σ₁² + σ₂²),
    above 2 when the two components are cleanly apart)."""
    from sklearn.mixture import GaussianMixture

    x = normalised(losses)[:, None]
    if np.ptp(x) == 0:  # nothing to separate: every pair looks the same
        return np.ones(len(x)), 0.0
    gmm = GaussianMixture(n_components=2, max_iter=fit.max_iter, tol=fit.tol,
                          reg_covar=fit.reg_covar, random_state=seed)
    gmm.fit(x)
    mu, var = gmm.means_.ravel(), gmm.covariances_.ravel()
    separation = float(np.sqrt(2) * abs(mu[0] - mu[1]) / np.sqrt(var[0] + var[1]))
    return gmm.predict_proba(x)[:, int(mu.argmin())], separation


def clean_probability(losses: np.ndarray, fit: MixtureFit = MixtureFit(), seed: int = 0
                      ) -> np.ndarray:
    """Posterior of the low-mean component of a two-component mixture fitted to the
    normalised ``losses`` [N] -> [N]."""
    return mixture(losses, fit, seed)[0]


def split_prob(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """prob > threshold as 0/1; if every pair passes, the threshold becomes the 1st
    percentile's value, so that about 1% are held out."""
    if prob.min() > threshold:
        threshold = np.sort(prob)[len(prob) // 100]
    return (prob > threshold).astype(np.int64)


def consensus(clean_a: np.ndarray, clean_b: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """0/1 labels from the two views' 0/1 predictions; ``draws`` holds one 0/1 per
    disagreement, in pair order (the code: ``torch.randint(0, 2, size=(count,))``)."""
    votes = clean_a + clean_b
    split = votes == 1
    if int(split.sum()) != len(draws):
        raise ValueError(f"{int(split.sum())} disagreements but {len(draws)} draws")
    votes = votes.copy()
    votes[split] += draws
    return (votes > 1).astype(np.int64)


def division_quality(clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
    """Precision and recall of "clean" (0/1 labels [N]) against the data set's noise flags
    [N] (SynthPedes' swapped captions; all False on clean data)."""
    clean, truly = clean.cpu().bool(), ~noisy.cpu().bool()
    right = (clean & truly).sum()
    return {"clean_precision": float(right / clean.sum().clamp(min=1)),
            "clean_recall": float(right / truly.sum().clamp(min=1))}


def averaged_losses(history: torch.Tensor | None, losses: torch.Tensor, momentum: float
                    ) -> torch.Tensor:
    """Our option (not the code's): the per-pair losses a division reads, averaged over
    divisions, h ← m·h + (1 − m)·normalised(losses), h starting at the first division's
    normalised losses; m = 0 gives this epoch's normalised losses, which divide exactly as
    the raw ones (the mixture reads them min-max normalised). Why: a clean pair's loss moves
    with the augmentation its pass drew (an erased patch or a masked word can remove the one
    attribute that tells near-twins apart), a swapped pair's stays high every epoch; the
    average keeps what persists."""
    now = torch.from_numpy(normalised(losses.double().cpu().numpy()))
    return now if history is None else momentum * history.double().cpu() + (1 - momentum) * now


def consensus_division(loss_a: torch.Tensor, loss_b: torch.Tensor, fit: MixtureFit,
                       seed: int, threshold: float = 0.5, min_separation: float = 0.0
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pair losses of the two views [N] -> (0/1 clean labels [N], what each view and
    the consensus said: shares of clean pairs, each mixture's separation). A view calls a
    pair clean when its posterior of the low-mean component exceeds ``threshold`` if that
    view's mixture is separated by at least ``min_separation`` (Ashman's D), else 0.5 (the
    code: 0.5 always)."""
    views, said = [], {}
    for name, losses, s in (("a", loss_a, seed), ("b", loss_b, seed + 1)):
        prob, separation = mixture(losses.double().cpu().numpy(), fit, s)
        views.append(split_prob(prob, threshold if separation >= min_separation else 0.5))
        said[f"separation_{name}"] = separation
    pa, pb = views
    count = int(((pa + pb) == 1).sum())
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, 2, (count,), generator=gen).numpy()
    labels = consensus(pa, pb, draws)
    return torch.from_numpy(labels), {"clean_share_a": float(pa.mean()),
                                      "clean_share_b": float(pb.mean()),
                                      "disagreements": float(count / max(1, len(pa))),
                                      "clean_share": float(labels.mean()), **said}
