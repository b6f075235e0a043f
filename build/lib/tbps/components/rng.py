"""Random draws that compile: ``torch.rand(..., generator=None)`` takes an overload that
needs concrete sizes, so under ``torch.compile`` with a dynamic caption length it fails.
Passing ``generator`` only when there is one keeps the default-generator overload, which
traces with symbolic sizes (and draws exactly the same numbers)."""

from __future__ import annotations

import torch


def generator_kwargs(generator: torch.Generator | None) -> dict:
    return {} if generator is None else {"generator": generator}
