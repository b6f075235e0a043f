"""PCME++'s probabilistic match between two sets of Gaussians (Chun, ICLR 2024), shared by
UCFA's DCL and CRUE's UGM: P(match) = sigmoid(−a·d + b), d PCME++'s closed-form sampled
distance E‖z_t − z_i‖² (or the squared 2-Wasserstein distance) between Gaussians around
l2-normalised means, a and b learnable, trained with binary cross-entropy against "same
person" over every pair of the batch.

Our choice where PCME++ is silent (``init_shift: auto``, the default): b starts where the
first training batch's mean P(match) equals its share of matching pairs. PCME++'s b = 5 is
balanced for fine-tuning CLIP, whose features already match; from random features every
pair sits at d ≈ 2 + Σσ², P(match) starts far below the share of true pairs, and the first
steps then shrink every σ towards zero, after which σ gets no gradient (∂d/∂log σ² = σ²)
and stays meaningless. Set once, before the first optimiser step, from the batch gathered
across processes (the same b everywhere), and saved with the checkpoint (a resumed run
keeps it).

A cross-batch memory (``memory_size`` > 0, the heads' ``match_memory``; ours, after XBM, CVPR 2020):
the Gaussians of the last ``memory_size`` training pairs, detached, join the batch as extra
columns, captions against remembered images and images against remembered captions. Why:
σ grows for a caption whose false matches are close, and the images that make a caption
vague are those of the few people it also fits (on SynthPedes, a near-twin whose one
distinguishing attribute it omits). In a batch of 64 of ~2,500 training images such an image
is rarely present, so σ hardly ever meets the reason to grow; among a few thousand
remembered ones it usually does. The queue is gathered from every process (every process
holds the same), kept in the checkpoint, and empty slots (pid −100) are masked out.

The estimate (``estimate``; ours to switch, PCME's and PCME++'s to choose from):
``closed``, PCME++'s, puts the expected distance inside the sigmoid,
sigmoid(−a·E‖z_t − z_i‖² + b); ``sampled``, PCME's (Chun et al., CVPR 2021), averages the
sigmoid over J×J sample pairs, P(match) = mean_{s,s'} sigmoid(−a‖z_t^s − z_i^{s'}‖² + b),
z = μ̂ + σε around the l2-normalised mean (so the distances average to the closed form's d).
Why it matters for σ: in the closed form σ only ever adds to d, so it lowers P(match) with
every image at once and σ grows only where a caption's false matches outweigh its own
miss. Averaging the sigmoid instead rewards spread wherever the mean cannot fit a pair: a
true pair too far apart (or a false one too close) gains from the samples that land on the
other side, while a pair the mean already fits loses from every sample that strays. That is
the "one-to-many" case UCFA names: a caption that fits several people cannot sit at each
of them, and its σ could say how far it spreads instead (on brief captions it moved σ
little: docs/results.md, "σ left to the terms that sample"). At inference the samples come
from a fixed seed, so a probability and its order are the same on every call.

``trains_sigma: false`` (ours) makes the match read σ without training it. Why: in the
closed form σ_t enters caption t's every logit as the same −a·Σσ_t², a per-caption offset,
whose gradient is a·(Σ_other P(match) − (1 − P(own image))). In a batch of 64 the few other
people a caption fits are rarely present, so the miss on its own image dominates, and σ
falls fastest for the captions furthest from their own image, the brief and vague ones:
σ then follows the caption's length, the opposite of what it should say (docs/results.md).
This term's gradient on σ is also about 60 times the other terms' (``python -m
tbps.analysis.sigma_signal``). Left to the terms that sample (UCFA's point contrast, which
its abstract says "optimizes the learning of distributions", an ID loss averaged over
samples, CRUE's UGM), σ is what they make of it, and the match still reads it. Its level
then drifts, and with it every distance; ``refit_shift`` (ours) sets b before every training
step where the batch's mean P(match) is its share of true pairs (detached; solved exactly,
BCE's own optimum for b given a, where ``init_shift: auto`` takes the first-order start
once), so the match stays calibrated whatever σ's level, and keeps the last b for
inference.

``mls_weight`` > 0 (ours, after PFE, Shi & Jain, ICCV 2019) gives σ an objective of its
own: the mutual likelihood score of the same person's pairs, means held fixed, which sets
σ_t² + σ_i² to the spread of a caption's matches around it in every dimension. Why: the
closed form cannot tell σ from distance. A caption's σ and its mean's distance to its
images add up to one per-caption offset, calibrated BCE fixes only the sum, and the means,
trained by every other term, take it: on brief captions the distance of a caption's mean to
its own images follows vagueness (partial ρ 0.14–0.23 on the recipes' checkpoints) while σ
does not. PFE's term asks σ for that spread directly; with ``trains_sigma: false`` and
``refit_shift`` the match then reads σ, stays calibrated, and no longer pulls it.
``mls_pairs: soft`` (ours) takes "the images a caption fits" as PCME++ does: its own
person's, and each other image with the match's own P(match) (detached), so that σ is the
spread of every match the model believes in, the other people a vague caption also fits
included, not only of its labelled ones.

``entropy_weight`` > 0 (ours) orders the captions' σ like the entropy of their softmax over
the batch's images, the "one-to-many" count itself (``components.match_entropy``): without
level or scale, so it adds to whatever else trains σ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..types import Gaussian
from .match_entropy import ImageQueue, entropy_order_loss
from .gaussian import LOGVAR_MAX, csd_distance, mutual_likelihood_loss, sample, w2_distance
from .momentum import EMPTY
from .pair_weights import weighted_mean

DISTANCES = {"w2": w2_distance, "csd": csd_distance}


def distribution_distance(mean_v: torch.Tensor, logvar_v: torch.Tensor, mean_t: torch.Tensor,
                          logvar_t: torch.Tensor, distance: str = "csd") -> torch.Tensor:
    """[B_v, B_t] distances between image and caption Gaussians, means l2-normalised."""
    return DISTANCES[distance](F.normalize(mean_v, dim=-1), logvar_v,
                               F.normalize(mean_t, dim=-1), logvar_t)


def pcme_matching_loss(logits: torch.Tensor, pid_rows: torch.Tensor,
                       pid_cols: torch.Tensor, row_weights: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """PCME++'s matching loss: binary cross-entropy of sigmoid(logits) [R, C] against "same
    identity", mean over all pairs (rows weighted by ``row_weights``), ×2 (its code's i2t +
    t2i, which are the same sum). ``logits`` are logit(P(match)), whatever the estimate."""
    matched = (pid_rows[:, None] == pid_cols[None, :]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, matched, reduction="none")
    return 2 * weighted_mean(bce.mean(1), row_weights)


def sampled_match_logits(text_samples: torch.Tensor, image_samples: torch.Tensor,
                         scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """logit of PCME's Monte-Carlo P(match) [T, I]: samples [J, T, D] and [J, I, D];
    P = mean over the J×J sample pairs of sigmoid(−a‖z_t − z_i‖² + b), computed in log space
    (log P − log(1 − P), each a log-mean-exp of log-sigmoids) so that neither end rounds to
    0 or 1."""
    t = text_samples.float()
    i = image_samples.float()
    d = (t.pow(2).sum(-1)[:, None, :, None] + i.pow(2).sum(-1)[None, :, None, :]
         - 2 * torch.einsum("std,uid->suti", t, i)).clamp_min(0)  # [J, J, T, I]
    inner = (-scale * d + shift).flatten(0, 1)                                      # [J², T, I]
    return torch.logsumexp(F.logsigmoid(inner), 0) - torch.logsumexp(F.logsigmoid(-inner), 0)


def memory_matching_loss(batch_logits: torch.Tensor, memory_logits: torch.Tensor,
                         pid_rows: torch.Tensor, pid_cols: torch.Tensor,
                         pid_memory: torch.Tensor, row_weights: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """PCME++'s binary cross-entropy per row over the batch's columns [R, C] and the memory's
    [R, M] together, empty memory slots (pid −100) left out; the rows' (weighted) mean."""
    logits = torch.cat([batch_logits, memory_logits], 1)
    cols = torch.cat([pid_cols, pid_memory])
    matched = (pid_rows[:, None] == cols[None, :]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, matched, reduction="none")
    used = (cols != EMPTY).to(logits.dtype)
    return weighted_mean((bce * used).sum(1) / used.sum(), row_weights)


