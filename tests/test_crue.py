"""CRUE's parts against slow, obvious references: the IRE and UGM losses over a toy memory,
the queues (wrap-around, identical on two processes), the EMA update, caption augmentation,
gradients into the variance head, bf16 with extreme inputs, and a checkpoint round trip."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from tbps.components.gaussian import GaussianEmbedding, kl_to_standard_normal
from tbps.components.momentum import EMPTY, FeatureMemory, MomentumEncoder
from tbps.components.text_augment import augment_caption_ids
from tbps.heads.base import HeadContext
from tbps.errors import ConfigError
from tbps.heads.ire import IREHead, ire_loss
from tbps.heads.ugm import UGMHead, ugm_loss
from tbps.types import EncoderOutput
import spawned

CTX = HeadContext(embed_dim=8, num_classes=5, vocab_size=50, mask_id=4, pad_id=0,
                  special_ids=(0, 1, 2, 3, 4))


def _toy(seed=0, b=4, q=6, d=8):
    g = torch.Generator().manual_seed(seed)
    pid = torch.tensor([0, 1, 1, 2])[:b]
    mem = FeatureMemory(q, d)
    mem.image[:4] = F.normalize(torch.randn(4, d, generator=g), dim=-1)
    mem.text[:4] = F.normalize(torch.randn(4, d, generator=g), dim=-1)
    mem.pid[:4] = torch.tensor([1, 3, 0, 2])  # two slots stay empty
    view = mem.view(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), pid)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), pid, view, mem


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _ire_reference(image, text, pid, view, tau, alpha, distill=0.0):
    """Row by row, key by key, with plain Python floats; ``distill``: ALBEF's share of the
    target taken from the label and given to the momentum model's cross-modal softmax."""
    keys = [j for j in range(len(view.keys_pid)) if view.keys_pid[j] != EMPTY]
    v, t = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    total = 0.0
    for k in range(len(pid)):
        pos = [j for j in keys if view.keys_pid[j] == pid[k]]
        y = [1 / len(pos) if j in pos else 0.0 for j in keys]
        rel_i = _softmax([float(view.image[k] @ view.keys_image[j]) / tau for j in keys])
        rel_t = _softmax([float(view.text[k] @ view.keys_text[j]) / tau for j in keys])
        p_t2i = _softmax([float(t[k] @ view.keys_image[j]) / tau for j in keys])
        p_i2t = _softmax([float(v[k] @ view.keys_text[j]) / tau for j in keys])
        m_t2i = _softmax([float(view.text[k] @ view.keys_image[j]) / tau for j in keys])
        m_i2t = _softmax([float(view.image[k] @ view.keys_text[j]) / tau for j in keys])
        for target_rel, momentum, pred in ((rel_i, m_t2i, p_t2i), (rel_t, m_i2t, p_i2t)):
            q = [(1 - alpha - distill) * a + alpha * b + distill * m
                 for a, b, m in zip(y, target_rel, momentum)]
            total += -sum(qi * math.log(pi) for qi, pi in zip(q, pred)) / len(pid) / 2
    return total


def test_ire_loss_matches_reference():
    image, text, pid, view, _ = _toy()
    got = ire_loss(image, text, pid, view, temperature=0.1, alpha=0.4)
    assert got.item() == pytest.approx(_ire_reference(image, text, pid, view, 0.1, 0.4), rel=1e-5)
    assert view.keys_pid.tolist()[:4] == pid.tolist()  # the batch leads the keys


def test_ire_momentum_distillation_matches_reference_and_moves_the_loss():
    image, text, pid, view, _ = _toy(3)
    got = ire_loss(image, text, pid, view, temperature=0.1, alpha=0.4, distill_alpha=0.3)
    assert got.item() == pytest.approx(
        _ire_reference(image, text, pid, view, 0.1, 0.4, distill=0.3), rel=1e-5)
    assert abs(got.item() - ire_loss(image, text, pid, view, 0.1, 0.4).item()) > 1e-3
    with pytest.raises(ConfigError, match="distill_alpha"):
        IREHead(CTX, alpha=0.8, distill_alpha=0.3)


