"""Pair weights from a model's own P(match) (components/pair_weights.py): the weights from
known values, every weighted loss against a row-by-row loop, all-ones weights equal to the
unweighted losses exactly, and the module wiring (a head's confidence in, a clear error
when no head has one)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tbps.components.matching import pcme_matching_loss
from tbps.components.pair_weights import confidence_weights, weighted_mean
from tbps.heads.base import HeadContext
from tbps.heads.cmpm import cmpm_from_logits
from tbps.heads.id_loss import IDHead
from tbps.heads.ire import soft_target_loss
from tbps.heads.pcl import intra_modal_loss
from tbps.heads.sdm import sdm_from_logits

PID = torch.tensor([0, 1, 1, 2, 3])
W = torch.tensor([1.0, 0.25, 0.0, 1.0, 0.5])


def _logits(seed=0, n=5):
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed))


def _kl_rows(scores, target):
    """KL(softmax(row) ‖ target row) per row, with plain floats."""
    out = []
    for row, q in zip(scores.tolist(), target.tolist()):
        m = max(row)
        e = [math.exp(x - m) for x in row]
        p = [v / sum(e) for v in e]
        out.append(sum(pi * (math.log(pi) - math.log(qi + 1e-8)) for pi, qi in zip(p, q)))
    return out


def _wmean(values, weights):
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def test_weights_from_known_confidences():
    conf = torch.tensor([0.1, 0.2, 0.4, 0.01])
    w = confidence_weights(conf, torch.tensor(1.5, dtype=torch.float64), 1.0, 0.5)
    # the median of the four is 0.1 (torch takes the lower middle): threshold 0.05
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.2])
    early = confidence_weights(conf, torch.tensor(0.5, dtype=torch.float64), 1.0, 0.5)
    assert early.tolist() == [1.0, 1.0, 1.0, 1.0]
    # fading in over 2 epochs from epoch 1: a quarter of the way at 1.5, all of it from 3
    ramp = [confidence_weights(conf, torch.tensor(p, dtype=torch.float64), 1.0, 0.5, 2.0)
            for p in (0.5, 1.5, 3.0, 4.0)]
    assert ramp[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert ramp[1].tolist() == pytest.approx([1.0, 1.0, 1.0, 1 - 0.25 * 0.8])
    assert ramp[2].tolist() == ramp[3].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.2])
    assert weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0])) == 1.0


def test_sdm_and_cmpm_weigh_each_pairs_rows_in_both_directions():
    s = _logits()
    match = (PID[:, None] == PID[None, :]).float()
    q_sdm = match / match.sum(1, keepdim=True)
    want = _wmean(_kl_rows(s, q_sdm), W.tolist()) + _wmean(_kl_rows(s.t(), q_sdm), W.tolist())
    assert float(sdm_from_logits(s, PID, weights=W)) == pytest.approx(want, rel=1e-5)
    t = _logits(1)
    q_cmpm = match / match.norm(dim=1, keepdim=True)
    want = _wmean(_kl_rows(s, q_cmpm), W.tolist()) + _wmean(_kl_rows(t, q_cmpm), W.tolist())
    assert float(cmpm_from_logits(s, t, PID, weights=W)) == pytest.approx(want, rel=1e-5)
    ones = torch.ones(5)
    assert float(sdm_from_logits(s, PID, weights=ones)) == pytest.approx(float(sdm_from_logits(s, PID)), rel=1e-6)
    assert float(cmpm_from_logits(s, t, PID, weights=ones)) == pytest.approx(
        float(cmpm_from_logits(s, t, PID)), rel=1e-6)


def test_matching_soft_target_and_identity_losses_weigh_rows():
    s = _logits(2)
    rows = []
    for i in range(5):
        total = 0.0
        for j in range(5):
            p = 1 / (1 + math.exp(-float(s[i, j])))
            y = float(PID[i] == PID[j])
            total -= y * math.log(p) + (1 - y) * math.log(1 - p)
        rows.append(total / 5)
    assert float(pcme_matching_loss(s, PID, PID, W)) == pytest.approx(2 * _wmean(rows, W.tolist()), rel=1e-5)
    target = torch.softmax(_logits(3), 1)
    valid = torch.ones(1, 5, dtype=torch.bool)
    ce = [-sum(float(target[i, j]) * math.log(float(torch.softmax(s[i], 0)[j])) for j in range(5))
          for i in range(5)]
    assert float(soft_target_loss(s, target, valid, "ce", W)) == pytest.approx(_wmean(ce, W.tolist()), rel=1e-5)
    ctx = HeadContext(embed_dim=4, num_classes=4, vocab_size=10, mask_id=1, pad_id=0, special_ids=(0, 1))
    head = IDHead(ctx)
    g = torch.Generator().manual_seed(4)
    from tbps.types import EncoderOutput

    enc = EncoderOutput(None, None, torch.randn(5, 4, generator=g) * 50, torch.randn(5, 4, generator=g) * 50, None)
    got = head(enc, {"pid": PID, "pair_weight": W})["loss_id"]
    per = [F.cross_entropy(head.classifier(f).float(), PID, reduction="none").tolist()
           for f in (enc.image_global, enc.text_global)]
    assert float(got) == pytest.approx((_wmean(per[0], W.tolist()) + _wmean(per[1], W.tolist())) / 2, rel=1e-5)


def test_point_contrast_anchors_weigh_their_pairs():
    z = F.normalize(torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(5)), dim=-1)
    tau = 0.1
    items = [(k, i) for k in range(2) for i in range(5)]
    num = den = 0.0
    for a in items:
        others = [o for o in items if o != a]
        pos = [o for o in others if PID[o[1]] == PID[a[1]]]
        if not pos:
            continue
        logs = torch.log_softmax(torch.tensor([float(z[a] @ z[o]) / tau for o in others]), 0)
        loss = -sum(float(logs[others.index(p)]) for p in pos) / len(pos)
        num += float(W[a[1]]) * loss
        den += float(W[a[1]])
    assert float(intra_modal_loss(z, PID, tau, W)) == pytest.approx(num / den, rel=1e-5)
    assert float(intra_modal_loss(z, PID, tau, torch.ones(5))) == pytest.approx(
        float(intra_modal_loss(z, PID, tau)), rel=1e-6)


@pytest.mark.parametrize("experiment", ["ucfa_synthetic", "crue_synthetic"])
def test_the_module_weighs_pairs_by_the_heads_confidence(tiny_synth, tmp_path, experiment):
    """From epoch 0 on, a training step's heads see batch["pair_weight"] made from the
    first head's P(match) of each pair, and the weights are logged."""
    from conftest import tiny_module

    extra = ["pair_weights={from_epoch:0,ratio:0.5}"]
    if experiment.startswith("ucfa"):
        extra += ["heads.uamlr.num_heads=2", "heads.uamlr.depth=1"]
    module, dm = tiny_module(tiny_synth, tmp_path, experiment, *extra)
    module.train()
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    batch = next(iter(dm.train_dataloader()))
    _, terms = module.compute_losses(batch, progress=0.5)
    w = batch["pair_weight"]
    assert w.shape == batch["pid"].shape and float(w.max()) == 1.0 and float(w.min()) < 1.0
    assert float(terms["pair_weight_mean"]) == pytest.approx(float(w.mean()))
    head = next(h for h in module.heads.values() if h.pair_confidence(
        module.encoder(batch["image"], batch["caption_ids"]), batch) is not None)
    assert type(head).__name__ in ("DCLHead", "UGMHead")


