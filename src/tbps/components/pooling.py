"""How a caption's token sequence becomes one feature: the encoder's global text feature and
ACSA's separately encoded phrases pool the same way, so a BERT tower is read at [CLS] and
CLIP's causal one at its end-of-text token in both."""

from __future__ import annotations

import torch


def caption_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, L] bool: each caption's positions up to its end-of-text token. Not ``ids != 0``:
    CLIP pads with 0, which is also the id of "!"."""
    eos = (ids == eos_id).int().argmax(dim=-1, keepdim=True)
    return torch.arange(ids.shape[1], device=ids.device) <= eos


def pool_text(tokens: torch.Tensor, ids: torch.Tensor, pool: str, eos_id: int) -> torch.Tensor:
    """[B, L, D] tokens of the captions ``ids`` -> [B, D]: the first token (``"cls"``, BERT's
    [CLS]), the mean over the caption's tokens (``"mean"``), or the token at the first
    end-of-text id (``"eos"``, CLIP's pooling)."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "mean":
        real = caption_mask(ids, eos_id).unsqueeze(-1).to(tokens.dtype)
        return (tokens * real).sum(1) / real.sum(1).clamp(min=1)
    eos = (ids == eos_id).int().argmax(dim=-1)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), eos]