def test_ugm_momentum_distillation_matches_reference_and_ramps_in():
    """UGM's targets with ALBEF's share: per row, (1 - β)·label + β·softmax of the momentum
    feature over the other modality's keys; β ramps in with the fractional epoch."""
    image, text, pid, view, _ = _toy(4)
    head = UGMHead(CTX, temperature=0.1, num_samples=2, match_weight=0.0,
                   init_logvar=-12.0, distill_alpha=0.4, distill_ramp_epochs=2.0)
    with torch.no_grad():   # σ at its floor (log σ² = -12): every sample within 0.0025 of the mean
        head.image_gauss.logvar.weight.zero_()
        head.text_gauss.logvar.weight.zero_()
    enc = EncoderOutput(image_tokens=None, text_tokens=None, image_global=image,
                        text_global=text, text_mask=None, extra_text={})
    keys = [j for j in range(len(view.keys_pid)) if view.keys_pid[j] != EMPTY]

    def reference(share):
        total = 0.0
        for k in range(len(pid)):
            pos = [j for j in keys if view.keys_pid[j] == pid[k]]
            y = [1 / len(pos) if j in pos else 0.0 for j in keys]
            for own, momentum, other_keys in ((image[k], view.image[k], view.keys_text),
                                              (text[k], view.text[k], view.keys_image)):
                m = _softmax([float(momentum @ other_keys[j]) / 0.1 for j in keys])
                p = _softmax([float(F.normalize(own, dim=0) @ other_keys[j]) / 0.1 for j in keys])
                q = [(1 - share) * a + share * b for a, b in zip(y, m)]
                total += -sum(qi * math.log(pi) for qi, pi in zip(q, p)) / len(pid) / 2
        return total

    for progress, share in ((0.5, 0.1), (3.0, 0.4)):
        out = head(enc, {"pid": pid, "memory": view,
                         "progress": torch.tensor(progress, dtype=torch.float64)})
        assert float(out["ugm_distill_alpha"]) == pytest.approx(share)
        assert float(out["loss_ugm"]) == pytest.approx(reference(share), rel=2e-3)
    # the tolerance above tells the two apart: without the share the loss is 1% higher
    assert reference(0.4) != pytest.approx(reference(0.0), rel=5e-3)


def test_ugm_loss_matches_reference():
    image, _, pid, view, _ = _toy(1)
    logvar = torch.full_like(image, -1.0) + 0.1 * torch.arange(8.0)
    got = ugm_loss(image, logvar, view.keys_text, _targets(pid, view), view.keys_valid, 0.1, 3,
                   torch.Generator().manual_seed(7))
    eps = torch.randn((3, *image.shape), generator=torch.Generator().manual_seed(7))
    keys = [j for j in range(len(view.keys_pid)) if view.keys_pid[j] != EMPTY]
    total = 0.0
    for s in range(3):
        for k in range(len(pid)):
            z = F.normalize(image[k] + torch.exp(0.5 * logvar[k]) * eps[s, k], dim=-1)
            p = _softmax([float(z @ view.keys_text[j]) / 0.1 for j in keys])
            pos = [i for i, j in enumerate(keys) if view.keys_pid[j] == pid[k]]
            total += -sum(math.log(p[i]) / len(pos) for i in pos) / (3 * len(pid))
    assert got.item() == pytest.approx(total, rel=1e-5)


def test_ugm_samples_around_the_normalised_mean_so_the_feature_norm_cannot_cancel_sigma():
    image, _, pid, view, _ = _toy(1)
    logvar = torch.full_like(image, -3.0)
    y = _targets(pid, view)

    def loss(x, centred):
        return ugm_loss(x, logvar, view.keys_text, y, view.keys_valid, 0.1, 3,
                        torch.Generator().manual_seed(7), normalise_mean=centred).item()

    # the reference: samples around the unit-length mean
    eps = torch.randn((3, *image.shape), generator=torch.Generator().manual_seed(7))
    keys = [j for j in range(len(view.keys_pid)) if view.keys_pid[j] != EMPTY]
    total = 0.0
    for s in range(3):
        for k in range(len(pid)):
            z = F.normalize(F.normalize(image[k], dim=0) + math.exp(-1.5) * eps[s, k], dim=-1)
            p = _softmax([float(z @ view.keys_text[j]) / 0.1 for j in keys])
            pos = [i for i, j in enumerate(keys) if view.keys_pid[j] == pid[k]]
            total += -sum(math.log(p[i]) / len(pos) for i in pos) / (3 * len(pid))
    assert loss(image, True) == pytest.approx(total, rel=1e-5)
    # a feature grown 100× leaves the centred loss as it was; around the raw feature the
    # same σ no longer moves the samples, so the loss changes
    assert loss(100 * image, True) == pytest.approx(loss(image, True), rel=1e-5)
    assert abs(loss(100 * image, False) - loss(image, False)) > 1e-3


