"""Likelihoods averaged over samples (Kendall & Gal's loss attenuation): UCFA's ``sampled_id``
head and CRUE's ``heads.ugm.sample_average=probability``, each against a loop over the very
samples drawn, and the reason they exist: σ is pushed down where the classifier is sure,
not where the posterior is spread, and up where it is wrong."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tbps.components.distributions import Distributions
from tbps.heads.base import HeadContext
from tbps.heads.sampled_id import SampledIDHead, sampled_identity_nll
from tbps.heads.ugm import ugm_loss

CTX = HeadContext(embed_dim=5, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                  special_ids=(0, 1))


def test_the_sampled_id_loss_equals_a_loop_over_the_drawn_samples():
    g = torch.Generator().manual_seed(0)
    b, j = 3, 4
    dist = Distributions(*(torch.randn(b, 5, generator=g) + shift for shift in (0, -1, 0, -1)))
    pid = torch.tensor([0, 2, 3])
    head = SampledIDHead(CTX, num_samples=j)
    torch.nn.init.normal_(head.classifier.weight, generator=g)
    torch.manual_seed(5)
    got = float(head(None, {"distributions": dist, "pid": pid})["loss_id"].detach())
    torch.manual_seed(5)  # images first, then captions, as the head draws them
    total = 0.0
    for mean, logvar in ((dist.image_mean, dist.image_logvar), (dist.text_mean, dist.text_logvar)):
        eps = torch.randn(j, b, 5)
        for r in range(b):
            probs = [F.softmax(head.classifier(mean[r] + logvar[r].mul(0.5).exp() * eps[s, r]), -1).detach()
                     for s in range(j)]
            total += -math.log(sum(float(p[pid[r]]) for p in probs) / j) / b
    assert abs(got - total / 2) < 1e-5


def test_ugm_averaging_the_probability_equals_a_loop():
    g = torch.Generator().manual_seed(1)
    b, k, s = 3, 6, 4
    mean, logvar = torch.randn(b, 5, generator=g), torch.randn(b, 5, generator=g) - 2
    keys = F.normalize(torch.randn(k, 5, generator=g), dim=-1)
    valid = torch.tensor([True, True, True, True, False, True])
    target = torch.zeros(b, k)
    target[0, 1] = target[1, 0] = 1.0
    target[2, 2] = target[2, 5] = 0.5
    torch.manual_seed(2)
    got = float(ugm_loss(mean, logvar, keys, target, valid, 0.2, s, average="probability"))
    torch.manual_seed(2)
    eps = torch.randn(s, b, 5)
    total = 0.0
    for r in range(b):
        probs = []
        for i in range(s):
            z = F.normalize(mean[r] + logvar[r].mul(0.5).exp() * eps[i, r], dim=0)
            logits = (keys @ z / 0.2).masked_fill(~valid, float("-inf"))
            probs.append(F.softmax(logits, 0))
        mean_p = sum(probs) / s
        total -= sum(float(target[r, c]) * math.log(float(mean_p[c]))
                     for c in range(k) if target[r, c] > 0)
    assert abs(got - total / b) < 1e-5


def _sigma_gradient(logits_of_mean: list[float], label: int, average: str) -> float:
    """∂loss/∂log σ² of one feature classified by an identity map (the feature is its logits),
    σ ≈ 0.14 (UCFA's start), 100,000 samples."""
    torch.manual_seed(0)
    mean = torch.tensor([logits_of_mean])
    logvar = torch.full((1, len(logits_of_mean)), -4.0, requires_grad=True)
    if average == "probability":
        loss = sampled_identity_nll(torch.nn.Identity(), mean, logvar, torch.tensor([label]),
                                    100_000).mean()
    else:  # the loss averaged over the same kind of samples
        z = mean + logvar.mul(0.5).exp() * torch.randn(100_000, 1, len(logits_of_mean))
        loss = F.cross_entropy(z.flatten(0, 1), torch.tensor([label]).repeat(100_000))
    loss.backward()
    return float(logvar.grad.sum())


def test_averaging_the_probability_lowers_sigma_where_sure_and_raises_it_where_wrong():
    # sure: P(label) 0.87; spread: three people equally likely, the fourth ruled out; wrong:
    # the classifier is sure of someone else
    sure, spread, wrong = [3.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, -10.0], [0.0, 6.0, 0.0, 0.0]
    push_sure = _sigma_gradient(sure, 0, "probability")
    assert push_sure > 0                                     # σ pushed down
    assert _sigma_gradient(wrong, 0, "probability") < 0      # σ pushed up
    assert abs(_sigma_gradient(spread, 0, "probability")) < 0.1 * push_sure  # hardly pushed
    # averaging the loss instead pushes σ down hardest where the posterior is spread
    assert _sigma_gradient(spread, 0, "loss") > _sigma_gradient(sure, 0, "loss") > 0


@pytest.mark.parametrize("experiment, switches, logged", [
    ("crue_synthetic", ["heads.ugm.sample_average=probability",
                        "heads.ugm.match_trains_sigma=false", "heads.ugm.match_lr=0.05",
                        "heads.ugm.sigma_prior_weight=0.1"], "train/loss_ugm_sigma_prior"),
    ("ucfa_synthetic", ["heads=[sampled_id,dcl,pcl,uamlr]", "heads.dcl.match_trains_sigma=false",
                        "heads.dcl.match_lr=0.05", "distributions.sigma_prior_weight=0.1",
                        "heads.uamlr.num_heads=2", "heads.uamlr.depth=1"],
     "train/loss_sigma_prior"),
])
def test_the_sigma_switches_train_end_to_end(tiny_synth, tmp_path, experiment, switches, logged):
    """`tbps train` with every σ switch of the method on: one epoch, tested, the prior logged."""
    import csv
    import json
    import os

    from conftest import tiny_overrides
    from tbps.cli import main

    os.environ["TBPS_EXPERIMENTS"] = os.path.join(os.path.dirname(__file__), "..", "experiments")
    os.environ.pop("TBPS_RUN_DIR", None)
    args = [o for o in tiny_overrides(tiny_synth, tmp_path) if "mlm" not in o]
    assert main(["train", f"experiment={experiment}", *args, *switches,
                 "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]) == 0
    assert "test/R1" in json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    assert any(row.get(logged) for row in rows)
