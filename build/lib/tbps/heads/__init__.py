"""Alignment heads: one file each; experiments pick them by config (``heads: [sdm, id, mlm]``)."""

from .base import AlignmentHead, HeadContext

__all__ = ["AlignmentHead", "HeadContext"]