def test_ugm_match_probability_is_pcme_matching_and_its_shift_and_sigma_learn():
    from tbps.components.matching import pcme_matching_loss
    from tbps.types import Gaussian

    _, _, pid, view, _ = _toy(2)
    head = UGMHead(CTX, num_samples=2, init_scale=3.0, init_shift=2.0).train()
    g = torch.Generator().manual_seed(4)
    fv, ft = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    enc = EncoderOutput(image_tokens=None, text_tokens=None, image_global=fv, text_global=ft,
                        text_mask=None, extra_text={})
    out = head(enc, {"pid": pid, "memory": view})
    mu_v, lv_v = head.image_gauss(fv)
    mu_t, lv_t = head.text_gauss(ft)
    logits = torch.zeros(4, 4)
    for t in range(4):
        for i in range(4):
            d = (F.normalize(mu_t[t], dim=0) - F.normalize(mu_v[i], dim=0)).pow(2).sum() \
                + lv_t[t].exp().sum() + lv_v[i].exp().sum()
            logits[t, i] = -3.0 * d + 2.0
    assert float(out["loss_ugm_match"]) == pytest.approx(
        float(pcme_matching_loss(logits, pid, pid)), rel=1e-5)
    prob = head.match_probability(Gaussian(mu_t, lv_t), Gaussian(mu_v, lv_v))
    assert torch.allclose(prob, torch.sigmoid(logits), atol=1e-6)
    out["loss_ugm_match"].backward()
    assert float(head.match.shift.grad.abs()) > 1e-3
    assert float(head.text_gauss.logvar.bias.grad.abs().max()) > 1e-5
    assert UGMHead(CTX, match_weight=0.0).match_probability(Gaussian(mu_t, lv_t),
                                                            Gaussian(mu_v, lv_v)) is None


def _targets(pid, view):
    from tbps.heads.ire import identity_targets

    return identity_targets(pid, view.keys_pid, view.keys_valid)


def test_kl_matches_closed_form():
    mu, lv = torch.randn(3, 4), torch.randn(3, 4)
    expect = sum(0.5 * (math.exp(float(lv[i, j])) + float(mu[i, j]) ** 2 - 1 - float(lv[i, j]))
                 for i in range(3) for j in range(4)) / 12
    assert kl_to_standard_normal(mu, lv).item() == pytest.approx(expect, rel=1e-5)


def test_gradients_reach_the_variance_head_and_bf16_is_finite():
    _, _, pid, view, _ = _toy(2)
    head = UGMHead(CTX, num_samples=4)
    feats = torch.randn(4, 8, requires_grad=True)
    enc = EncoderOutput(image_tokens=None, text_tokens=None, image_global=feats,
                        text_global=-feats, text_mask=None, extra_text={})
    out = head(enc, {"pid": pid, "memory": view})
    (out["loss_ugm"] + out["loss_ugm_kl"]).backward()
    assert head.image_gauss.logvar.weight.grad.abs().sum() > 0  # sigma is learnt
    assert head.text_gauss.logvar.bias.grad.abs().sum() > 0
    head.zero_grad()
    feats = (torch.randn(4, 8) * 1e4).requires_grad_()  # extreme features, bf16
    enc = EncoderOutput(image_tokens=None, text_tokens=None, image_global=feats.bfloat16(),
                        text_global=(-feats).bfloat16(), text_mask=None, extra_text={})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(enc, {"pid": pid, "memory": view})
    loss = out["loss_ugm"] + out["loss_ugm_kl"]
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(head.image_gauss.logvar.weight.grad).all()
    assert torch.isfinite(feats.grad).all()
    image, text, pid, view, _ = _toy(3)
    extreme = ire_loss((image * 1e6).bfloat16(), (text * 1e-6).bfloat16(), pid, view, 0.01, 0.4)
    assert torch.isfinite(extreme)
    g = GaussianEmbedding(8)
    mu, lv = g(torch.full((2, 8), 1e30))
    assert torch.isfinite(lv).all() and lv.max() <= 6.0


