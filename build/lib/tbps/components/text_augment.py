"""Caption augmentation on token ids: random word masking, deletion and replacement.

CRUE's figure shows "Random Mask/delete/replace" on the online encoder's caption; the
probabilities are not published (``docs/methods.md`` §2). PROPOSAL: each content
token independently is masked, deleted or replaced with probability ``mask``, ``delete``
and ``replace`` (0.05 each by default); deleted tokens close up and the tail is padded;
a caption never loses all of its content tokens. It runs on the device, on whole batches.
"""

from __future__ import annotations

import torch
from torch import nn

from .rng import generator_kwargs


def augment_caption_ids(ids: torch.Tensor, special_ids: tuple[int, ...], mask_id: int,
                        pad_id: int, replacements: torch.Tensor, p_mask: float,
                        p_delete: float, p_replace: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    special = torch.tensor(special_ids, device=ids.device)
    content = ~torch.isin(ids, special)
    rng = generator_kwargs(generator)
    u = torch.rand(ids.shape, device=ids.device, **rng)
    do_mask = content & (u < p_mask)
    do_delete = content & (u >= p_mask) & (u < p_mask + p_delete)
    do_replace = content & (u >= p_mask + p_delete) & (u < p_mask + p_delete + p_replace)
    # never delete every content token of a caption
    do_delete &= ~((content & ~do_delete).sum(1, keepdim=True) == 0)
    pick = torch.randint(len(replacements), ids.shape, device=ids.device, **rng)
    out = torch.where(do_mask, torch.full_like(ids, mask_id), ids)
    out = torch.where(do_replace, replacements.to(ids.device)[pick], out)
    # close up deletions: a stable sort puts kept tokens first, in order
    order = torch.sort(do_delete.int(), dim=1, stable=True).indices
    out = torch.gather(out, 1, order)
    kept = (~do_delete).sum(1, keepdim=True)
    tail = torch.arange(ids.shape[1], device=ids.device) >= kept
    return torch.where(tail, torch.full_like(ids, pad_id), out)


class CaptionAugment(nn.Module):
    def __init__(self, special_ids: tuple[int, ...], mask_id: int, pad_id: int,
                 replacements: torch.Tensor, mask: float = 0.05, delete: float = 0.05,
                 replace: float = 0.05) -> None:
        super().__init__()
        if mask + delete + replace > 1:
            raise ValueError("text_augment: mask + delete + replace must be at most 1")
        self.special_ids, self.mask_id, self.pad_id = tuple(special_ids), mask_id, pad_id
        self.p = (mask, delete, replace)
        self.register_buffer("replacements", replacements, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return augment_caption_ids(ids, self.special_ids, self.mask_id, self.pad_id,
                                   self.replacements, *self.p)
