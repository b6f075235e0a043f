"""RDE's token selection embedding (TSE; Qin et al., CVPR 2024, ``model/CrossEmbeddingLayer_tse.py``).

The global token's last-layer attention row ranks the other tokens; the top ``ratio`` of
them are L2-normalised, mapped by a two-layer MLP (BatchNorm, ReLU) plus a linear skip,
and max-pooled into one embedding. As RDE's code does:

- images: ``k = int((N - 1) · ratio)`` of the N tokens, the class token itself excluded;
  the pool runs over all k;
- captions: ``k = int((context_length - 2) · ratio)``, start and end tokens excluded and
  positions after the end weighted 0; the MLP sees all k selected rows (padding included,
  as the code's BatchNorm statistics do) and the pool only the caption's best
  ``min(k, tokens in the caption)``. Our batches are cut after their longest caption, so a
  batch shorter than k selects ``min(k, L)``: the pooled embedding is the same, the
  BatchNorm statistics in training see fewer padding rows than the code's (identical on
  uncut batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def l2norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / (‖x‖ + eps) over the last dimension, RDE's normalisation (eps outside the root)."""
    return x / (x.pow(2).sum(-1, keepdim=True).sqrt() + eps)


class TokenSelectionEmbedding(nn.Module):
    """One modality's TSE: tokens [B, N, D] + attention row [B, N] -> embedding [B, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int = 1024, ratio: float = 0.3) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"select_ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.skip = nn.Linear(in_dim, out_dim)      # the code's `fc` (image) / `linear` (text)
        self.hidden = nn.Linear(in_dim, out_dim // 2)
        self.norm = nn.BatchNorm1d(out_dim // 2)
        self.out = nn.Linear(out_dim // 2, out_dim)  # the code builds a BatchNorm after it, unused

    def embed(self, selected: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Selected tokens [B, k, D] (best first) -> max over each row's first ``lengths``."""
        x = l2norm(selected.float())
        b, k, d = x.shape
        flat = x.reshape(b * k, d)
        mapped = self.out(F.relu(self.norm(self.hidden(flat)))) + self.skip(flat)
        mapped = mapped.view(b, k, -1)
        beyond = torch.arange(k, device=x.device)[None, :] >= lengths[:, None]
        return mapped.masked_fill(beyond[..., None], float("-inf")).amax(1)

    def forward_image(self, tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        k = max(1, int((n - 1) * self.ratio))
        scores = attention.clone()
        scores[:, 0] = -1.0                                   # never the class token itself
        top = scores.topk(k, dim=-1).indices                  # best first
        selected = tokens.gather(1, top[..., None].expand(-1, -1, tokens.shape[2]))
        return self.embed(selected, torch.full((len(tokens),), k, device=tokens.device))

    def forward_text(self, tokens: torch.Tensor, attention: torch.Tensor, ids: torch.Tensor,
                     eos_id: int, context_length: int) -> torch.Tensor:
        b, length = ids.shape
        k = min(max(1, int((context_length - 2) * self.ratio)), length)
        rows = torch.arange(b, device=ids.device)
        eos = (ids == eos_id).int().argmax(-1)
        inside = torch.arange(length, device=ids.device)[None, :] <= eos[:, None]
        scores = attention.clone()
        scores[rows, eos] = -1.0                              # neither the end token
        scores[:, 0] = -1.0                                   # nor the start token
        scores = scores * inside                              # after the end: 0
        top = scores.topk(k, dim=-1).indices
        selected = tokens.gather(1, top[..., None].expand(-1, -1, tokens.shape[2]))
        lengths = (eos - 1).clamp(min=1, max=k)               # the caption's own tokens
        return self.embed(selected, lengths)
