"""σ ordered like the entropy of a caption's matches (``match_entropy_weight``): the entropy
and the term against loops written out by hand, that only σ learns from it, that it orders
free σs like the entropies, and that both heads' probabilistic match add it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional import spearman_corrcoef

from tbps.components.match_entropy import entropy_order_loss, match_entropy
from tbps.components.matching import ProbabilisticMatch
from tbps.heads.base import HeadContext
from tbps.heads.dcl import DCLHead
from tbps.heads.ugm import UGMHead
from tbps.types import Gaussian

CTX = HeadContext(embed_dim=6, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                  special_ids=(0, 1))


def _slow_entropy(text_mean, image_mean, tau):
    out = []
    for t in text_mean.tolist():
        cos = [sum(a * b for a, b in zip(t, i)) / math.sqrt(sum(a * a for a in t) * sum(b * b for b in i))
               for i in image_mean.tolist()]
        z = [math.exp(c / tau) for c in cos]
        p = [v / sum(z) for v in z]
        out.append(-sum(q * math.log(q) for q in p))
    return out


def test_the_entropy_is_each_captions_softmax_over_the_images():
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    got = match_entropy(text, image, 0.1)
    for a, b in zip(got.tolist(), _slow_entropy(text, image, 0.1)):
        assert abs(a - b) < 1e-4


def test_the_term_is_one_minus_the_correlation_of_log_sigma_with_the_entropy():
    g = torch.Generator().manual_seed(1)
    text = Gaussian(torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g))
    image_mean = torch.randn(9, 4, generator=g)
    h = _slow_entropy(text.mean, image_mean, 0.2)
    s = [math.log(sum(math.exp(v / 2) for v in row) / 4) for row in text.logvar.tolist()]
    n = len(h)
    hm, sm = sum(h) / n, sum(s) / n
    cov = sum((a - sm) * (b - hm) for a, b in zip(s, h)) / n
    sd_h = math.sqrt(sum((b - hm) ** 2 for b in h) / n)
    sd_s = math.sqrt(sum((a - sm) ** 2 for a in s) / n + 0.01 ** 2)  # the floor
    want = 1 - cov / (sd_h * sd_s)
    assert abs(float(entropy_order_loss(text, image_mean, 0.2)) - want) < 1e-5


def test_only_sigma_learns_from_it():
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(6, 4, generator=g, requires_grad=True)
    logvar = torch.randn(6, 4, generator=g, requires_grad=True)
    image_mean = torch.randn(8, 4, generator=g, requires_grad=True)
    entropy_order_loss(Gaussian(mean, logvar), image_mean, 0.1).backward()
    assert mean.grad is None and image_mean.grad is None
    assert logvar.grad.abs().sum() > 0


def test_it_orders_free_sigmas_like_the_entropies_and_keeps_their_level():
    """σ learned from the term alone ends ordered like the captions' entropies (it started
    in the opposite order), at about its level: the term has none of its own."""
    g = torch.Generator().manual_seed(3)
    image_mean = torch.randn(12, 8, generator=g)
    text_mean = torch.randn(8, 8, generator=g) * torch.linspace(0.2, 3.0, 8)[:, None]
    h = match_entropy(text_mean, image_mean, 0.1)
    start = -4.0 - 0.05 * h.argsort(descending=True).argsort().float()  # highest h: lowest σ
    logvar = start[:, None].repeat(1, 8).requires_grad_()
    opt = torch.optim.Adam([logvar], lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        entropy_order_loss(Gaussian(text_mean, logvar), image_mean, 0.1).backward()
        opt.step()
    sigma = logvar.detach().mul(0.5).exp().mean(-1)
    assert float(spearman_corrcoef(sigma, h)) > 0.95
    assert abs(float(logvar.detach().mean()) - float(start.mean())) < 0.05


def test_both_heads_add_it_to_the_match_on_what_they_show():
    g = torch.Generator().manual_seed(4)
    text = Gaussian(torch.randn(6, 6, generator=g), torch.randn(6, 6, generator=g) - 3)
    image = Gaussian(torch.randn(6, 6, generator=g), torch.randn(6, 6, generator=g) - 3)
    pid = torch.tensor([0, 0, 1, 2, 2, 3])
    plain = ProbabilisticMatch(init_shift=2.0).train()
    base, _ = plain.loss(text, image, pid)
    for match in (DCLHead(CTX, init_shift=2.0, match_entropy_weight=0.5,
                          match_entropy_temperature=0.2).match,
                  UGMHead(CTX, init_shift=2.0, match_entropy_weight=0.5,
                          match_entropy_temperature=0.2).match):
        got, _ = match.train().loss(text, image, pid)
        assert abs(float(got.detach() - base.detach()) - 0.5 * float(entropy_order_loss(text, image.mean, 0.2))) < 1e-6
    # UGM with σ on the sphere hands the match σ/‖μ‖: the term orders that σ
    head = UGMHead(CTX, init_shift=2.0, sample_around="raw", sigma_on_sphere=True,
                   match_entropy_weight=1.0)
    shown = head._shown(text.mean, text.logvar)
    assert not torch.allclose(entropy_order_loss(shown, image.mean, 0.1),
                              entropy_order_loss(text, image.mean, 0.1))


def test_the_remembered_images_join_the_softmax_and_empty_slots_do_not():
    from tbps.components.match_entropy import ImageQueue
    g = torch.Generator().manual_seed(5)
    text = Gaussian(torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g))
    first, second = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    queue = ImageQueue(5, 6)
    # the first batch meets an empty queue: the batch's images alone
    alone = entropy_order_loss(text, first, 0.1)
    assert torch.allclose(entropy_order_loss(text, first, 0.1, queue, remember=True), alone)
    assert int(queue.filled.sum()) == 3
    # the second meets its own images and the first's, not the two empty slots
    want = entropy_order_loss(text, torch.cat([second, first]), 0.1)
    assert torch.allclose(entropy_order_loss(text, second, 0.1, queue, remember=True), want)
    # five slots: the second batch wrapped round onto the first's oldest
    assert bool(queue.filled.all()) and int(queue.ptr) == 1
    assert torch.allclose(queue.mean[0], F.normalize(second[2], dim=0))


def _slow_own_rank(text_mean, image_mean, text_pid, image_pid):
    out = []
    for t, p in zip(text_mean.tolist(), text_pid.tolist()):
        cos = [sum(a * b for a, b in zip(t, i)) / math.sqrt(sum(a * a for a in t) * sum(b * b for b in i))
               for i in image_mean.tolist()]
        own = [c for c, q in zip(cos, image_pid.tolist()) if q == p]
        mean_own = sum(own) / len(own)
        out.append(math.log(1 + sum(c > mean_own for c, q in zip(cos, image_pid.tolist()) if q != p)))
    return out


def test_own_rank_counts_other_peoples_images_nearer_than_the_captions_own():
    from tbps.components.match_entropy import own_rank
    g = torch.Generator().manual_seed(6)
    text, image = torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    text_pid, image_pid = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 2] * 3)
    got = own_rank(text, image, text_pid[:, None] == image_pid[None, :])
    assert torch.allclose(got, torch.tensor(_slow_own_rank(text, image, text_pid, image_pid)))
    # an image left out (an empty memory slot) is not counted
    valid = torch.ones(9, dtype=torch.bool)
    valid[4:] = False
    got = own_rank(text, image, text_pid[:, None] == image_pid[None, :], valid)
    assert torch.allclose(got, torch.tensor(_slow_own_rank(text, image[:4], text_pid, image_pid[:4])))


def test_the_own_rank_target_orders_sigma_and_reads_the_remembered_identities():
    """With ``target: own_rank`` the term is 1 − corr(log σ, own_rank) over the batch's and
    the queue's images, the queue's identities deciding which are the caption's own."""
    from tbps.components.match_entropy import ImageQueue, own_rank
    g = torch.Generator().manual_seed(7)
    pid = torch.tensor([0, 1, 2, 3, 0, 1])
    text = Gaussian(torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g))
    first, second = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    queue = ImageQueue(8, 4)
    entropy_order_loss(text, first, 0.1, queue, remember=True, target="own_rank", pid=pid + 4)
    got = entropy_order_loss(text, second, 0.1, queue, target="own_rank", pid=pid)
    images = torch.cat([second, first])
    pids = torch.cat([pid, pid + 4])
    h = own_rank(text.mean, images, pid[:, None] == pids[None, :])
    log_sigma = text.logvar.mul(0.5).exp().mean(-1).log()
    x, y = log_sigma - log_sigma.mean(), h - h.mean()
    want = 1 - (x * y).mean() / ((x.pow(2).mean() + 1e-4).sqrt() * y.pow(2).mean().sqrt())
    assert abs(float(got) - float(want)) < 1e-5
    # the first batch's people are not this batch's: its images count as other people's
    assert int(queue.filled.sum()) == 6 and queue.pid[:6].tolist() == (pid + 4).tolist()


