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
    return A.Compose([resize(size), *augment_steps(size, mean, std, flip, pad, erase)])


def resize(size: tuple[int, int]) -> A.Resize:
    """The deterministic first step of both pipelines (what ``data.cache_images`` keeps)."""
    return A.Resize(*size, interpolation=cv2.INTER_LINEAR)


def augment_transform(size: tuple[int, int], mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD,
                      flip: float = 0.5, pad: int = 10, erase: float = 0.5) -> A.Compose:
    """``train_transform`` without its resize, for images already resized: the same random
    draws for the same seed, so a cached image gives the same tensor as a decoded one."""
    return A.Compose(augment_steps(size, mean, std, flip, pad, erase))


def augment_steps(size: tuple[int, int], mean: tuple, std: tuple, flip: float, pad: int,
                  erase: float) -> list:
    h, w = size
    return [
        A.HorizontalFlip(p=flip),
        A.PadIfNeeded(h + 2 * pad, w + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(h, w),
        A.Normalize(mean=mean, std=std),
        A.Erasing(scale=(0.02, 0.4), fill=0, p=erase),  # 0 after normalising = the mean colour
        ToTensorV2(),
    ]


def eval_transform(size: tuple[int, int], mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD) -> A.Compose:
    return A.Compose([resize(size), *normalise_steps(mean, std)])


def normalise_transform(mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD) -> A.Compose:
    """``eval_transform`` without its resize, for images already resized (the cache)."""
    return A.Compose(normalise_steps(mean, std))


def normalise_steps(mean: tuple, std: tuple) -> list:
    return [A.Normalize(mean=mean, std=std), ToTensorV2()]
