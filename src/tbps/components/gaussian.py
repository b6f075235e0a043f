"""A Gaussian embedding: a mean and a log-variance over an encoder feature, reparameterised
samples, the KL regulariser to N(0, I) (PCME / PCME++ / DistributionNet style), and the
distances between two diagonal Gaussians that distribution-level contrast uses.

Following ``docs/methods.md`` §2 (our choice): the mean is the feature itself by
default (so inference, which uses the mean, is unchanged and costs nothing extra) and the
log-variance comes from a linear layer; log σ² is predicted for stability and clamped so
that bf16 training cannot overflow ``exp``. With ``variance_from="tokens"`` (UCFA, §4) the
log-variance reads the whole token sequence: attention pooling (one learned query) over
the tokens, plus the global feature as a residual, then the linear layer; with
``"global_and_tokens"`` (ours) the pooled tokens and the global feature sit side by side
(concatenated), each with its own weights, instead of summed into one. With ``"words"`` and
``"global_and_words"`` (ours, text only) it reads the caption's words as the text tower takes
them in, before any layer mixes them (``DualEncoder.encode_text_words``), averaged over the
caption: a bag of words, alone or beside the global feature. With
``sigma_detached`` (ours) the variance reads the features detached: what trains σ reaches the
σ layers only, never the encoder (σ still shapes the sampled losses the means learn from).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .rng import generator_kwargs


LOGVAR_MAX = 6.0  # log σ² is clamped below this (bf16 cannot overflow exp); ranking bounds on it
VarianceFrom = Literal["global", "tokens", "global_and_tokens", "words", "global_and_words"]
READS_WORDS = ("words", "global_and_words")


class AttentionPool(nn.Module):
    """One learned query attends over a token sequence: [B, N, D] (+ mask) -> [B, D]."""

    def __init__(self, dim: int, num_heads: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(tokens)
        q = self.query.expand(x.shape[0], -1, -1).to(x.dtype)
        pad = None if mask is None else ~mask  # key_padding_mask: True where ignored
        return self.attn(q, x, x, key_padding_mask=pad, need_weights=False)[0][:, 0]


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each sequence's real tokens: [B, N, D], mask [B, N] -> [B, D]."""
    weight = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weight).sum(1) / weight.sum(1).clamp_min(1)


class GaussianEmbedding(nn.Module):
    def __init__(self, dim: int, learned_mean: bool = False, init_logvar: float = -4.0,
                 logvar_range: tuple[float, float] = (-12.0, LOGVAR_MAX),
                 variance_from: VarianceFrom = "global",
                 sigma_detached: bool = False, sigma_hidden: int = 0) -> None:
        super().__init__()
        self.sigma_detached = sigma_detached
        self.mean = nn.Linear(dim, dim) if learned_mean else nn.Identity()
        # sigma_hidden > 0: one hidden layer before log σ² (PFE's uncertainty module is two
        # layers): how vague a caption is need not be linear in its feature
        # global_and_tokens: the pooled tokens beside the global feature, not added to it, so
        # that σ weighs what the tokens say (which attributes a caption states) apart from
        # what the retrieval feature keeps
        # words: the mean of the caption's input word embeddings, what a bag of words knows; a
        # linear read of it carries vagueness to new identities where the contextual features
        # keep less of it (docs/results.md, "σ from the caption's words")
        self.side_by_side = variance_from in ("global_and_tokens", "global_and_words")
        self.reads_global = variance_from != "words"
        width = 2 * dim if self.side_by_side else dim
        self.hidden = (nn.Sequential(nn.Linear(width, sigma_hidden), nn.GELU())
                       if sigma_hidden else nn.Identity())
        self.logvar = nn.Linear(sigma_hidden or width, dim)
        nn.init.normal_(self.logvar.weight, std=(sigma_hidden or width) ** -0.5 * 0.1)
        nn.init.constant_(self.logvar.bias, init_logvar)  # start nearly deterministic
        self.logvar_range = logvar_range
        self.pool = AttentionPool(dim) if variance_from in ("tokens", "global_and_tokens") else None
        self.words = variance_from in READS_WORDS

    @property
    def reads_sequence(self) -> bool:
        """Whether the variance reads a sequence (tokens or words) beside the feature."""
        return self.pool is not None or self.words

    @property
    def mean_projection(self) -> nn.Module:
        """Feature -> mean, as inference ranks on it (float32, like ``forward``)."""
        return _Float32(self.mean)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, D] -> (mean [B, D], log-variance [B, D]), both float32. With
        ``variance_from="tokens"`` or ``"global_and_tokens"``, ``tokens`` [B, N, D] (and
        ``mask`` [B, N], True at real tokens) feed the variance; with ``"words"`` or
        ``"global_and_words"``, ``tokens`` are the caption's input word embeddings."""
        x = x.float()
        # sigma_detached: σ's layers read the features without passing gradient back, so the
        # terms that train σ shape σ and never the encoder (the means keep their gradient)
        v = x.detach() if self.sigma_detached else x
        if self.reads_sequence:
            if tokens is None or (self.words and mask is None):
                raise ValueError("this Gaussian embedding reads its variance from the "
                                 + ("words: pass them and their mask" if self.words
                                    else "tokens: pass tokens"))
            tokens = tokens.detach() if self.sigma_detached else tokens
            pooled = (masked_mean(tokens.float(), mask) if self.words
                      else self.pool(tokens.float(), mask))
            if self.side_by_side:
                v = torch.cat([v, pooled], -1)
            else:
                v = v + pooled if self.reads_global else pooled
        return self.mean(x), self.logvar(self.hidden(v)).clamp(*self.logvar_range)


