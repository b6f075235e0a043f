"""Momentum (EMA) copies of the encoders and memory queues of their features.

As in MoCo / ALBEF / RaSa: the momentum encoder follows the online one with
θ_m ← m·θ_m + (1 − m)·θ and is never trained; its L2-normalised features of each batch are
gathered from every rank and enqueued FIFO, with their person ids, into fixed-size queues.
Queues and the momentum weights are registered buffers / parameters, so checkpoints carry
them. Empty slots have pid −100 and are masked out of every softmax.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import world_size

EMPTY = -100


class EncoderCopy(nn.Module):
    """A module that keeps its own copy of the online encoder. Whatever is loaded into the
    encoder before training (CLIP weights) must reach every copy: ``TBPSModule`` calls
    ``copy_from`` on each one after loading. Later methods that copy the encoder subclass
    this and get the same guarantee."""

    encoder: nn.Module

    @torch.no_grad()
    def copy_from(self, online: nn.Module) -> None:
        """Sets the copy's weights and buffers to the online encoder's."""
        self.encoder.load_state_dict(online.state_dict())


class MomentumEncoder(EncoderCopy):
    def __init__(self, online: nn.Module, momentum: float = 0.995) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        # The tokenizer (a plain attribute) is shared, not copied.
        memo = {id(getattr(online, "tokenizer", None)): getattr(online, "tokenizer", None)}
        self.encoder = copy.deepcopy(online, memo)
        self.encoder.requires_grad_(False)
        self.momentum = momentum

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """θ_m ← m·θ_m + (1 − m)·θ for every parameter."""
        mine = [p for p in self.encoder.parameters()]
        theirs = [p.detach() for p in online.parameters()]
        torch._foreach_lerp_(mine, theirs, 1.0 - self.momentum)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Rank-ordered concatenation of ``x`` from every process (no gradient)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@dataclass
class MemoryView:
    """What memory-based heads read in one step. ``keys_*`` are the gathered momentum
    features of the current global batch followed by the queue (RaSa's layout), so every
    sample has at least its own pair among the keys."""

    image: torch.Tensor       # [B, D] momentum image features of this rank's batch (normalised)
    text: torch.Tensor        # [B, D] momentum text features of the clean captions
    keys_image: torch.Tensor  # [K, D]
    keys_text: torch.Tensor   # [K, D]
    keys_pid: torch.Tensor    # [K] person labels, EMPTY for unused slots
    keys_valid: torch.Tensor  # [K] bool


class FeatureMemory(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("pid", torch.full((size,), EMPTY, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def view(self, image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor) -> MemoryView:
        """Normalises this rank's momentum features and lays out the keys."""
        image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
        g_img, g_txt, g_pid = (all_gather_no_grad(image), all_gather_no_grad(text),
                               all_gather_no_grad(pid))
        keys_pid = torch.cat([g_pid, self.pid])
        return MemoryView(image, text, torch.cat([g_img, self.image]),
                          torch.cat([g_txt, self.text]), keys_pid, keys_pid != EMPTY)

    @torch.no_grad()
    def enqueue(self, view: MemoryView, admitted: torch.Tensor | None = None) -> None:
        """Writes the global batch's momentum features (the first keys of ``view``) at the
        pointer, wrapping around; every rank writes the same, so queues stay identical.
        ``admitted`` [B] (this rank's pairs): the others are written as empty slots, so no
        head reads them as a key of their labelled identity."""
        n = view.keys_pid.shape[0] - self.size
        image, text, pid = view.keys_image[:n], view.keys_text[:n], view.keys_pid[:n]
        if admitted is not None:
            every = all_gather_no_grad(admitted.to(torch.uint8)).bool()  # gloo: no bool
            pid = torch.where(every, pid, torch.full_like(pid, EMPTY))
        n = min(n, self.size)
        idx = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        self.image[idx] = image[-n:].to(self.image.dtype)
        self.text[idx] = text[-n:].to(self.text.dtype)
        self.pid[idx] = pid[-n:]
        self.ptr.copy_((self.ptr + n) % self.size)
