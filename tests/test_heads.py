"""Each loss against a slow, obvious reference on a toy batch, plus the head contract."""

import math

import pytest
import torch

from tbps.heads.base import HeadContext
from tbps.heads.cmpm import CMPMHead, cmpm_loss
from tbps.heads.id_loss import IDHead
from tbps.heads.itc import ITCHead, itc_loss
from tbps.heads.mlm import IGNORE, MLMHead, mask_tokens, replacement_ids
from tbps.heads.sdm import SDMHead, sdm_loss
from tbps.types import EncoderOutput

CTX = HeadContext(embed_dim=8, num_classes=5, vocab_size=30, mask_id=4, pad_id=0,
                  special_ids=(0, 1, 2, 3, 4))


def _toy(seed: int = 0, b: int = 6):
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(b, 8, generator=g), torch.randn(b, 8, generator=g)
    pid = torch.tensor([0, 1, 0, 2, 1, 3][:b])
    return img, txt, pid


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _kl_rows(logits, target_rows, eps=1e-8):
    total = 0.0
    for row, q in zip(logits, target_rows):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        total += sum(pi * (math.log(pi) - math.log(qi + eps)) for pi, qi in zip(p, q))
    return total / len(logits)


def test_sdm_matches_loop_reference():
    img, txt, pid = _toy()
    n, tau = len(pid), 0.02
    il, tl = img.tolist(), txt.tolist()
    s = [[_cos(il[i], tl[j]) / tau for j in range(n)] for i in range(n)]
    q = [[float(pid[i] == pid[j]) / sum(float(pid[i] == pid[k]) for k in range(n)) for j in range(n)]
         for i in range(n)]
    st = [list(col) for col in zip(*s)]
    ref = _kl_rows(s, q) + _kl_rows(st, q)  # q is symmetric here
    assert sdm_loss(img, txt, pid, tau).item() == pytest.approx(ref, rel=1e-4)


def test_cmpm_matches_loop_reference():
    img, txt, pid = _toy(1)
    n = len(pid)
    il, tl = img.tolist(), txt.tolist()
    norm = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    i2t = [[sum(a * b for a, b in zip(il[i], norm(tl[j]))) for j in range(n)] for i in range(n)]
    t2i = [[sum(a * b for a, b in zip(tl[i], norm(il[j]))) for j in range(n)] for i in range(n)]
    q = []
    for i in range(n):
        row = [float(pid[i] == pid[j]) for j in range(n)]
        l2 = math.sqrt(sum(r * r for r in row))
        q.append([r / l2 for r in row])
    ref = _kl_rows(i2t, q) + _kl_rows(t2i, q)
    assert cmpm_loss(img, txt, pid).item() == pytest.approx(ref, rel=1e-4)


def test_itc_matches_loop_reference():
    img, txt, _ = _toy(2)
    n, tau = img.shape[0], 0.05
    il, tl = img.tolist(), txt.tolist()
    s = [[_cos(il[i], tl[j]) / tau for j in range(n)] for i in range(n)]
    ce = lambda rows: sum(-rows[i][i] + math.log(sum(math.exp(v) for v in rows[i]))  # noqa: E731
                          for i in range(n)) / n
    ref = (ce(s) + ce([list(c) for c in zip(*s)])) / 2
    assert itc_loss(img, txt, tau).item() == pytest.approx(ref, rel=1e-4)