def on_sphere(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log σ² of the spread a sample μ + σε drawn around the raw feature has once
    l2-normalised: σ/‖μ‖ to first order, so log σ² − log ‖μ‖² (the norm detached: what reads
    this does not train the norm). σ alone can be cancelled by a growing feature norm."""
    return logvar - mean.detach().float().pow(2).sum(-1, keepdim=True).clamp_min(1e-12).log()


def sample(mean: torch.Tensor, logvar: torch.Tensor, num_samples: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterised samples [S, B, D]: mean + exp(logvar / 2) * eps, eps ~ N(0, I)."""
    eps = torch.randn((num_samples, *mean.shape), device=mean.device, dtype=mean.dtype,
                      **generator_kwargs(generator))
    return mean + torch.exp(0.5 * logvar) * eps


def w2_distance(mean_a: torch.Tensor, logvar_a: torch.Tensor, mean_b: torch.Tensor,
                logvar_b: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between every pair of diagonal Gaussians of a [A, D]
    and b [B, D]: ‖μ_a − μ_b‖² + ‖σ_a − σ_b‖² -> [A, B]."""
    sa, sb = torch.exp(0.5 * logvar_a), torch.exp(0.5 * logvar_b)
    return _sq_dist(mean_a, mean_b) + _sq_dist(sa, sb)


def csd_distance(mean_a: torch.Tensor, logvar_a: torch.Tensor, mean_b: torch.Tensor,
                 logvar_b: torch.Tensor) -> torch.Tensor:
    """PCME++'s closed-form sampled distance E‖z_a − z_b‖² for z ~ N(μ, σ²), every pair:
    ‖μ_a − μ_b‖² + Σ σ_a² + Σ σ_b² -> [A, B]."""
    va, vb = logvar_a.exp().sum(-1), logvar_b.exp().sum(-1)
    return _sq_dist(mean_a, mean_b) + va[:, None] + vb[None, :]


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖² for every pair, by expansion (no [A, B, D] tensor); clamped at 0
    against rounding."""
    return (a.pow(2).sum(-1)[:, None] + b.pow(2).sum(-1)[None, :] - 2 * a @ b.t()).clamp_min(0)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(0, I)) averaged over elements, as PCME++ computes it:
    -½ · mean(1 + log σ² − mean² − σ²)."""
    return -0.5 * torch.mean(1 + logvar - mean.pow(2) - logvar.exp())


def mutual_likelihood_loss(mean_a: torch.Tensor, logvar_a: torch.Tensor,
                           mean_b: torch.Tensor, logvar_b: torch.Tensor,
                           matched: torch.Tensor) -> torch.Tensor:
    """The negative mutual likelihood score of PFE (Shi & Jain, ICCV 2019) over the pairs
    ``matched`` [A, B] marks: ½·mean_d[(μ_a − μ_b)² / (σ_a² + σ_b²) + log(σ_a² + σ_b²)] per
    pair (PFE sums over d and adds ½·D·log 2π; the mean keeps the scale of the other losses),
    averaged over the matched pairs. The means are l2-normalised and held fixed (PFE trains σ
    with the embedding frozen): only σ learns, towards the spread of each item's matches
    around it, (σ_a² + σ_b²) → (μ_a − μ_b)² per dimension. Dense [A, B, D] with a masked
    mean: no data-dependent shape in a compiled step."""
    diff = (F.normalize(mean_a.detach().float(), dim=-1)[:, None]
            - F.normalize(mean_b.detach().float(), dim=-1)[None])
    var = logvar_a.float().exp()[:, None] + logvar_b.float().exp()[None]
    nll = 0.5 * (diff.pow(2) / var + var.log()).mean(-1)
    weight = matched.to(nll.dtype)
    return (nll * weight).sum() / weight.sum().clamp_min(1)


def variance_prior(logvar: torch.Tensor) -> torch.Tensor:
    """The variance part of KL(N(μ, σ²) ‖ N(0, I)), averaged over elements:
    ½ · mean(σ² − log σ² − 1). It pulls σ towards 1 without pulling the mean (the feature
    itself, which the KL's μ² term would shrink)."""
    return 0.5 * torch.mean(logvar.exp() - logvar - 1)


class _Float32(nn.Module):
    """Runs a module on the float32 copy of its input (the Gaussian's own convention)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float())
