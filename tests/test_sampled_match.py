"""PCME's sampled P(match) (``match_estimate: sampled``) beside PCME++'s closed form: the
loss against a loop over the very samples drawn, the estimate against Monte Carlo of
E[sigmoid], the reason it exists (σ grows where the means cannot fit a pair, and only
there), a fixed seed at inference, and the settings it refuses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tbps.components.distributions import Distributions
from tbps.errors import ConfigError
from tbps.heads.base import HeadContext
from tbps.heads.dcl import DCLHead
from tbps.heads.ugm import UGMHead
from tbps.types import Gaussian

CTX = HeadContext(embed_dim=6, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                  special_ids=(0, 1))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_the_sampled_matching_loss_equals_a_loop_over_the_drawn_samples():
    g = torch.Generator().manual_seed(0)
    b, d, j = 4, 6, 3
    dist = Distributions(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) - 2,
                         torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) - 2)
    pid = torch.tensor([0, 1, 1, 2])
    head = DCLHead(CTX, init_scale=3.0, init_shift=2.0, match_estimate="sampled",
                   match_samples=j)
    torch.manual_seed(11)
    got = float(head(None, {"distributions": dist, "pid": pid})["loss_dcl"].detach())
    torch.manual_seed(11)  # the head draws the captions' samples first, then the images'
    eps_t, eps_v = torch.randn(j, b, d), torch.randn(j, b, d)
    zt = F.normalize(dist.text_mean, dim=-1) + dist.text_logvar.mul(0.5).exp() * eps_t
    zv = F.normalize(dist.image_mean, dim=-1) + dist.image_logvar.mul(0.5).exp() * eps_v
    total = 0.0
    for t in range(b):
        for i in range(b):
            p = sum(_sigmoid(-3.0 * float(((zt[s, t] - zv[u, i]) ** 2).sum()) + 2.0)
                    for s in range(j) for u in range(j)) / j ** 2
            y = float(pid[t] == pid[i])
            total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert abs(got - 2 * total / b ** 2) < 1e-5


def test_the_sampled_probability_is_the_mean_sigmoid_not_the_sigmoid_of_the_mean():
    """At inference, many samples give E[sigmoid(−a‖z_t − z_i‖² + b)] (200,000-sample Monte
    Carlo), which differs from the closed form's sigmoid(−a·E‖z_t − z_i‖² + b)."""
    g = torch.Generator().manual_seed(3)
    text = Gaussian(torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g) - 1)
    image = Gaussian(torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g) - 1)
    sampled = DCLHead(CTX, init_scale=2.0, init_shift=3.0, match_estimate="sampled",
                      match_samples=1000).eval()
    closed = DCLHead(CTX, init_scale=2.0, init_shift=3.0).eval()
    with torch.no_grad():
        got, shut = sampled.match_probability(text, image), closed.match_probability(text, image)
    n = 200_000
    for t in range(2):
        for i in range(3):
            zt = F.normalize(text.mean[t], dim=0) + text.logvar[t].mul(0.5).exp() * torch.randn(n, 6, generator=g)
            zi = F.normalize(image.mean[i], dim=0) + image.logvar[i].mul(0.5).exp() * torch.randn(n, 6, generator=g)
            want = torch.sigmoid(-2.0 * ((zt - zi) ** 2).sum(1) + 3.0).mean()
            assert abs(float(got[t, i]) - float(want)) < 0.02
    assert (got - shut).abs().max() > 0.05


def _sigma_gradient(estimate: str, same_person: bool, distance: float) -> float:
    """∂loss/∂log σ² of a caption matched against one image whose mean lies ``distance``
    away (squared, on the unit sphere), with a and b where a distance of 1 is P = 0.5."""
    torch.manual_seed(0)
    angle = math.acos(1 - distance / 2)
    text_logvar = torch.full((1, 2), -3.0, requires_grad=True)
    text = Gaussian(torch.tensor([[1.0, 0.0]]), text_logvar)
    image = Gaussian(torch.tensor([[math.cos(angle), math.sin(angle)]]),
                     torch.full((1, 2), -3.0))
    ctx = HeadContext(embed_dim=2, num_classes=2, vocab_size=10, mask_id=1, pad_id=0,
                      special_ids=(0, 1))
    head = DCLHead(ctx, init_scale=8.0, init_shift=8.0, match_estimate=estimate,
                   match_samples=64)
    pid_t, pid_v = torch.tensor([0]), torch.tensor([0 if same_person else 1])
    logits = head.match.logits(text, image)
    y = (pid_t[:, None] == pid_v[None, :]).float()
    F.binary_cross_entropy_with_logits(logits, y).backward()
    return float(text_logvar.grad.sum())


def test_sampling_raises_sigma_where_the_means_cannot_fit_the_pair_and_only_there():
    """Why the sampled estimate exists. The closed form can only lower σ for a true pair
    (σ adds to every distance); averaging the sigmoid raises σ for a true pair the means
    leave far apart (some samples land near) and for a false pair they put close, and
    lowers it for pairs the means already fit."""
    # the closed form: σ always costs a true pair, always helps a false one
    assert _sigma_gradient("closed", True, 1.8) > 0
    assert _sigma_gradient("closed", False, 0.2) < 0
    # sampled: misfit pairs raise σ (negative gradient of the loss), fitted pairs lower it
    assert _sigma_gradient("sampled", True, 1.8) < 0
    assert _sigma_gradient("sampled", False, 0.2) < 0
    assert _sigma_gradient("sampled", True, 0.2) > 0
    assert _sigma_gradient("sampled", False, 1.8) > 0


