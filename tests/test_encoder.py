"""The dual encoder: shapes, pooling, and a ViT-B/16-size smoke step."""

from pathlib import Path

import pytest
import torch

from tbps.config import compose_experiment
from tbps.model.encoder import build_dual_encoder

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
TINY_VISION = {"model": "vit_tiny_patch16_224", "img_size": [32, 16], "patch_size": 8,
               "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2}


def test_tokens_and_eos_pooling():
    torch.manual_seed(0)
    enc = build_dual_encoder(TINY_VISION, TINY_TEXT, 16, vocab_size=50, context_length=10, eos_id=3)
    ids = torch.tensor([[2, 7, 8, 3, 0, 0], [2, 9, 3, 0, 0, 0]])
    out = enc(torch.randn(2, 3, 32, 16), ids)
    assert out.image_tokens.shape == (2, 1 + 4 * 2, 16) and out.text_tokens.shape == (2, 6, 16)
    assert torch.equal(out.image_global, out.image_tokens[:, 0])
    assert torch.equal(out.text_global[0], out.text_tokens[0, 3])
    assert torch.equal(out.text_global[1], out.text_tokens[1, 2])
    # Causal attention: what follows the end-of-text token does not change the feature.
    longer = torch.tensor([[2, 7, 8, 3, 11, 12]])
    assert torch.allclose(enc.encode_text(longer), enc.encode_text(ids[:1]), atol=1e-6)


def test_mean_pooling_ignores_padding():
    torch.manual_seed(0)
    enc = build_dual_encoder(TINY_VISION, TINY_TEXT, 16, 50, 10, 3, text_pool="mean")
    ids = torch.tensor([[2, 7, 3, 0]])
    tokens = enc.encode_text_tokens(ids)
    assert torch.allclose(enc.text_global(tokens, ids), tokens[0, :3].mean(0, keepdim=True))
    with pytest.raises(ValueError, match="text_pool"):
        build_dual_encoder(TINY_VISION, TINY_TEXT, 16, 50, 10, 3, text_pool="max")


def test_vit_b16_architecture_one_training_step():
    """The CLIP ViT-B/16 shape at 384x128 (24x8 patches) and the 12-layer text tower."""
    cfg = compose_experiment("synthetic", ["encoder=vit_b16", "data.image_size=[384,128]"],
                             folder=EXPERIMENTS)
    torch.manual_seed(0)
    enc = build_dual_encoder(cfg.encoder.vision, cfg.encoder.text, cfg.encoder.embed_dim,
                             vocab_size=49408, context_length=77, eos_id=49407)
    n_params = sum(p.numel() for p in enc.parameters())
    assert 140e6 < n_params < 160e6  # CLIP ViT-B/16 has about 150M
    ids = torch.randint(1, 49000, (2, 77))
    ids[:, 20] = 49407
    out = enc(torch.randn(2, 3, 384, 128), ids)
    assert out.image_tokens.shape == (2, 1 + 24 * 8, 512)
    loss = out.image_global.pow(2).mean() + out.text_global.pow(2).mean()
    loss.backward()
    assert enc.vision.patch_embed.proj.weight.grad.abs().sum() > 0
