"""Caption cleaning as a named policy, applied once before tokenisation.

The published methods differ here (``docs/protocol.md`` §2), and the choice moves
numbers, so it is a config key (``data.caption_cleaning``) rather than a silent habit:

- ``none``: IRRA and RDE; only what the tokenizer itself does.
- ``tbps-clip``: TBPS-CLIP's ``pre_caption``: lowercase, ``.!"()*#:;~`` become spaces,
  whitespace collapsed, at most 77 words.
- ``rasa``: RaSa's (ALBEF's) ``pre_caption``: lowercase, ``,.'!?"()*#:;~`` deleted,
  ``-`` and ``/`` become spaces, whitespace collapsed. RaSa also truncates words with a
  config value we have not verified, so no truncation here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import ConfigError

_SPACES = re.compile(r"\s+")
_TBPS_CLIP = re.compile(r'[.!"()*#:;~]')
_RASA_DELETE = re.compile(r"""[,.'!?"()*#:;~]""")


def _none(caption: str) -> str:
    return caption


def _tbps_clip(caption: str, max_words: int = 77) -> str:
    words = _SPACES.sub(" ", _TBPS_CLIP.sub(" ", caption.lower())).strip().split(" ")
    return " ".join(words[:max_words])


def _rasa(caption: str) -> str:
    text = _RASA_DELETE.sub("", caption.lower()).replace("-", " ").replace("/", " ")
    return _SPACES.sub(" ", text).strip()


POLICIES: dict[str, Callable[[str], str]] = {"none": _none, "tbps-clip": _tbps_clip,
                                             "rasa": _rasa}


def clean_captions(captions: list[str], policy: str) -> list[str]:
    if policy not in POLICIES:
        raise ConfigError(f"unknown caption cleaning policy {policy!r} in data.caption_cleaning; "
                          f"choose one of {sorted(POLICIES)}")
    fn = POLICIES[policy]
    return captions if fn is _none else [fn(c) for c in captions]
