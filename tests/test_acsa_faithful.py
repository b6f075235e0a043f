"""ACSA's faithful recipe as the official code runs it (mul-hjh/ACSA): each difference from
our CLIP recipe is a key whose default in `acsa_faithful_*` is the code's behaviour, and
each key does what the code does."""

from pathlib import Path

import pytest
import torch
from torch import nn

from tbps.components.pooling import pool_text
from tbps.config import compose_experiment
from tbps.heads.acsa import ACSAHead
from tbps.heads.base import HeadContext
from tbps.model.encoder import build_dual_encoder
from tbps.model.optim import uniform_param_groups

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("name", ["acsa_faithful_cuhk", "acsa_faithful_rstp"])
def test_faithful_recipes_set_the_codes_behaviour(name, monkeypatch):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    cfg = compose_experiment(name, [])
    assert cfg.encoder.global_bottleneck is True                       # models/model.py
    a = cfg.heads.acsa
    assert (a.part_mode, a.phrase_mode, a.phrase_length, a.test_phrase_length) == (
        "channel_split", "separate", 40, 24)                              # train.py, test.py
    assert dict(cfg.data.augment) == {"flip": 0.5, "pad": 0, "erase": 0.0}  # flips only
    o = cfg.optim
    assert (o.param_rule, o.weight_decay, o.lr) == ("uniform", 0.05, 8e-5)
    assert (cfg.heads.cmpm.off_below, cfg.heads.cmpc.weight, a.weight) == (0.5, 4.0, 0.1)
    # our CLIP recipe keeps its own choices
    ours = compose_experiment(name.replace("_faithful", ""), [])
    assert ours.encoder.get("global_bottleneck", False) is False
    assert ours.heads.acsa.phrase_mode == "span" and ours.optim.param_rule == "irra"


def _encoder(bottleneck: bool, pool: str = "eos"):
    torch.manual_seed(0)
    return build_dual_encoder(
        {"model": "vit_tiny_patch16_224", "img_size": (32, 16), "embed_dim": 16, "depth": 1,
         "num_heads": 2}, {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2}, embed_dim=8, vocab_size=30, context_length=12,
        eos_id=3, text_pool=pool, global_bottleneck=bottleneck)


def test_global_bottleneck_is_the_codes_batchnorm_on_both_global_features():
    enc = _encoder(True).train()
    images = torch.randn(6, 3, 32, 16)
    ids = torch.tensor([[2, 5 + i, 7, 3] + [0] * 8 for i in range(6)])
    out = enc(images, ids)
    raw_img = enc.vision_proj(enc.vision.forward_features(images))
    raw_txt = enc.text_proj(enc.text(input_ids=ids).last_hidden_state)

    def batchnorm(x):  # weight 1, bias 0 (the code's init), the batch's own statistics
        return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)

    torch.testing.assert_close(out.image_global, batchnorm(raw_img[:, 0]))
    torch.testing.assert_close(out.image_tokens[:, 1:], raw_img[:, 1:])  # patches untouched
    torch.testing.assert_close(out.text_global, batchnorm(pool_text(raw_txt, ids, "eos", 3)))
    for norm in enc.bottleneck.values():  # the code freezes the bias
        assert not norm.bias.requires_grad and norm.weight.requires_grad
    # at inference the running statistics, in retrieval as in the losses
    enc.eval()
    n = enc.bottleneck["image"]
    want = (raw_img[:, 0] - n.running_mean) / torch.sqrt(n.running_var + 1e-5)
    torch.testing.assert_close(enc.encode_image(images), want)
    # off (every other recipe): the features as before, no new keys in a checkpoint
    plain = _encoder(False)
    assert not any("bottleneck" in k for k in plain.state_dict())
    torch.testing.assert_close(plain.encode_image(images),
                               plain.vision_proj(plain.vision.forward_features(images))[:, 0])


def _head(pool: str, **kw) -> ACSAHead:
    ctx = HeadContext(8, 2, 30, 4, 0, (0, 1, 2, 3, 4), sos_id=2, eos_id=3,
                      image_grid=(4, 2), text_pool=pool)
    return ACSAHead(ctx, num_phrases=3, phrase_mode="separate", **kw)


@pytest.mark.parametrize("pool", ["cls", "eos"])
def test_separate_phrases_are_read_where_the_encoder_reads_a_caption(pool):
    head = _head(pool)
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3, 0]])
    phrases = torch.tensor([[0, 1, 1, 0, 2, 2, 0, 0]])
    phrase_ids = head._phrase_ids(ids, phrases)
    tokens = torch.randn(len(phrase_ids), phrase_ids.shape[1], 8)
    feats, mask = head._phrases(torch.randn(1, 8, 8), phrases, tokens, phrase_ids)
    assert mask.tolist() == [[True, True, False]]
    for p in range(2):
        row = phrase_ids[p].tolist()
        at = 0 if pool == "cls" else row.index(3)   # BERT's [CLS] (the code), CLIP's end
        torch.testing.assert_close(feats[0, p], tokens[p, at])


def test_phrases_are_cut_at_40_tokens_in_training_and_24_at_test():
    head = _head("cls", phrase_length=40, test_phrase_length=24)
    ids = torch.tensor([[2, *range(10, 40), 3] + [0] * 8])                # a 30-token phrase
    phrases = torch.tensor([[0] + [1] * 30 + [0] * 9])
    train_ids = head.train()._phrase_ids(ids, phrases)
    test_ids = head.eval()._phrase_ids(ids, phrases)
    assert train_ids.shape[1] == 40 and test_ids.shape[1] == 24
    assert train_ids[0].tolist()[:32] == [2, *range(10, 40), 3]            # all of it
    assert test_ids[0].tolist() == [2, *range(10, 32), 3]                  # 22 tokens kept
    assert _head("eos")._phrase_ids(ids, phrases).shape[1] == 24           # default: 24 both


def test_uniform_rule_decays_every_parameter_biases_included():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.BatchNorm1d(4))
    model[2].bias.requires_grad_(False)
    [group] = uniform_param_groups(model, lr=8e-5, weight_decay=0.05)
    assert (group["lr"], group["weight_decay"]) == (8e-5, 0.05)
    assert {id(p) for p in group["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad}
    assert len(group["params"]) == 5