def test_the_shift_and_sigma_learn_under_the_sampled_estimate():
    g = torch.Generator().manual_seed(1)
    dist = Distributions(torch.randn(6, 6, generator=g), torch.full((6, 6), -2.0),
                         torch.randn(6, 6, generator=g),
                         torch.full((6, 6), -2.0, requires_grad=True))
    head = DCLHead(CTX, init_shift=1.0, match_estimate="sampled")
    head(None, {"distributions": dist, "pid": torch.tensor([0, 0, 1, 2, 3, 3])}
         )["loss_dcl"].backward()
    assert abs(float(head.match.shift.grad)) > 1e-3
    assert float(dist.text_logvar.grad.abs().mean()) > 1e-4


def test_inference_draws_the_same_samples_every_call_and_training_fresh_ones():
    g = torch.Generator().manual_seed(2)
    text = Gaussian(torch.randn(3, 6, generator=g), torch.zeros(3, 6) - 1)
    image = Gaussian(torch.randn(4, 6, generator=g), torch.zeros(4, 6) - 1)
    head = UGMHead(CTX, match_estimate="sampled", init_shift=1.0)
    head.eval()
    assert torch.equal(head.match_probability(text, image), head.match_probability(text, image))
    head.train()
    assert not torch.equal(head.match.logits(text, image), head.match.logits(text, image))


@pytest.mark.parametrize("kwargs, says", [
    ({"rank_by": "distribution"}, "rank_by=mean"),
    ({"distance": "w2"}, "distance=csd"),
    ({"objective": "sdm"}, "objective=pcme"),
])
def test_settings_the_sampled_estimate_cannot_serve_are_refused(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        DCLHead(CTX, match_estimate="sampled", **kwargs)


def test_a_match_that_does_not_train_sigma_still_reads_it():
    g = torch.Generator().manual_seed(4)
    mean_t = torch.randn(4, 6, generator=g, requires_grad=True)
    logvar_t = torch.full((4, 6), -2.0, requires_grad=True)
    image = Gaussian(torch.randn(4, 6, generator=g), torch.full((4, 6), -2.0))
    pid = torch.tensor([0, 1, 2, 2])
    losses = []
    for trains in (True, False):
        head = DCLHead(CTX, init_shift=1.0, match_trains_sigma=trains)
        loss, _ = head.match.loss(Gaussian(mean_t, logvar_t), image, pid)
        logvar_t.grad = None
        loss.backward()
        losses.append(float(loss.detach()))
        assert (logvar_t.grad is not None and logvar_t.grad.abs().sum() > 0) == trains
        assert mean_t.grad.abs().sum() > 0
    assert losses[0] == losses[1]  # the same P(match): σ is read either way
    lower = DCLHead(CTX, init_shift=1.0, match_trains_sigma=False)
    wider = lower.match.loss(Gaussian(mean_t, logvar_t + 1), image, pid)[0]
    assert float(wider.detach()) != losses[1]


def test_the_match_may_learn_at_a_rate_of_its_own():
    """``match_lr`` reaches the optimiser through the head contract's ``own_lr``."""
    from tbps.model.optim import param_groups

    for head in (DCLHead(CTX, match_lr=0.05), UGMHead(CTX, match_lr=0.05)):
        rates = {name: head.own_lr(name) for name, _ in head.named_parameters()}
        assert rates["match.shift"] == rates["match.scale"] == 0.05
        assert all(rate is None for name, rate in rates.items() if not name.startswith("match."))
        groups = param_groups(head, 1e-3, 0.0, (), 1.0, 1.0, own_lr=head.own_lr)
        shift = head.match.shift
        assert [g["lr"] for g in groups if any(p is shift for p in g["params"])] == [0.05]
    assert DCLHead(CTX).own_lr("match.shift") is None


def test_a_refitted_shift_follows_sigma_level_every_step():
    """``match_refit_shift``: before each training step b is set where the batch's mean
    P(match) is its share of true pairs (BCE's optimum for b), so a wider σ (larger
    distances) moves b with it."""
    g = torch.Generator().manual_seed(5)
    pid = torch.tensor([0, 0, 1, 2, 3, 3])
    share = float((pid[:, None] == pid[None, :]).float().mean())
    head = UGMHead(CTX, match_refit_shift=True, match_trains_sigma=False)
    shifts = []
    for logvar in (-4.0, -1.0):
        text = Gaussian(torch.randn(6, 6, generator=g), torch.full((6, 6), logvar))
        image = Gaussian(torch.randn(6, 6, generator=g), torch.full((6, 6), logvar))
        _, logits = head.match.loss(text, image, pid)
        assert abs(float(torch.sigmoid(logits.detach()).mean()) - share) < 1e-5
        # BCE's gradient on b vanishes there: b is the batch's optimum, not a first guess
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        b = head.match.shift.detach().clone().requires_grad_(True)
        matched = (pid[:, None] == pid[None, :]).float()
        bce(logits.detach() - head.match.shift.detach() + b, matched).backward()
        assert abs(float(b.grad)) < 1e-5
        shifts.append(float(head.match.shift))
    assert shifts[1] > shifts[0] + 5  # Σσ² rose by about 5 per side, a = 5
    head.eval()
    kept = float(head.match.shift)
    head.match.loss(text, image, pid)
    assert float(head.match.shift) == kept  # evaluation reads b, never refits it