def check_match_estimate(head: str, estimate: str, rank_by: str, distance: str = "csd") -> None:
    """The sampled estimate (PCME's) needs csd's squared distance, and its P(match) is not
    the closed form's order, which ``rank_by: distribution`` ranks by."""
    if estimate != "sampled":
        return
    if distance != "csd":
        raise ConfigError(f"heads.{head}.match_estimate=sampled averages squared distances "
                          f"between samples, whose mean is csd: set heads.{head}.distance=csd")
    if rank_by == "distribution":
        raise ConfigError(f"heads.{head}.rank_by=distribution ranks by the closed form's "
                          "expected distance, which is not the sampled P(match)'s order: "
                          f"set heads.{head}.rank_by=mean or heads.{head}.match_estimate=closed")


class ProbabilisticMatch(nn.Module):
    def __init__(self, init_scale: float = 5.0, init_shift: float | str = "auto",
                 distance: str = "csd", memory_size: int = 0, dim: int = 0,
                 estimate: str = "closed", num_samples: int = 7,
                 trains_sigma: bool = True, refit_shift: bool = False,
                 mls_weight: float = 0.0, mls_pairs: str = "identity",
                 entropy_weight: float = 0.0, entropy_temperature: float = 0.1,
                 entropy_memory: int = 0, entropy_target: str = "entropy") -> None:
        super().__init__()
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.entropy_target = entropy_target
        self.entropy_queue = (ImageQueue(entropy_memory, dim) if entropy_memory > 0
                              and entropy_weight > 0 else None)
        self.trains_sigma, self.refit_shift = trains_sigma, refit_shift
        if mls_pairs not in ("identity", "soft"):
            raise ValueError(f"mls_pairs is 'identity' or 'soft', not {mls_pairs!r}")
        self.mls_weight, self.mls_pairs = mls_weight, mls_pairs
        if estimate not in ("closed", "sampled"):
            raise ValueError(f"estimate is 'closed' or 'sampled', not {estimate!r}")
        auto = init_shift == "auto"
        self.distance, self.estimate, self.num_samples = distance, estimate, num_samples
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))               # a
        self.shift = nn.Parameter(torch.tensor(0.0 if auto else float(init_shift)))  # b
        self.register_buffer("shift_pending", torch.tensor(auto))
        self._checked = False  # read the buffer once per process, outside compiled steps
        self.memory_size = memory_size
        if memory_size > 0:
            if dim < 1:
                raise ValueError("a memory needs the Gaussians' dimension (dim)")
            for side in ("text", "image"):
                self.register_buffer(f"memory_{side}_mean", torch.zeros(memory_size, dim))
                self.register_buffer(f"memory_{side}_logvar", torch.zeros(memory_size, dim))
            self.register_buffer("memory_pid", torch.full((memory_size,), EMPTY))
            self.register_buffer("memory_ptr", torch.zeros((), dtype=torch.long))

    def logits(self, text: Gaussian, image: Gaussian) -> torch.Tensor:
        """logit(P(match)) [T, I] of every caption with every image: −a·d + b in the closed
        form; in the sampled one, from fresh samples while training and from a fixed seed
        otherwise (the same probability on every call)."""
        if self.estimate == "sampled":
            generator = None
            if not self.training:
                generator = torch.Generator(device=text.mean.device).manual_seed(0)
            return sampled_match_logits(self._samples(text, generator),
                                        self._samples(image, generator),
                                        self.scale, self.shift)
        d = distribution_distance(image.mean, image.logvar, text.mean, text.logvar,
                                  self.distance)
        return -self.scale * d.t() + self.shift

    def _samples(self, g: Gaussian, generator: torch.Generator | None) -> torch.Tensor:
        """[J, B, D] samples around the l2-normalised means (not normalised again: their
        squared distances average to csd)."""
        return sample(F.normalize(g.mean.float(), dim=-1), g.logvar.float(),
                      self.num_samples, generator)

    def probability(self, text: Gaussian, image: Gaussian) -> torch.Tensor:
        return torch.sigmoid(self.logits(text, image))

    def loss(self, text: Gaussian, image: Gaussian, pid: torch.Tensor,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the sum of ``loss_terms``, the logits [B, B])."""
        terms, logits = self.loss_terms(text, image, pid, weights)
        return sum(terms.values()), logits

    def loss_terms(self, text: Gaussian, image: Gaussian, pid: torch.Tensor,
                   weights: torch.Tensor | None = None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({"match": PCME++'s matching loss over every pair of a batch whose i-th caption
        and image have identity ``pid[i]``, caption rows weighted by ``weights``; "mls":
        ``mls_weight`` × PFE's σ term over the same person's pairs (``mls_pairs: soft``: and
        every other pair, weighted by its detached P(match)); "order": ``entropy_weight`` ×
        the term that orders captions' σ like their match entropy or own rank
        (``components.match_entropy``); the last two only when on}, the logits [B, B]).
        Apart, so that the heads log each and ``analysis.sigma_signal`` reads what each
        teaches σ."""
        own = (text, image)  # PFE's term trains σ even where the match only reads it
        if not self.trains_sigma:
            # the match reads σ but leaves its learning to the other terms
            text = Gaussian(text.mean, text.logvar.detach())
            image = Gaussian(image.mean, image.logvar.detach())
        if self.training and self.refit_shift:
            self._refit_shift(text, image, pid)  # every step: b follows σ's level
        elif self.training and not self._checked:
            self._checked = True
            if bool(self.shift_pending):
                self._start_shift(text, image, pid)
        logits = self.logits(text, image)
        terms = {}
        if self.memory_size == 0:
            terms["match"] = pcme_matching_loss(logits, pid, pid, weights)
        else:
            remembered_text = Gaussian(self.memory_text_mean, self.memory_text_logvar)
            remembered_image = Gaussian(self.memory_image_mean, self.memory_image_logvar)
            terms["match"] = (
                memory_matching_loss(logits, self.logits(text, remembered_image), pid, pid,
                                     self.memory_pid, weights)
                + memory_matching_loss(logits.t(), self.logits(remembered_text, image).t(),
                                       pid, pid, self.memory_pid, weights))
        if self.mls_weight > 0:
            terms["mls"] = self._mls(*own, pid, logits)
        if self.entropy_weight > 0:
            terms["order"] = self.entropy_weight * entropy_order_loss(
                own[0], own[1].mean, self.entropy_temperature, self.entropy_queue,
                remember=self.training, target=self.entropy_target, pid=pid)
        if self.training and self.memory_size > 0:
            self._remember(text, image, pid)
        return terms, logits

    def _mls(self, text: Gaussian, image: Gaussian, pid: torch.Tensor,
             logits: torch.Tensor) -> torch.Tensor:
        """``mls_weight`` × PFE's term over the pairs a caption is taken to fit: its own
        person's images, and with ``mls_pairs: soft`` every other image too, weighted by the
        pair's P(match) (detached: the match's own belief that the caption also fits it)."""
        pairs = (pid[:, None] == pid[None, :]).float()
        if self.mls_pairs == "soft":
            pairs = pairs + (1 - pairs) * torch.sigmoid(logits.detach().float())
        return self.mls_weight * mutual_likelihood_loss(text.mean, text.logvar, image.mean,
                                                        image.logvar, pairs)

    @torch.no_grad()
    def _remember(self, text: Gaussian, image: Gaussian, pid: torch.Tensor) -> None:
        """Writes the (gathered) batch's Gaussians at the pointer, wrapping around."""
        n = min(len(pid), self.memory_size)
        idx = (self.memory_ptr + torch.arange(n, device=pid.device)) % self.memory_size
        for side, g in (("text", text), ("image", image)):
            getattr(self, f"memory_{side}_mean")[idx] = F.normalize(
                g.mean[-n:].detach().float(), dim=-1)
            getattr(self, f"memory_{side}_logvar")[idx] = g.logvar[-n:].detach().float()
        self.memory_pid[idx] = pid[-n:]
        self.memory_ptr.copy_((self.memory_ptr + n) % self.memory_size)

    def _share_and_distances(self, text: Gaussian, image: Gaussian, pid: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's share of true pairs (kept off 0 and 1) and its distances [I, T]."""
        share = (pid[:, None] == pid[None, :]).float().mean().clamp(1e-4, 1 - 1e-4)
        return share, distribution_distance(image.mean, image.logvar, text.mean, text.logvar,
                                            self.distance).float()

    @torch.no_grad()
    def _start_shift(self, text: Gaussian, image: Gaussian, pid: torch.Tensor) -> None:
        share, d = self._share_and_distances(text, image, pid)
        # b with mean over pairs of (−a·d + b) = logit(share): a first-order start, then b learns
        self.shift.fill_(float(math.log(share / (1 - share)) + self.scale * d.mean()))
        self.shift_pending.fill_(False)

    @torch.no_grad()
    def _refit_shift(self, text: Gaussian, image: Gaussian, pid: torch.Tensor) -> None:
        """b where the batch's mean P(match) is exactly its share of true pairs, BCE's own
        optimum for b given a (the first-order start above overshoots once the logits
        spread: the mean of a sigmoid is not the sigmoid of the mean). Every training step,
        so tensors only: no Python number, no branch, and the compiled step stays one graph."""
        share, d = self._share_and_distances(text, image, pid)
        scale = self.scale.detach()
        start = torch.logit(share) + scale * d.mean()
        self.shift.copy_(fit_shift(-scale * d, share, start))
        self.shift_pending.fill_(False)


def fit_shift(logits: torch.Tensor, share: torch.Tensor, start: torch.Tensor,
              steps: int = 30) -> torch.Tensor:
    """b with mean(sigmoid(logits + b)) = ``share``: Newton's method from ``start``, each step
    bounded to ±4 (the mean of a sigmoid is increasing in b, so this converges); a fixed
    number of steps, no data-dependent branch."""
    b = start.clone()
    for _ in range(steps):
        p = torch.sigmoid(logits + b)
        step = (p.mean() - share) / (p * (1 - p)).mean().clamp_min(1e-12)
        b = b - step.clamp(-4.0, 4.0)
    return b


def expected_distance_embedding(modality: str, gaussian: Gaussian) -> torch.Tensor:
    """An embedding [B, D + 2] whose cosine ranks a gallery by PCME++'s expected distance
    E‖z_t − z_i‖² = 2 − 2·cos(μ_t, μ_i) + v_t + v_i (v = Σσ², means l2-normalised), hence by
    P(match) = sigmoid(−a·d + b), exactly, through the cosine ranking every tool already uses.

    Caption: [μ̂_t, 1, 0]. Image: [μ̂_i, −v_i/2, √(R² − 1 − v_i²/4)], every image of norm R.
    Their cosine is (cos − v_i/2) / (√2·R): for one caption, a fixed positive multiple of
    −d/2 plus a constant, so the order is the expected distance's whatever the gallery. R is
    set by the largest v the log-variance clamp allows (D·e^LOGVAR_MAX), so it holds for
    every image; the scores are small (~1e-5) and only their order means anything: read
    P(match) for a probability. The first D entries alone rank by the means
    (``retrieval_parts``)."""
    mean = F.normalize(gaussian.mean.float(), dim=-1)
    d = mean.shape[-1]
    if modality == "text":
        return torch.cat([mean, mean.new_ones(len(mean), 1), mean.new_zeros(len(mean), 1)], 1)
    v = gaussian.logvar.double().exp().sum(-1, keepdim=True)
    bound = d * math.exp(LOGVAR_MAX)
    rest = (bound ** 2 / 4 - v.pow(2) / 4).clamp_min(0).sqrt()  # float64: R² ≫ 1 + v²/4
    return torch.cat([mean, (-v / 2).float(), rest.float()], 1)
