"""UCFA's ``distributions.sigma_on_sphere``: DCL's match, ranking and the uncertainty read
σ/‖μ‖ (the spread PCL's samples, drawn around the raw feature, have once normalised), with
the norm detached, while the sampling heads still draw with σ itself. Checked against the
log-variances shifted by hand, element by element."""

from __future__ import annotations

import math

import torch

from tbps.components.distributions import Distributions, ModalityDistributions
from tbps.heads.base import HeadContext
from tbps.heads.dcl import DCLHead
from tbps.types import Gaussian, RetrievalInput

CTX = HeadContext(embed_dim=6, num_classes=5, vocab_size=50, mask_id=4, pad_id=0,
                  special_ids=(0, 1, 2, 3, 4))


def _parts(seed=0, b=5, d=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g) * s + m for s, m in ((3, 0), (1, -2), (2, 0), (1, -2))]


def _by_hand(mean, logvar):
    return torch.tensor([[logvar[i, k].item() - math.log(sum(v * v for v in mean[i].tolist()))
                          for k in range(mean.shape[1])] for i in range(mean.shape[0])])


def test_shown_divides_sigma_by_the_norm_and_the_norm_takes_no_gradient():
    mv, lv, mt, lt = _parts()
    mt.requires_grad_(True)
    lt.requires_grad_(True)
    shown = Distributions(mv, lv, mt, lt, sigma_on_sphere=True).shown(Gaussian(mt, lt))
    torch.testing.assert_close(shown.logvar, _by_hand(mt.detach(), lt.detach()))
    shown.logvar.sum().backward()
    assert mt.grad is None and lt.grad is not None
    plain = Distributions(mv, lv, mt, lt).shown(Gaussian(mt, lt))
    assert plain.logvar is lt


def test_dcl_on_the_sphere_is_dcl_on_the_shifted_log_variances():
    mv, lv, mt, lt = _parts(1)
    pid = torch.tensor([0, 1, 1, 2, 3])
    head = DCLHead(CTX, init_shift=1.0)
    on = head(None, {"distributions": Distributions(mv, lv, mt, lt, True), "pid": pid})
    shifted = Distributions(mv, _by_hand(mv, lv), mt, _by_hand(mt, lt))
    want = head(None, {"distributions": shifted, "pid": pid})
    torch.testing.assert_close(on["loss_dcl"], want["loss_dcl"])
    off = head(None, {"distributions": Distributions(mv, lv, mt, lt), "pid": pid})
    assert not torch.allclose(on["loss_dcl"], off["loss_dcl"])
    # the pair confidence a division and the pair weights read is the same P(match)
    conf = head.pair_confidence(None, {"distributions": Distributions(mv, lv, mt, lt, True)})
    torch.testing.assert_close(conf, head.pair_confidence(None, {"distributions": shifted}))


def test_ranking_and_uncertainty_read_the_gaussian_training_shows_the_match():
    torch.manual_seed(0)
    dist = ModalityDistributions(6, "global", sigma_on_sphere=True)
    feature = torch.randn(4, 6) * 5
    side = RetrievalInput(tokens=None, global_feature=feature, attention=None)
    for modality, emb in (("image", dist.image), ("text", dist.text)):
        mean, logvar = emb(feature)
        got = dist.distribution(modality, side)
        torch.testing.assert_close(got.logvar, _by_hand(mean.detach(), logvar.detach()))
    # the batch the heads get carries the switch; its log-variances stay σ's own (PCL draws)
    from tbps.types import EncoderOutput
    d = dist(EncoderOutput(None, None, feature, feature, None))
    assert d.sigma_on_sphere
    torch.testing.assert_close(d.text_logvar, dist.text(feature)[1])