def test_queue_wraps_around():
    mem = FeatureMemory(5, 2)
    for step in range(3):  # 3 + 3 + 3 = 9 features through a queue of 5
        number = torch.arange(step * 3 + 1, step * 3 + 4)  # features 1..9, numbered by pid
        feats = torch.stack([number.float(), torch.zeros(3)], 1)
        mem.enqueue(mem.view(feats, feats, number))
    assert mem.ptr.item() == 9 % 5
    # 1,2,3 -> slots 0-2; 4,5,6 -> slots 3,4,0; 7,8,9 -> slots 1,2,3
    assert mem.pid.tolist() == [6, 7, 8, 9, 5]
    assert mem.image[:, 0].tolist() == [1.0] * 5  # stored normalised


def test_ema_update():
    online = torch.nn.Linear(3, 2)
    mom = MomentumEncoder(online, momentum=0.9)
    before = mom.encoder.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    mom.update(online)
    expect = 0.9 * before + 0.1 * online.weight.detach()
    torch.testing.assert_close(mom.encoder.weight, expect)
    assert not mom.encoder.weight.requires_grad


def test_caption_augmentation_masks_deletes_replaces():
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3, 0, 0]] * 200)
    out = augment_caption_ids(ids, CTX.special_ids, 4, 0, torch.arange(5, 50), 0.2, 0.2, 0.2,
                              torch.Generator().manual_seed(0))
    assert (out[:, 0] == 2).all()  # [SOS] stays first
    eos_pos = (out == 3).int().argmax(1)
    assert ((out == 3).sum(1) == 1).all()
    lengths = eos_pos - 1
    assert lengths.min() >= 1 and lengths.max() == 5  # deletions shorten, never to nothing
    after = torch.arange(9) > eos_pos[:, None]
    assert (out[after] == 0).all()  # padding after the end token
    n = (ids[:, 1:6] != 0).sum().item()
    assert 0.1 < (out == 4).sum().item() / n < 0.3          # about 20% masked
    assert 0.1 < (1 - lengths.sum().item() / n) < 0.3       # about 20% deleted


def test_ire_head_without_memory_is_a_config_error(tiny_synth, tmp_path):
    from conftest import tiny_overrides
    from tbps.cli import main

    os.environ["TBPS_EXPERIMENTS"] = os.path.join(os.path.dirname(__file__), "..", "experiments")
    args = [o for o in tiny_overrides(tiny_synth, tmp_path) if "mlm" not in o]
    assert main(["train", "experiment=crue_synthetic", *args, "memory=null"]) == 2


def test_checkpoint_restores_queues_and_momentum_encoder(tiny_synth, tmp_path):
    from conftest import tiny_overrides
    from tbps.cli import main
    from tbps.model.module import TBPSModule

    os.environ["TBPS_EXPERIMENTS"] = os.path.join(os.path.dirname(__file__), "..", "experiments")
    os.environ.pop("TBPS_RUN_DIR", None)
    args = [o for o in tiny_overrides(tiny_synth, tmp_path) if "mlm" not in o]
    assert main(["train", "experiment=crue_synthetic", *args, "memory.size=40",
                 "memory.momentum=0.9"]) == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)["state_dict"]
    module = TBPSModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt",
                                             map_location="cpu", weights_only=True)
    assert (module.memory.pid != EMPTY).all()  # 2 epochs of 16-pair batches filled 40 slots
    torch.testing.assert_close(module.memory.image, ckpt["memory.image"])
    torch.testing.assert_close(module.memory.pid, ckpt["memory.pid"])
    mom = dict(module.momentum.encoder.named_parameters())
    online = dict(module.encoder.named_parameters())
    torch.testing.assert_close(mom["text_proj.weight"], ckpt["momentum.encoder.text_proj.weight"])
    assert not torch.equal(mom["text_proj.weight"], online["text_proj.weight"])


def _two_rank_queue(rank, world, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.manual_seed(rank)
    mem = FeatureMemory(7, 4)
    for step in range(3):  # 3 steps x 2 ranks x 2 = 12 features through 7 slots
        feats = torch.randn(2, 4)
        # the last step admits each rank's pairs differently (pair weights on the memory)
        admitted = torch.tensor([rank == 0, rank == 1]) if step == 2 else None
        mem.enqueue(mem.view(feats, -feats, torch.randint(0, 9, (2,))), admitted)
    torch.save({k: v.clone() for k, v in mem.state_dict().items()}, f"{out}/rank{rank}.pt")
    spawned.leave()


def test_queues_identical_on_two_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_queue, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    # the last step wrote slots 1-4 as rank 0's two pairs, then rank 1's: admitted T F F T
    assert a["ptr"].item() == 12 % 7
    assert (a["pid"] == EMPTY).nonzero().flatten().tolist() == [2, 3]
