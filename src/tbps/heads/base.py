"""The contract every alignment head follows.

A head is a small ``nn.Module`` that reads the encoder's output (and the batch) and returns
named, already weighted loss terms. Keys starting with ``loss_`` are summed into the
training loss; any other key is a diagnostic that is only logged. A head that needs extra
inputs (masked captions, say) makes them from the batch in ``extra_inputs``; entries whose
key ends in ``_ids`` are encoded by the text tower and reach ``forward`` in
``encoded.extra_text``. The training module knows no head by name.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ..types import EncoderOutput


@dataclass(frozen=True)
class HeadContext:
    """What heads may need to know about the encoder, the tokenizer and the data set."""

    embed_dim: int
    num_classes: int  # training identities
    vocab_size: int
    mask_id: int
    pad_id: int
    special_ids: tuple[int, ...]


class AlignmentHead(nn.Module, metaclass=ABCMeta):
    """Base class: holds the loss weight; subclasses implement ``forward``."""

    def __init__(self, ctx: HeadContext, weight: float = 1.0) -> None:
        super().__init__()
        self.ctx, self.weight = ctx, float(weight)

    def extra_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Extra tensors this head needs, made on the batch's device; none by default."""
        return {}

    @abstractmethod
    def forward(self, encoded: EncoderOutput, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns weighted ``loss_*`` terms and diagnostics for one batch."""