def test_pair_weights_without_a_probabilistic_match_is_a_clear_error(tiny_synth, tmp_path):
    from conftest import tiny_module

    from tbps.errors import ConfigError

    module, dm = tiny_module(tiny_synth, tmp_path, "clip_synthetic",
                             "pair_weights={from_epoch:0,ratio:0.5}")
    module.train()
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    batch = next(iter(dm.train_dataloader()))
    with pytest.raises(ConfigError, match="no head of this experiment has a probabilistic match"):
        module.compute_losses(batch)


def test_memory_admits_only_the_pairs_the_weights_trust():
    """``enqueue(view, admitted)``: the refused pairs are written as empty slots, the
    others as before, and the pointer moves by the whole batch either way."""
    from tbps.components.momentum import EMPTY, FeatureMemory

    memory = FeatureMemory(8, 4)
    pid = torch.tensor([3, 4, 5])
    view = memory.view(torch.randn(3, 4), torch.randn(3, 4), pid)
    memory.enqueue(view, torch.tensor([True, False, True]))
    assert memory.pid[:3].tolist() == [3, EMPTY, 5] and memory.pid[3:].eq(EMPTY).all()
    assert int(memory.ptr) == 3
    torch.testing.assert_close(memory.image[:3], view.keys_image[:3])
    memory.enqueue(memory.view(torch.randn(3, 4), torch.randn(3, 4), pid))
    assert memory.pid[3:6].tolist() == [3, 4, 5]


def test_pair_weights_on_the_memory_leave_the_losses_alone(tiny_synth, tmp_path):
    """``apply_to: memory``: no head sees a weight, the memory gets the trusted pairs only
    (the pairs under ratio × the batch's median P(match)), and its share is logged."""
    from conftest import tiny_module

    from tbps.components.momentum import EMPTY

    module, dm = tiny_module(tiny_synth, tmp_path, "crue_synthetic",
                             "pair_weights={from_epoch:0,ratio:0.5,apply_to:memory}")
    module.train()
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    batch = next(iter(dm.train_dataloader()))
    pids = batch["pid"].clone()
    _, terms = module.compute_losses(batch, progress=0.5)
    assert "pair_weight" not in batch and "pair_weight_mean" not in terms
    written = module.memory.pid[:len(pids)]
    kept = written != EMPTY
    assert 0 < int(kept.sum()) < len(pids)
    assert float(terms["memory_admitted"]) == pytest.approx(float(kept.float().mean()))
    assert torch.equal(written[kept], pids[kept])
    # before from_epoch every pair enters
    module, dm = tiny_module(tiny_synth, tmp_path, "crue_synthetic",
                             "pair_weights={from_epoch:5,ratio:0.5,apply_to:memory}")
    module.train()
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    batch = next(iter(dm.train_dataloader()))
    _, terms = module.compute_losses(batch, progress=0.5)
    assert float(terms["memory_admitted"]) == 1.0
    assert module.memory.pid[:len(batch["pid"])].ne(EMPTY).all()


def test_pair_weights_on_the_memory_need_a_memory(tiny_synth, tmp_path):
    from conftest import tiny_module

    from tbps.errors import ConfigError

    with pytest.raises(ConfigError, match="apply_to=memory needs by: batch and a feature memory"):
        tiny_module(tiny_synth, tmp_path, "ucfa_synthetic", "heads.uamlr.num_heads=2",
                    "pair_weights={from_epoch:0,ratio:0.5,apply_to:memory}")
