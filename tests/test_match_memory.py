"""The probabilistic match's cross-batch memory (``match_memory``): its loss against a loop
over rows and columns, the queue's order and wrap, the checkpoint carrying it, and the one
reason it exists — a remembered near-twin image gives the caption's σ a push to grow that
the batch alone does not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tbps.components.matching import ProbabilisticMatch, pcme_matching_loss
from tbps.errors import ConfigError
from tbps.heads.base import HeadContext
from tbps.heads.dcl import DCLHead
from tbps.heads.ugm import UGMHead
from tbps.types import Gaussian

CTX = HeadContext(embed_dim=4, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                  special_ids=(0, 1))


def _gauss(n, d=4, seed=0, logvar=-2.0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return Gaussian(torch.randn(n, d, generator=g).requires_grad_(grad),
                    (torch.randn(n, d, generator=g) * 0.3 + logvar).requires_grad_(grad))


def _csd(mean_a, logvar_a, mean_b, logvar_b):
    a, b = F.normalize(mean_a, dim=-1), F.normalize(mean_b, dim=-1)
    return sum(float(a[c] - b[c]) ** 2 + math.exp(float(logvar_a[c]))
               + math.exp(float(logvar_b[c])) for c in range(len(a)))


def _bce(logit, y):
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_the_loss_with_a_memory_is_a_loop_over_batch_and_remembered_columns():
    a, b = 3.0, 1.0
    match = ProbabilisticMatch(init_scale=a, init_shift=b, memory_size=5, dim=4).train()
    past_t, past_i = _gauss(3, seed=1), _gauss(3, seed=2)
    past_pid = torch.tensor([7, 0, 9])
    match.loss(past_t, past_i, past_pid)                 # fills 3 of 5 slots
    text, image = _gauss(4, seed=3), _gauss(4, seed=4)
    pid = torch.tensor([0, 1, 1, 2])
    weights = torch.tensor([1.0, 0.5, 0.0, 1.0])
    got, _ = match.eval().loss(text, image, pid, weights)

    def side(rows, cols, col_pid):
        per_row = []
        for r in range(4):
            terms = [_bce(-a * _csd(rows.mean[r], rows.logvar[r], cols.mean[c],
                                    cols.logvar[c]) + b, float(pid[r] == col_pid[c]))
                     for c in range(len(col_pid))]
            per_row.append(sum(terms) / len(terms))
        return sum(w * v for w, v in zip(weights.tolist(), per_row)) / float(weights.sum())

    cat = lambda x, y: Gaussian(torch.cat([x.mean, y.mean]), torch.cat([x.logvar, y.logvar]))
    expected = (side(text, cat(image, past_i), torch.cat([pid, past_pid]))
                + side(image, cat(text, past_t), torch.cat([pid, past_pid])))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_an_empty_memory_leaves_the_batch_loss_as_it_was():
    text, image, pid = _gauss(6, seed=5), _gauss(6, seed=6), torch.tensor([0, 0, 1, 2, 2, 3])
    with_memory = ProbabilisticMatch(init_shift=2.0, memory_size=8, dim=4).eval()
    plain = ProbabilisticMatch(init_shift=2.0).eval()
    got, logits = with_memory.loss(text, image, pid)
    assert float(got) == pytest.approx(float(pcme_matching_loss(logits, pid, pid)), rel=1e-6)
    assert float(got) == pytest.approx(float(plain.loss(text, image, pid)[0]), rel=1e-6)
    assert int(with_memory.memory_ptr) == 0  # nothing is remembered outside training


def test_the_queue_keeps_the_newest_pairs_in_order_and_wraps():
    match = ProbabilisticMatch(init_shift=0.0, memory_size=5, dim=4).train()
    batches = [(_gauss(3, seed=s), _gauss(3, seed=10 + s), torch.tensor([3 * s, 3 * s + 1,
                                                                          3 * s + 2]))
               for s in range(2)]
    for text, image, pid in batches:
        match.loss(text, image, pid)
    assert match.memory_pid.tolist() == [5, 1, 2, 3, 4]   # slot 0 overwritten by the 6th pair
    assert int(match.memory_ptr) == 1
    text, image, _ = batches[1]
    assert torch.allclose(match.memory_text_mean[0], F.normalize(text.mean[2], dim=-1))
    assert torch.equal(match.memory_image_logvar[3], image.logvar[0])
    restored = ProbabilisticMatch(init_shift=0.0, memory_size=5, dim=4)
    restored.load_state_dict(match.state_dict())          # a resumed run keeps its memory
    assert torch.equal(restored.memory_pid, match.memory_pid)
    assert torch.equal(restored.memory_text_mean, match.memory_text_mean)


def test_a_remembered_near_twin_pushes_the_caption_sigma_up():
    """A caption and its image; another person's image almost where the caption points (a
    near-twin the caption cannot tell apart) is in the memory, not in the batch. The loss's
    gradient on the caption's log σ² then says "grow" (negative), and more so than without it."""
    def caption_logvar_grad(remember_twin: bool) -> float:
        match = ProbabilisticMatch(init_scale=5.0, init_shift=8.0, memory_size=4, dim=4).train()
        mean = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
        far = Gaussian(mean, torch.full((2, 4), -3.0))
        if remember_twin:
            twin = Gaussian(torch.tensor([[0.98, 0.2, 0.0, 0.0]]), torch.full((1, 4), -3.0))
            match.loss(twin, twin, torch.tensor([5]))
        text = Gaussian(mean.clone(), torch.full((2, 4), -3.0, requires_grad=True))
        loss, _ = match.loss(text, far, torch.tensor([0, 1]))
        loss.backward()
        return float(text.logvar.grad[0].sum())

    with_twin, alone = caption_logvar_grad(True), caption_logvar_grad(False)
    assert with_twin < 0, with_twin
    assert with_twin < alone


def test_both_heads_take_the_memory_and_dcl_refuses_it_without_pcme():
    dcl = DCLHead(CTX, match_memory=16)
    ugm = UGMHead(CTX, match_memory=16)
    assert dcl.match.memory_pid.shape == ugm.match.memory_pid.shape == (16,)
    assert "memory_pid" not in DCLHead(CTX).match.state_dict()  # off: checkpoints unchanged
    with pytest.raises(ConfigError, match="objective=pcme"):
        DCLHead(CTX, objective="sdm", match_memory=16)
