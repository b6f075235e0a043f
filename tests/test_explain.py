"""`TBPSModule.explain`: where each phrase of a caption looks in an image, through the head
contract (``AlignmentHead.explain``), checked against slow obvious recomputations for a
model with IRRA's MLM head, one with ACSA, and one with neither (token similarity)."""

import math

import pytest
import torch
from conftest import tiny_module

from tbps.data.phrases import extract_phrases

CAPTION = "A woman in a red striped coat and blue jeans, carrying a black backpack."


def _module(tiny_synth, tmp_path, experiment: str, *extra):
    module, dm = tiny_module(tiny_synth, tmp_path, experiment, *extra)
    return module, next(iter(dm._eval_loaders("test")[0]))["image"][0]


def _phrase_positions(module, caption, phrases=None):
    """Token positions of each phrase (the chunker's, or ``phrases``), found by matching its
    own tokens inside the caption's (not through the annotation the module reads)."""
    tok = module.tokenizer
    ids = tok.encode([caption])[0].tolist()
    out = []
    texts = phrases or [p.text for p in extract_phrases(tok.prepare(caption)).phrases]
    for text in texts:
        want = [i for i in tok.encode([text])[0].tolist() if i not in tok.special_ids]
        start = next(s for s in range(len(ids)) if ids[s:s + len(want)] == want)
        out.append(list(range(start, start + len(want))))
    return out


def _scaled(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(r - r.min()) / max(float(r.max() - r.min()), 1e-8) for r in rows])


def _check(found, module, reference):
    gh, gw = module.encoder.grid_size
    assert found.maps.shape == (len(reference), gh, gw)
    torch.testing.assert_close(found.maps.flatten(1), reference, atol=2e-5, rtol=1e-4)
    assert float(found.maps.amin()) == 0.0 and float(found.maps.amax()) == 1.0


def _explained(tiny_synth, tmp_path, experiment: str, source: str):
    module, image = _module(tiny_synth, tmp_path, experiment)
    found = module.explain(image, CAPTION)
    assert found.source == source
    assert found.phrases == ["a red striped coat", "blue jeans", "a black backpack"]
    return module, image, found


def _mlm_reference(module, image, caption, phrases=None):
    """Each phrase's mean over its tokens of the head-averaged cross-attention over the
    patches, written out from the attention layer's weights, scaled to [0, 1]."""
    mlm, enc = module.heads["mlm"], module.encoder
    text = mlm.ln_text(enc.encode_text_tokens(module.tokenizer.encode([caption])))[0]
    patches = mlm.ln_image(enc.encode_image_tokens(image[None]))[0]
    attn, (gh, gw) = mlm.cross_attn, enc.grid_size
    d, heads = text.shape[-1], attn.num_heads
    wq, wk, _ = attn.in_proj_weight.split(d)
    bq, bk, _ = attn.in_proj_bias.split(d)
    q, k = (text @ wq.t() + bq), (patches @ wk.t() + bk)
    rows = []
    for positions in _phrase_positions(module, caption, phrases):
        per_token = []
        for t in positions:  # softmax over all image tokens, per head, then head mean
            dh = d // heads
            w = torch.stack([torch.softmax(q[t, h * dh:(h + 1) * dh] @ k[:, h * dh:(h + 1) * dh].t()
                                           / math.sqrt(dh), -1) for h in range(heads)]).mean(0)
            per_token.append(w[-gh * gw:])
        rows.append(torch.stack(per_token).mean(0))
    return _scaled(rows)


@torch.no_grad()
def test_mlm_model_explains_with_its_cross_attention(tiny_synth, tmp_path):
    module, image, found = _explained(tiny_synth, tmp_path, "synthetic",
                                      "cross-attention of the MLM head")
    _check(found, module, _mlm_reference(module, image, CAPTION))
    # words of the user's choice (the notebook's word_regions), in the order given
    chosen = module.explain(image, CAPTION, ["BLUE", "striped coat"])
    assert chosen.phrases == ["blue", "striped coat"]
    _check(chosen, module, _mlm_reference(module, image, CAPTION, ["blue", "striped coat"]))
    with pytest.raises(ValueError, match="'green' is not in the caption"):
        module.explain(image, CAPTION, ["green"])
    with pytest.raises(ValueError, match="is not in the caption"):
        module.explain(image, CAPTION, ["blu"])  # whole words only


@torch.no_grad()
def test_acsa_model_explains_with_its_phrase_to_scale_attention(tiny_synth, tmp_path):
    module, image, found = _explained(tiny_synth, tmp_path, "acsa_synthetic",
                                      "ACSA's phrase-to-scale attention")
    head, enc = module.heads["acsa"], module.encoder
    batch = module.query_batch([CAPTION])
    weights = head.phrase_token_attention(enc.encode_image_tokens(image[None]),
                                          enc.encode_text_tokens(batch["caption_ids"]), batch, enc)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    gh, gw = enc.grid_size
    stripes = [list(r) for r in torch.tensor_split(torch.arange(gh), 4)]
    halves = [list(r) for r in torch.tensor_split(torch.arange(gh), 2)]
    rows = []
    for w in weights:
        heat = torch.zeros(gh, gw)
        for r in range(gh):  # each token spreads its weight evenly over the rows it pools
            heat[r] += w[0] / gh
            heat[r] += sum(w[1 + j] / len(s) for j, s in enumerate(stripes) if r in s)
            heat[r] += sum(w[5 + j] / len(s) for j, s in enumerate(halves) if r in s)
        rows.append(heat.flatten())
    _check(found, module, _scaled(rows))


@torch.no_grad()
def test_a_model_without_such_a_head_explains_by_token_similarity(tiny_synth, tmp_path):
    module, image = _module(tiny_synth, tmp_path, "clip_synthetic")
    found = module.explain(image, CAPTION)
    assert found.source.startswith("token similarity")
    enc = module.encoder
    text = enc.encode_text_tokens(module.tokenizer.encode([CAPTION]))[0]
    gh, gw = enc.grid_size
    patches = enc.encode_image_tokens(image[None])[0, -gh * gw:]
    rows = []
    for positions in _phrase_positions(module, CAPTION):
        mean = text[positions].mean(0)
        rows.append(torch.stack([torch.cosine_similarity(mean, p, dim=0).clamp(min=0)
                                 for p in patches]))
    _check(found, module, _scaled(rows))


@torch.no_grad()
def test_a_caption_without_phrases_is_one_phrase(tiny_synth, tmp_path):
    module, image = _module(tiny_synth, tmp_path, "synthetic")
    found = module.explain(image, "somebody walking")
    assert found.phrases == ["somebody walking"] and found.maps.shape[0] == 1


def test_explain_is_part_of_every_heads_contract():
    from tbps.heads.base import AlignmentHead

    class Quiet(AlignmentHead):
        def forward(self, encoded, batch):
            return {}

    assert Quiet.explain(None, None, None, {}, None) is None
