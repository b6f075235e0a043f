"""Loading a trained model from a `tbps train` checkpoint, with one clear error otherwise."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .module import TBPSModule


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> TBPSModule:
    """The whole model (encoder, heads, tokenizer, config) from a checkpoint, loaded with
    ``weights_only=True``; anything that is not a tbps checkpoint is refused by name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found; pass a checkpoints/best.ckpt or "
                          "last.ckpt written by `tbps train`")
    try:
        return TBPSModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch, pickle and Lightning raise many kinds for foreign files
        raise ConfigError(f"{path} is not a tbps checkpoint ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); pass a checkpoints/best.ckpt or last.ckpt "
                          "written by `tbps train`") from exc