def test_a_queue_saved_before_it_kept_identities_loads_and_own_rank_leaves_its_images_out():
    """Checkpoints of 2026-12-05 hold the queue's means without ``pid``: they load, their
    images count as of no known person, and ``own_rank`` reads only the batch's images (an
    unknown image may be the caption's own person: counting it as another's would bias the
    rank)."""
    from tbps.components.match_entropy import ImageQueue, own_rank
    g = torch.Generator().manual_seed(8)
    old = ImageQueue(4, 5)
    old.push(torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3]))
    state = {k: v for k, v in old.state_dict().items() if k != "pid"}
    queue = ImageQueue(4, 5)
    queue.load_state_dict(state)
    assert queue.pid.tolist() == [-1] * 4 and bool(queue.filled.all())
    torch.testing.assert_close(queue.mean, old.mean)
    pid = torch.tensor([0, 1, 2, 0])
    text = Gaussian(torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g))
    images = torch.randn(4, 5, generator=g)
    got = entropy_order_loss(text, images, 0.1, queue, target="own_rank", pid=pid)
    assert torch.allclose(got, entropy_order_loss(text, images, 0.1, target="own_rank", pid=pid))
    # with the identities kept, the same remembered images do count
    assert not torch.allclose(entropy_order_loss(text, images, 0.1, old, target="own_rank",
                                                 pid=pid + 10), got)


