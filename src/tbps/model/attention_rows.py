"""The last layer's attention row of the global token: [CLS] over the image tokens, [EOT]
over the caption, averaged over heads (what RDE's token selection ranks tokens by).

The towers' fused attention kernels never form the attention matrix, so the row is
recomputed from the last block's queries and keys on that block's input: one extra
[B, H, N] product, the rest of the forward pass is the towers' own.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError


def vit_tokens_with_cls_attention(vit: nn.Module, images: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm VisionTransformer's ``forward_features`` (tokens [B, N, W]) and the last
    block's attention of token 0 over all N tokens [B, N], averaged over heads."""
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not hasattr(blocks[-1], "attn") or not hasattr(blocks[-1].attn, "qkv"):
        raise ConfigError(f"the vision tower {type(vit).__name__} is not a ViT with a class "
                          "token, so it has no [CLS] attention row to select tokens by "
                          "(RDE's TSE): use a ViT encoder (encoder=tiny, vit_b16, clip_vit_b16)")
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
    # activation checkpointing as the tower's own forward_features does it when set
    # (encoder.grad_checkpointing)
    recompute = getattr(vit, "grad_checkpointing", False) and torch.is_grad_enabled()
    for blk in blocks[:-1]:
        x = checkpoint(blk, x, use_reentrant=False) if recompute else blk(x)
    last = blocks[-1]
    attn = last.attn
    h = last.norm1(x)
    b, n, _ = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])                 # [B, H, N, hd]
    row = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)          # [B, H, 1, N]
    weights = row.float().softmax(-1).mean(1)[:, 0]                 # [B, N]
    return vit.norm(last(x)), weights


def clip_text_tokens_with_eos_attention(text: nn.Module, ids: torch.Tensor, eos: torch.Tensor
                                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformers ``CLIPTextModel``'s last hidden state [B, L, W] and the last layer's
    causal attention of the token at ``eos`` [B] over the caption [B, L] (zero after it),
    averaged over heads."""
    inner = getattr(text, "text_model", text)  # transformers nests it in some versions
    layers = getattr(getattr(inner, "encoder", None), "layers", None)
    if layers is None:
        raise ConfigError(f"the text tower {type(text).__name__} is not CLIP's causal "
                          "transformer, so it has no [EOT] attention row to select tokens by "
                          "(RDE's TSE): use a CLIP text tower (encoder=tiny, vit_b16, "
                          "clip_vit_b16)")
    out = text(input_ids=ids, output_hidden_states=True)
    layer = layers[-1]
    h = layer.layer_norm1(out.hidden_states[-2])                    # the last layer's input
    att = layer.self_attn
    b, length, _ = h.shape
    rows = torch.arange(b, device=ids.device)
    q = att.q_proj(h[rows, eos]).view(b, att.num_heads, 1, att.head_dim)
    k = att.k_proj(h).view(b, length, att.num_heads, att.head_dim).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1))[:, :, 0].float() * att.scale  # [B, H, L]
    later = torch.arange(length, device=ids.device)[None, :] > eos[:, None]
    scores = scores.masked_fill(later[:, None], float("-inf"))
    return out.last_hidden_state, scores.softmax(-1).mean(1)
