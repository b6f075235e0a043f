"""The prior on σ alone (``distributions.sigma_prior_weight``, ``heads.ugm.sigma_prior_weight``):
the KL to N(0, I) less its μ² term, against a loop; it moves σ, never the mean; off, the
losses are exactly as before."""

from __future__ import annotations

import math

import torch

from tbps.components.distributions import Distributions, ModalityDistributions
from tbps.components.gaussian import kl_to_standard_normal, variance_prior


def test_the_prior_is_the_variance_part_of_the_kl_by_a_loop():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    want = sum(0.5 * (math.exp(float(v)) - float(v) - 1) for v in logvar.flatten()) / 12
    assert abs(float(variance_prior(logvar)) - want) < 1e-6
    # the KL is the prior plus ½·mean(μ²): the prior does not pull the feature
    assert abs(float(kl_to_standard_normal(mean, logvar) - variance_prior(logvar))
               - 0.5 * float(mean.pow(2).mean())) < 1e-6


def test_the_prior_moves_sigma_towards_one_and_leaves_the_means_alone():
    g = torch.Generator().manual_seed(1)
    parts = [torch.randn(5, 6, generator=g).requires_grad_() for _ in range(2)]
    logvars = [torch.full((5, 6), -4.0, requires_grad=True),
               torch.full((5, 6), 1.0, requires_grad=True)]
    d = Distributions(parts[0], logvars[0], parts[1], logvars[1])
    with_prior = ModalityDistributions(6, "global", kl_weight=0.0, sigma_prior_weight=2.0)
    with_prior.regularisers(d)["loss_sigma_prior"].backward()
    assert all(p.grad is None for p in parts)
    assert (logvars[0].grad < 0).all() and (logvars[1].grad > 0).all()  # small σ up, large down
    assert "loss_sigma_prior" not in ModalityDistributions(6, "global").regularisers(d)
