"""A Gaussian embedding: a mean and a log-variance over an encoder feature, reparameterised
samples, and the KL regulariser to N(0, I) (PCME / PCME++ / DistributionNet style).

Following ``docs/methods.md`` §2 (our choice): the mean is the feature itself by
default (so inference, which uses the mean, is unchanged and costs nothing extra) and the
log-variance comes from a linear layer; log σ² is predicted for stability and clamped so
that bf16 training cannot overflow ``exp``.
"""

from __future__ import annotations

import torch
from torch import nn

from .rng import generator_kwargs


class GaussianEmbedding(nn.Module):
    def __init__(self, dim: int, learned_mean: bool = False, init_logvar: float = -4.0,
                 logvar_range: tuple[float, float] = (-12.0, 6.0)) -> None:
        super().__init__()
        self.mean = nn.Linear(dim, dim) if learned_mean else nn.Identity()
        self.logvar = nn.Linear(dim, dim)
        nn.init.normal_(self.logvar.weight, std=dim ** -0.5 * 0.1)
        nn.init.constant_(self.logvar.bias, init_logvar)  # start nearly deterministic
        self.logvar_range = logvar_range

    @property
    def mean_projection(self) -> nn.Module:
        """Feature -> mean, as inference ranks on it (float32, like ``forward``)."""
        return _Float32(self.mean)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, D] -> (mean [B, D], log-variance [B, D]), both float32."""
        x = x.float()
        return self.mean(x), self.logvar(x).clamp(*self.logvar_range)


def sample(mean: torch.Tensor, logvar: torch.Tensor, num_samples: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterised samples [S, B, D]: mean + exp(logvar / 2) * eps, eps ~ N(0, I)."""
    eps = torch.randn((num_samples, *mean.shape), device=mean.device, dtype=mean.dtype,
                      **generator_kwargs(generator))
    return mean + torch.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(0, I)) averaged over elements, as PCME++ computes it:
    -½ · mean(1 + log σ² − mean² − σ²)."""
    return -0.5 * torch.mean(1 + logvar - mean.pow(2) - logvar.exp())


class _Float32(nn.Module):
    """Runs a module on the float32 copy of its input (the Gaussian's own convention)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float())
