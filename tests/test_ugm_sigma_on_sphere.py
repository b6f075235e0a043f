"""``heads.ugm.sigma_on_sphere``: with samples drawn around the raw feature, UGM shows its
match, its ranking and ``tbps uncertainty`` σ/‖μ‖, the spread its l2-normalised samples
actually have (checked by Monte Carlo), with the norm read but not trained by the match."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tbps.errors import ConfigError
from tbps.heads.base import HeadContext
from tbps.heads.ugm import UGMHead
from tbps.types import RetrievalInput

CTX = HeadContext(embed_dim=16, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                  special_ids=(0, 1))


def test_normalised_samples_spread_by_sigma_over_the_norm():
    """The first-order claim the switch rests on, by Monte Carlo: z = μ + σε, ẑ = z/‖z‖;
    across the directions orthogonal to μ, ẑ's standard deviation is σ/‖μ‖ (within 2%),
    whatever ‖μ‖ (while σ/‖μ‖ is small: at 0.15 over 16 dimensions it reads 13% low), so a raw σ alone says nothing until divided by the norm."""
    g = torch.Generator().manual_seed(0)
    for norm, sigma in ((4.0, 0.2), (12.0, 0.2), (2.0, 0.02)):
        mean = F.normalize(torch.randn(16, generator=g), dim=0) * norm
        z = F.normalize(mean + sigma * torch.randn(200_000, 16, generator=g), dim=-1)
        along = F.normalize(mean, dim=0)
        tangent = z - (z @ along)[:, None] * along  # the part off μ's direction
        spread = (tangent.pow(2).sum(-1).mean() / 15).sqrt()
        assert abs(float(spread) / (sigma / norm) - 1) < 0.02


def _head(**kw) -> UGMHead:
    return UGMHead(CTX, sample_around="raw", init_shift=1.0, **kw)


def test_the_gaussian_shown_is_sigma_over_the_norm_and_the_match_reads_it():
    torch.manual_seed(0)
    plain, sphere = _head(), _head(sigma_on_sphere=True)
    sphere.load_state_dict(plain.state_dict())
    feature = 3 * torch.randn(5, 16)
    side = RetrievalInput(tokens=None, global_feature=feature, attention=None)
    raw, shown = plain.distribution("text", side), sphere.distribution("text", side)
    assert torch.allclose(shown.mean, raw.mean)
    expected = raw.logvar - 2 * raw.mean.norm(dim=-1, keepdim=True).log()
    assert torch.allclose(shown.logvar, expected, atol=1e-5)
    assert torch.allclose(shown.sigma, (raw.logvar.mul(0.5).exp() / raw.mean.norm(
        dim=-1, keepdim=True)).mean(-1), rtol=1e-5)
    # a switch that changes nothing shown would leave the match's probability as it was
    image = RetrievalInput(tokens=None, global_feature=3 * torch.randn(4, 16), attention=None)
    p_plain = plain.match_probability(raw, plain.distribution("image", image))
    p_sphere = sphere.match_probability(shown, sphere.distribution("image", image))
    assert (p_plain - p_sphere).abs().max() > 1e-3


def test_the_shown_sigma_trains_sigma_and_leaves_the_norm_to_the_sampled_loss():
    torch.manual_seed(1)
    head = _head(sigma_on_sphere=True)
    mean = (3 * torch.randn(4, 16)).requires_grad_()
    logvar = torch.full((4, 16), -4.0, requires_grad=True)
    shown = head._shown(mean, logvar)
    shown.logvar.sum().backward()
    assert mean.grad is None or float(mean.grad.abs().sum()) == 0.0
    assert float(logvar.grad.abs().sum()) > 0


def test_around_the_normalised_mean_the_switch_is_refused():
    with pytest.raises(ConfigError, match="sample_around=raw"):
        UGMHead(CTX, sample_around="normalised", sigma_on_sphere=True)