def test_the_heads_report_the_ordering_term_apart_from_the_match():
    """``loss_dcl_order``: the term on its own key (logged, and read by
    ``analysis.sigma_signal``), the match's key without it, the sum unchanged (UGM's
    ``loss_ugm_match_order`` comes from the same ``ProbabilisticMatch.loss_terms``)."""
    from tbps.components.distributions import Distributions

    g = torch.Generator().manual_seed(6)
    parts = [torch.randn(6, 6, generator=g) * s + m for s, m in ((1, 0), (1, -3), (1, 0), (1, -3))]
    pid = torch.tensor([0, 0, 1, 2, 2, 3])
    dist = Distributions(*parts)
    plain = DCLHead(CTX, init_shift=2.0).train()(None, {"distributions": dist, "pid": pid})
    head = DCLHead(CTX, weight=2.0, init_shift=2.0, match_entropy_weight=0.5,
                   match_entropy_target="own_rank").train()
    out = head(None, {"distributions": dist, "pid": pid})
    text, image = Gaussian(parts[2], parts[3]), Gaussian(parts[0], parts[1])
    want = 2.0 * 0.5 * entropy_order_loss(text, image.mean, 0.1, target="own_rank", pid=pid)
    torch.testing.assert_close(out["loss_dcl_order"], want)
    torch.testing.assert_close(out["loss_dcl"], 2.0 * plain["loss_dcl"])
    assert "loss_dcl_mls" not in out and "loss_dcl_order" not in plain
