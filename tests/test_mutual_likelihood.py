"""PFE's mutual likelihood score as σ's own objective (``match_mls_weight``): the term
against a loop over pairs and dimensions, its fixed point (σ_a² + σ_b² = the matched
means' squared difference, per dimension), means that it never moves, and that it trains σ
through a match that no longer does (``match_trains_sigma: false``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tbps.components.gaussian import mutual_likelihood_loss
from tbps.heads.base import HeadContext
from tbps.heads.dcl import DCLHead
from tbps.heads.ugm import UGMHead
from tbps.types import Gaussian

CTX = HeadContext(embed_dim=6, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                  special_ids=(0, 1))


def test_the_term_equals_a_loop_over_matched_pairs_and_dimensions():
    g = torch.Generator().manual_seed(0)
    mean_a, mean_b = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    logvar_a, logvar_b = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    matched = torch.rand(4, 5, generator=g) > 0.5
    per_pair = []
    for i in range(4):
        for j in range(5):
            if not matched[i, j]:
                continue
            x, y = F.normalize(mean_a[i], dim=0), F.normalize(mean_b[j], dim=0)
            total = 0.0
            for d in range(3):
                var = math.exp(float(logvar_a[i, d])) + math.exp(float(logvar_b[j, d]))
                total += 0.5 * (float(x[d] - y[d]) ** 2 / var + math.log(var))
            per_pair.append(total / 3)
    got = float(mutual_likelihood_loss(mean_a, logvar_a, mean_b, logvar_b, matched))
    assert abs(got - sum(per_pair) / len(per_pair)) < 1e-6


def test_sigma_settles_at_the_spread_of_the_matches_and_the_means_never_move():
    """One caption matched to two images at different distances: with the means fixed the
    minimiser of the term is σ_t² + σ_i² = the squared difference averaged over its matches,
    dimension by dimension, so a caption whose matches lie further out gets a wider σ."""
    g = torch.Generator().manual_seed(1)
    text_mean = torch.randn(2, 4, generator=g, requires_grad=True)
    image_mean = torch.randn(4, 4, generator=g)
    image_logvar = torch.full((4, 4), -30.0)  # images: points
    matched = torch.tensor([[True, True, False, False], [False, False, True, True]])
    logvar = torch.zeros(2, 4, requires_grad=True)
    opt = torch.optim.Adam([logvar], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        mutual_likelihood_loss(text_mean, logvar, image_mean, image_logvar, matched).backward()
        opt.step()
    assert text_mean.grad is None or text_mean.grad.abs().sum() == 0
    diff2 = (F.normalize(text_mean.detach(), dim=-1)[:, None]
             - F.normalize(image_mean, dim=-1)[None]).pow(2)
    expected = torch.stack([diff2[0, :2].mean(0), diff2[1, 2:].mean(0)])
    assert torch.allclose(logvar.detach().exp(), expected, rtol=1e-3, atol=1e-6)


def test_it_trains_sigma_through_a_match_that_does_not():
    g = torch.Generator().manual_seed(2)
    pid = torch.tensor([0, 1, 2, 2])
    for make in (lambda **kw: DCLHead(CTX, init_shift=1.0, **kw),
                 lambda **kw: UGMHead(CTX, init_shift=1.0, **kw)):
        grads = []
        for weight in (0.0, 1.0):
            logvar = torch.full((4, 6), -2.0, requires_grad=True)
            text = Gaussian(torch.randn(4, 6, generator=g), logvar)
            image = Gaussian(torch.randn(4, 6, generator=g), torch.full((4, 6), -2.0))
            head = make(match_trains_sigma=False, match_mls_weight=weight)
            loss, _ = head.match.loss(text, image, pid)
            loss.backward()
            grads.append(None if logvar.grad is None else float(logvar.grad.abs().sum()))
        assert grads[0] in (None, 0.0) and grads[1] > 0


def test_soft_pairs_weigh_every_other_image_by_its_detached_match_probability():
    """``match_mls_pairs: soft``: the term over a caption's own person's images (weight 1)
    and every other image (weight P(match), detached), against the per-pair loop above; and
    P(match) itself gets no gradient from it (only σ learns from PFE's term)."""
    g = torch.Generator().manual_seed(3)
    pid = torch.tensor([0, 1, 1, 2])
    text = Gaussian(torch.randn(4, 6, generator=g), 0.3 * torch.randn(4, 6, generator=g) - 4)
    image = Gaussian(torch.randn(4, 6, generator=g), 0.3 * torch.randn(4, 6, generator=g) - 4)
    soft = DCLHead(CTX, init_shift=10.0, match_mls_weight=1.0, match_mls_pairs="soft").match
    hard = DCLHead(CTX, init_shift=10.0, match_mls_weight=1.0).match
    plain = DCLHead(CTX, init_shift=10.0).match
    prob = plain.probability(text, image)
    assert 0.05 < float(prob[pid[:, None] != pid[None, :]].mean()) < 0.95  # weights that matter
    total = weight_sum = 0.0
    for t in range(4):
        for i in range(4):
            w = 1.0 if pid[t] == pid[i] else float(prob[t, i])
            term = float(mutual_likelihood_loss(text.mean[t:t + 1], text.logvar[t:t + 1],
                                                image.mean[i:i + 1], image.logvar[i:i + 1],
                                                torch.ones(1, 1, dtype=torch.bool)))
            total, weight_sum = total + w * term, weight_sum + w
    base = float(plain.loss(text, image, pid)[0])
    assert abs(float(soft.loss(text, image, pid)[0]) - base - total / weight_sum) < 1e-5
    # the identity pairs alone give a different figure: the soft weights are used
    assert abs(float(hard.loss(text, image, pid)[0]) - float(soft.loss(text, image, pid)[0])) > 1e-3
    scale = soft.scale
    grad_soft = torch.autograd.grad(soft.loss(text, image, pid)[0], scale)[0]
    grad_plain = torch.autograd.grad(plain.loss(text, image, pid)[0], plain.scale)[0]
    assert torch.allclose(grad_soft, grad_plain, atol=1e-6)