def _encoded(b=6, n=5, length=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return EncoderOutput(image_tokens=torch.randn(b, n, d, generator=g, requires_grad=True),
                         text_tokens=torch.randn(b, length, d, generator=g),
                         image_global=torch.randn(b, d, generator=g, requires_grad=True),
                         text_global=torch.randn(b, d, generator=g, requires_grad=True),
                         text_mask=torch.ones(b, length, dtype=torch.bool))


def test_id_head_matches_reference_and_weights():
    enc, pid = _encoded(), torch.tensor([0, 1, 2, 3, 4, 0])
    head = IDHead(CTX, weight=0.5)
    w, bias = head.classifier.weight, head.classifier.bias
    ref = 0.0
    for feats in (enc.image_global, enc.text_global):
        logits = (feats @ w.t() + bias).tolist()
        ref += sum(-row[p] + math.log(sum(math.exp(v) for v in row))
                   for row, p in zip(logits, pid.tolist())) / len(logits)
    out = head(enc, {"pid": pid})
    assert out["loss_id"].item() == pytest.approx(0.5 * ref / 2, rel=1e-5)
    assert abs(w.std().item() - 0.001) < 0.0005


@pytest.mark.parametrize("head_cls,key", [(SDMHead, "loss_sdm"), (ITCHead, "loss_itc"),
                                          (CMPMHead, "loss_cmpm"), (IDHead, "loss_id")])
def test_heads_give_weighted_finite_losses_with_gradients(head_cls, key):
    enc, pid = _encoded(), torch.tensor([0, 1, 0, 2, 1, 3])
    one, two = head_cls(CTX, weight=1.0), head_cls(CTX, weight=2.0)
    if hasattr(one, "classifier"):
        two.load_state_dict(one.state_dict())
    a, b = one(enc, {"pid": pid})[key], two(enc, {"pid": pid})[key]
    assert torch.isfinite(a) and b.item() == pytest.approx(2 * a.item(), rel=1e-5)
    a.backward()
    assert enc.image_global.grad is not None and enc.image_global.grad.abs().sum() > 0


def test_mask_tokens_follows_irra_rules():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30, (400, 20), generator=g)
    ids[:, 0], ids[:, 15], ids[:, 16:] = 2, 3, 0  # [SOS] ... [EOS] padding
    masked, labels = mask_tokens(ids, CTX.special_ids, replacement_ids(30, CTX.special_ids), 4,
                                 prob=0.15, generator=g)
    sel = labels != IGNORE
    assert (labels[sel] == ids[sel]).all()
    assert not sel[:, 0].any() and not sel[:, 15:].any()  # specials never selected
    assert sel.any(dim=1).all()  # at least one per caption
    rate = sel[:, 1:15].float().mean().item()
    assert 0.12 < rate < 0.19
    as_mask = (masked[sel] == 4).float().mean().item()
    kept = (masked[sel] == ids[sel]).float().mean().item()
    assert 0.75 < as_mask < 0.85 and 0.06 < kept < 0.16
    assert (masked[~sel] == ids[~sel]).all()
    assert not torch.isin(masked[sel & (masked != 4) & (masked != ids)], torch.tensor(CTX.special_ids)).any()


def test_replacement_ids_exclude_specials():
    assert replacement_ids(8, (0, 2, 5)).tolist() == [1, 3, 4, 6, 7]


def test_mlm_head_predicts_only_masked_positions():
    torch.manual_seed(0)
    head = MLMHead(CTX, depth=1, num_heads=2)
    ids = torch.randint(5, 30, (6, 7))
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"caption_ids": ids}
    batch.update(head.extra_inputs(batch))
    enc = _encoded()
    enc.extra_text["mlm_ids"] = torch.randn(6, 7, 8)
    out = head(enc, batch)
    # Reference: full-vocabulary logits at every position, CE over the labelled ones.
    x = head.cross_former(enc.extra_text["mlm_ids"], enc.image_tokens)
    logits = head.mlm_head(x)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 30), batch["mlm_labels"].reshape(-1),
                                            ignore_index=IGNORE)
    assert out["loss_mlm"].item() == pytest.approx(ref.item(), rel=1e-5)
    out["loss_mlm"].backward()
    assert enc.image_tokens.grad.abs().sum() > 0  # the cross-attention reaches the image


def test_mlm_batch_share_reconstructs_the_first_captions_only():
    torch.manual_seed(0)
    head = MLMHead(CTX, depth=1, num_heads=2, batch_share=0.5)
    ids = torch.randint(5, 30, (7, 9))
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"caption_ids": ids}
    batch.update(head.extra_inputs(batch))
    assert batch["mlm_ids"].shape == (4, 9) and batch["mlm_labels"].shape == (4, 9)  # ceil(3.5)
    assert torch.equal(batch["mlm_ids"][batch["mlm_labels"] == IGNORE], ids[:4][batch["mlm_labels"] == IGNORE])
    enc = _encoded(7)
    enc.extra_text["mlm_ids"] = torch.randn(4, 9, 8)
    out = head(enc, batch)
    # Reference: the whole-batch head on the first four captions and their images alone.
    logits = head.mlm_head(head.cross_former(enc.extra_text["mlm_ids"], enc.image_tokens[:4]))
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 30), batch["mlm_labels"].reshape(-1),
                                            ignore_index=IGNORE)
    assert out["loss_mlm"].item() == pytest.approx(ref.item(), rel=1e-5)
    out["loss_mlm"].backward()
    assert enc.image_tokens.grad[:4].abs().sum() > 0 and enc.image_tokens.grad[4:].abs().sum() == 0
    assert MLMHead(CTX, depth=1, num_heads=2, batch_share=0.01).reconstructed(7) == 1


def test_a_head_without_forward_cannot_be_built():
    from tbps.heads.base import AlignmentHead

    class Incomplete(AlignmentHead):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(CTX)
