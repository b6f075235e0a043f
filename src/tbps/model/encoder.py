"""The dual encoder: a timm vision transformer and a transformers CLIP text transformer,
each followed by a linear projection into the joint space (as CLIP and IRRA do)."""

from __future__ import annotations

import timm
import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from ..types import EncoderOutput


class DualEncoder(nn.Module):
    """Encodes images and token ids into token sequences and global features.

    The global image feature is the projected class token; the global text feature is the
    projected token at the first end-of-text id (CLIP's pooling, ``text_pool="eos"``). With
    ``text_pool="mean"`` it is the mean over the caption's tokens instead: a randomly
    initialised causal text tower starts with an end-of-text token that has not yet learnt
    to read the caption, and training from scratch can then sit on a plateau for epochs.
    """

    def __init__(self, vision: nn.Module, text: CLIPTextModel, embed_dim: int, eos_id: int,
                 text_pool: str = "eos") -> None:
        super().__init__()
        if text_pool not in ("eos", "mean"):
            raise ValueError(f"encoder.text_pool must be 'eos' or 'mean', not {text_pool!r}")
        self.vision, self.text, self.text_pool = vision, text, text_pool
        self.vision_proj = nn.Linear(vision.embed_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text.config.hidden_size, embed_dim, bias=False)
        self.embed_dim, self.eos_id = embed_dim, eos_id
        for proj in (self.vision_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> projected tokens [B, 1 + patches, D]."""
        return self.vision_proj(self.vision.forward_features(images))

    def encode_text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> projected tokens [B, L, D] (causal attention, as CLIP)."""
        return self.text_proj(self.text(input_ids=ids).last_hidden_state)

    def text_global(self, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, L, D] tokens -> [B, D] by the configured pooling."""
        if self.text_pool == "mean":
            real = (ids != 0).unsqueeze(-1).to(tokens.dtype)
            return (tokens * real).sum(1) / real.sum(1).clamp(min=1)
        eos = (ids == self.eos_id).int().argmax(dim=-1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), eos]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global image features [B, D], not normalised."""
        return self.encode_image_tokens(images)[:, 0]

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Global text features [B, D], not normalised."""
        return self.text_global(self.encode_text_tokens(ids), ids)

    def forward(self, images: torch.Tensor, ids: torch.Tensor,
                extra_text: dict[str, torch.Tensor] | None = None) -> EncoderOutput:
        img_tokens = self.encode_image_tokens(images)
        txt_tokens = self.encode_text_tokens(ids)
        extra = {k: self.encode_text_tokens(v) for k, v in (extra_text or {}).items()}
        return EncoderOutput(image_tokens=img_tokens, text_tokens=txt_tokens,
                             image_global=img_tokens[:, 0], text_global=self.text_global(txt_tokens, ids),
                             text_mask=ids != 0, extra_text=extra)


def build_dual_encoder(vision: dict, text: dict, embed_dim: int, vocab_size: int,
                       context_length: int, eos_id: int, pad_id: int = 0,
                       bos_id: int = 2, text_pool: str = "eos") -> DualEncoder:
    """Builds a randomly initialised dual encoder of any size.

    ``vision`` is ``{"model": <timm name>, **timm kwargs}`` (e.g. ``img_size``, ``patch_size``,
    ``embed_dim``, ``depth``); ``text`` holds `CLIPTextConfig` fields (``hidden_size``,
    ``num_hidden_layers``, ...). Vocabulary, context and special ids come from the tokenizer.
    """
    vision = dict(vision)
    name = vision.pop("model")
    if "img_size" in vision:
        vision["img_size"] = tuple(vision["img_size"])
    vit = timm.create_model(name, pretrained=False, num_classes=0, **vision)
    cfg = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=context_length,
                         eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=bos_id, **text)
    txt = CLIPTextModel._from_config(cfg, attn_implementation="sdpa")
    return DualEncoder(vit, txt, embed_dim, eos_id, text_pool)
