"""tbps: text-based person search with PyTorch Lightning.

``DualEncoder`` is imported on first use (PEP 562), so that ``tbps --help`` and the
commands that need no model do not pay for torch, timm and transformers."""

import time

__all__ = ["DualEncoder"]

# When the package was first imported: `tbps train` reports its whole wall time from here
# (start-up, imports, data generation, training and test), not only the fit.
STARTED = time.perf_counter()


def __getattr__(name: str):
    if name == "DualEncoder":
        from .model.encoder import DualEncoder

        return DualEncoder
    raise AttributeError(f"module 'tbps' has no attribute {name!r}")
