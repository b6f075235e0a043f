"""ACSA's two sides as token sets: the 7 image tokens at several scales (the grid's stripes
and halves, or the official code's channel parts) with the rows of the grid each pools from,
and a caption's phrases (pooled over their tokens, or each made a caption of its own)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

NUM_IMAGE_TOKENS = 7


def scale_basis(part_mode: str, grid: tuple[int, int]) -> tuple[list[int], torch.Tensor]:
    """Which of the 7 scale tokens span them all, and M [7, b] with tokens = M · those.
    Stripes: a half is the row-weighted mean of the two stripes it covers when the grid's
    rows split so (24 rows: 6 + 6 = 12); otherwise all 7 are kept. Channel split: the first
    token is the mean of the other six."""
    eye = torch.eye(NUM_IMAGE_TOKENS)
    if part_mode == "channel_split":
        mix = eye[:, 1:].clone()
        mix[0] = 1 / 6
        return list(range(1, 7)), mix
    stripes = [len(r) for r in torch.tensor_split(torch.arange(grid[0]), 4)]
    halves = [len(r) for r in torch.tensor_split(torch.arange(grid[0]), 2)]
    if stripes[0] + stripes[1] != halves[0]:
        return list(range(NUM_IMAGE_TOKENS)), eye
    mix = eye[:, :5].clone()
    for half, (a, b) in enumerate(((1, 2), (3, 4))):
        mix[5 + half, a] = stripes[a - 1] / halves[half]
        mix[5 + half, b] = stripes[b - 1] / halves[half]
    return list(range(5)), mix


def stripe_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch tokens [B, 1 + gh·gw, D] -> (4 horizontal stripes [B, 4, D], 2 halves [B, 2, D]),
    each the mean of its rows of patches."""
    gh, gw = grid
    patches = rearrange(tokens[:, -gh * gw:], "b (h w) d -> b h w d", h=gh, w=gw)
    rows = patches.mean(2)                                                  # [B, gh, D]
    stripes = torch.stack([r.mean(1) for r in torch.tensor_split(rows, 4, dim=1)], 1)
    halves = torch.stack([r.mean(1) for r in torch.tensor_split(rows, 2, dim=1)], 1)
    return stripes, halves


def scale_regions(grid: tuple[int, int]) -> torch.Tensor:
    """Where each of the 7 image tokens pools from, as rows of the patch grid [7, gh], each
    row summing to 1: the global token the whole image, the stripes their quarter of the
    rows, the halves their half. (With ``part_mode=channel_split`` the part tokens are
    channel groups; they are drawn at these nominal body regions, head to feet.)"""
    gh = grid[0]
    regions = torch.zeros(NUM_IMAGE_TOKENS, gh)
    regions[0] = 1.0
    for j, rows in enumerate(torch.tensor_split(torch.arange(gh), 4)):
        regions[1 + j, rows] = 1.0
    for j, rows in enumerate(torch.tensor_split(torch.arange(gh), 2)):
        regions[5 + j, rows] = 1.0
    return regions / regions.sum(1, keepdim=True)


def region_maps(weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Weights over the 7 image tokens [P, 7] -> maps [P, gh, gw]: each token's weight
    spread evenly over the rows it pools (``scale_regions``)."""
    rows = weights @ scale_regions(grid).to(weights.device)                # [P, gh]
    return rows[:, :, None].expand(-1, *grid)


class ChannelParts(nn.Module):
    """The official code's part tokens: a residual block over the global feature, split into
    6 channel chunks; head = chunks 0-1, upper = 1-2, lower = 3-4, feet = 5, each through
    FC + ReLU + Dropout(0.5)."""

    GROUPS = ((0, 1), (1, 2), (3, 4), (5,))

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(),
                                   nn.Linear(dim, dim), nn.BatchNorm1d(dim))
        sizes = [len(c) for c in torch.tensor_split(torch.arange(dim), 6)]
        self.fcs = nn.ModuleList(
            nn.Sequential(nn.Linear(sum(sizes[i] for i in g), dim), nn.ReLU(), nn.Dropout(0.5))
            for g in self.GROUPS)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = F.relu(feature + self.block(feature))
        chunks = torch.tensor_split(x, 6, dim=-1)
        return torch.stack([fc(torch.cat([chunks[i] for i in g], -1))
                            for fc, g in zip(self.fcs, self.GROUPS)], 1)         # [B, 4, D]


def span_pool(tokens: torch.Tensor, phrases: torch.Tensor, num_phrases: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token features [B, L, D] and the ``phrases`` annotation [B, L] (0, or p ≥ 1 on the
    p-th phrase's tokens) -> (phrase features [B, P, D], mask [B, P])."""
    member = F.one_hot(phrases.clamp(max=num_phrases + 1), num_phrases + 2)[..., 1:-1]
    member = member.to(tokens.dtype)                                          # [B, L, P]
    count = member.sum(1)                                                     # [B, P]
    pooled = torch.einsum("blp,bld->bpd", member, tokens) / count.clamp(min=1)[..., None]
    return pooled, count > 0


def phrase_token_ids(ids: torch.Tensor, phrases: torch.Tensor, num_phrases: int,
                     length: int, sos_id: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Each phrase as a caption of its own, for ``phrase_mode: separate``: [B·P, length] ids
    "start, the phrase's tokens, end", padded (cut to ``length``). Fixed shapes."""
    b, seq = ids.shape
    slot = torch.arange(1, num_phrases + 1, device=ids.device)
    member = phrases[:, None, :] == slot[None, :, None]                      # [B, P, L]
    rank = member.long().cumsum(-1)                                           # 1-based
    keep = member & (rank <= length - 2)
    out = torch.full((b, num_phrases, length + 1), pad_id, dtype=ids.dtype, device=ids.device)
    where = torch.where(keep, rank, torch.full_like(rank, length))            # dump column
    out.scatter_(2, where, ids[:, None, :].expand(-1, num_phrases, -1))
    out = out[..., :length]
    out[..., 0] = sos_id
    n = keep.sum(-1, keepdim=True)                                            # [B, P, 1]
    out.scatter_(2, n + 1, torch.full_like(n, eos_id))
    return rearrange(out, "b p l -> (b p) l")
