"""Image pipelines with albumentations: IRRA's training augmentation and plain evaluation."""

from __future__ import annotations

from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2
from pydantic import ConfigDict, with_config

from ..settings_types import NonNegativeInt, Rate

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@with_config(ConfigDict(extra="forbid"))
class Augment(TypedDict, total=False):
    """``data.augment``: the training augmentation's knobs (``train_transform``)."""

    flip: Rate
    pad: NonNegativeInt
    erase: Rate


def train_transform(size: tuple[int, int], mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD,
                    flip: float = 0.5, pad: int = 10, erase: float = 0.5) -> A.Compose:
    """Resize, horizontal flip, pad-and-crop, normalise, random erasing (IRRA's --img_aug)."""
    h, w = size
    return A.Compose([
        A.Resize(h, w, interpolation=cv2.INTER_LINEAR),
        A.HorizontalFlip(p=flip),
        A.PadIfNeeded(h + 2 * pad, w + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(h, w),
        A.Normalize(mean=mean, std=std),
        A.Erasing(scale=(0.02, 0.4), fill=0, p=erase),  # 0 after normalising = the mean colour
        ToTensorV2(),
    ])


def eval_transform(size: tuple[int, int], mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD) -> A.Compose:
    h, w = size
    return A.Compose([A.Resize(h, w, interpolation=cv2.INTER_LINEAR),
                      A.Normalize(mean=mean, std=std), ToTensorV2()])
