"""tbps: text-based person search with PyTorch Lightning."""

from .model.encoder import DualEncoder

__all__ = ["DualEncoder"]
