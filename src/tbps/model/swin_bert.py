"""ACSA's own backbone, as an option: Swin-T at 224×224 from timm and a frozen BERT-base from
transformers (mul-hjh/ACSA; ``docs/methods.md`` §3), inside the same ``DualEncoder``.

The Swin tower's last stage (7×7 tokens) becomes the token sequence, with the mean of those
tokens in front as the global token (the code's average pool); BERT reads the caption with
its padding masked and its [CLS] token is the caption's global feature. BERT is frozen, as
in the code. Weights come from local files when the user has them (``encoder.swin_weights``:
a timm or official ``swin_tiny_patch4_window7_224`` checkpoint; ``encoder.bert_weights``: a
Hugging Face ``bert-base-uncased`` folder, whose WordPiece vocabulary is then the
tokenizer); without them both start at random weights.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn
from transformers import BertConfig, BertModel

from ..errors import ConfigError


class SwinTokens(nn.Module):
    """A timm Swin model as a token encoder: [B, 3, H, W] -> [B, 1 + h·w, C], the first
    token the mean of the last stage's tokens."""

    def __init__(self, model: str, **kwargs) -> None:
        super().__init__()
        self.swin = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
        self.embed_dim = self.swin.num_features
        h, w = self.swin.patch_embed.grid_size
        stages = len(self.swin.layers)
        self.token_grid = (h // 2 ** (stages - 1), w // 2 ** (stages - 1))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.swin.set_grad_checkpointing(enable)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.swin.forward_features(images)            # [B, h, w, C] (timm's NHWC)
        tokens = x.flatten(1, 2)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], 1)


def build_bert(text: dict, vocab_size: int, context_length: int, pad_id: int) -> BertModel:
    fields = {k: v for k, v in text.items() if k not in ("model", "frozen")}
    cfg = BertConfig(vocab_size=vocab_size, max_position_embeddings=max(512, context_length),
                     pad_token_id=pad_id, **fields)
    bert = BertModel(cfg, add_pooling_layer=False)
    if text.get("frozen", True):
        bert.requires_grad_(False)
    return bert


def load_swin_weights(vision: SwinTokens, path: str | Path) -> None:
    """Loads a Swin-T checkpoint (a state dict, or one under "model"/"state_dict")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"encoder.swin_weights={path}: no such file; give the "
                          "swin_tiny_patch4_window7_224 checkpoint (.pth or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch and safetensors raise many kinds
        raise ConfigError(f"encoder.swin_weights={path} cannot be read ({type(exc).__name__}: "
                          f"{exc}); give a Swin-T checkpoint") from exc
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    sd = {k: v for k, v in sd.items() if not k.startswith("head")}
    # the checkpoint's own layout is converted by timm (official Swin or timm's)
    from timm.models.swin_transformer import checkpoint_filter_fn

    sd = checkpoint_filter_fn(sd, vision.swin)
    missing, unexpected = vision.swin.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "relative_position_index" not in k
               and "attn_mask" not in k and not k.startswith("head")]
    if missing or unexpected:
        raise ConfigError(f"encoder.swin_weights={path} does not hold Swin-T weights (missing "
                          f"{missing[:3]}, unexpected {list(unexpected)[:3]}); give the "
                          "swin_tiny_patch4_window7_224 checkpoint")


def load_bert_weights(text: BertModel, folder: str | Path) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"encoder.bert_weights={folder}: not a folder; give a Hugging Face "
                          "bert-base-uncased folder (config.json, model weights, vocab.txt)")
    try:
        loaded = BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise ConfigError(f"encoder.bert_weights={folder} does not hold BERT weights "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    if loaded.config.hidden_size != text.config.hidden_size or \
            loaded.config.vocab_size != text.config.vocab_size:
        raise ConfigError(f"encoder.bert_weights={folder}: hidden size "
                          f"{loaded.config.hidden_size} / vocabulary {loaded.config.vocab_size} "
                          f"where the encoder has {text.config.hidden_size} / "
                          f"{text.config.vocab_size}")
    text.load_state_dict(loaded.state_dict())
