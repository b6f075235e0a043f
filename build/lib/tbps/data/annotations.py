"""Per-caption token annotations that heads ask for, made once when the data module
tokenises (never per epoch) and carried in the training batch beside ``caption_ids``.

A head lists what it reads in ``AlignmentHead.caption_annotations``; the data module makes
exactly those. Each annotation is a tensor [captions, context_length] aligned with the
caption's token ids, so the collate function trims it with them:

- ``attribute_words``: 0 where a token is not part of an attribute word, k ≥ 1 on every
  sub-word piece of the caption's k-th attribute word (UCFA's attribute masking masks all
  pieces of a word together). SynthPedes' recorded attribute words are used where the
  records carry them (minus person nouns, which are never attributes); real captions get
  them from the phrase chunker (``tbps.data.phrases``), the component ACSA's phrases use.
- ``phrases``: 0, or p ≥ 1 on every token of the caption's p-th phrase (ACSA pools a
  phrase's token features over its span). A caption where the chunker finds no phrase is
  one phrase of its own (all its words), counted as empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .phrases import PERSON, extract_phrases
from .tokenizer import CaptionTokenizer

ANNOTATIONS = ("attribute_words", "phrases")
_WORD = re.compile(r"[a-z]+")  # "long-sleeved": "long" may be a recorded word


@dataclass
class Annotated:
    tensor: torch.Tensor  # [captions, context_length]
    empty: int            # captions for which nothing was found (counted, never dropped)


def recorded_word_spans(text: str, words: list[str]) -> list[tuple[int, int]]:
    """Character spans of every whole word of ``text`` that is one of the recorded
    attribute words (case-insensitive), person nouns excluded."""
    wanted = {w.lower() for w in words} - PERSON
    return [m.span() for m in _WORD.finditer(text.lower()) if m.group() in wanted]


def chunked_word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the attribute words the phrase chunker finds in ``text``."""
    found = extract_phrases(text)
    return [] if found.fallback else [span for p in found.phrases for span in p.attributes]


def attribute_word_index(tokenizer: CaptionTokenizer, captions: list[str],
                         recorded: list[list[str] | None]) -> Annotated:
    """The ``attribute_words`` annotation of every caption (see the module docstring)."""
    out = torch.zeros(len(captions), tokenizer.context_length, dtype=torch.int16)
    empty = 0
    for n, (caption, words) in enumerate(zip(captions, recorded)):
        text = tokenizer.prepare(caption)
        spans = recorded_word_spans(text, words) if words is not None else chunked_word_spans(text)
        k = 0
        for tokens in tokenizer.token_spans(text, spans) if spans else []:
            if tokens is not None:  # None: truncation cut the word off
                k += 1
                out[n, tokens[0]:tokens[1]] = k
        empty += k == 0
    return Annotated(out, empty)


def phrase_index(tokenizer: CaptionTokenizer, captions: list[str]) -> Annotated:
    """The ``phrases`` annotation of every caption (see the module docstring)."""
    out = torch.zeros(len(captions), tokenizer.context_length, dtype=torch.int16)
    empty = 0
    for n, caption in enumerate(captions):
        text = tokenizer.prepare(caption)
        found = extract_phrases(text)
        empty += found.fallback
        p = 0
        for tokens in tokenizer.token_spans(text, [(x.start, x.end) for x in found.phrases]):
            if tokens is not None:  # None: truncation cut the phrase off
                p += 1
                out[n, tokens[0]:tokens[1]] = p
    return Annotated(out, empty)


def random_annotation(name: str, ids: torch.Tensor, real: torch.Tensor,
                      generator: torch.Generator, share: float = 0.3) -> torch.Tensor:
    """A stand-in annotation for random captions (benchmarks): for ``attribute_words``,
    about ``share`` of the real tokens are one-piece attribute words, numbered in order;
    for ``phrases``, runs of three real tokens, numbered in order."""
    if name == "attribute_words":
        pick = real & (torch.rand(ids.shape, generator=generator) < share)
        return torch.where(pick, pick.long().cumsum(1), torch.zeros_like(ids))
    if name == "phrases":
        position = real.long().cumsum(1) - 1
        return torch.where(real, position // 3 + 1, torch.zeros_like(ids))
    raise ConfigError(f"no stand-in for the caption annotation {name!r}; known: "
                      f"{list(ANNOTATIONS)}")


def annotate(name: str, tokenizer: CaptionTokenizer, captions: list[str],
             recorded: list[list[str] | None]) -> Annotated:
    if name == "attribute_words":
        return attribute_word_index(tokenizer, captions, recorded)
    if name == "phrases":
        return phrase_index(tokenizer, captions)
    raise ConfigError(f"a head asks for the caption annotation {name!r}, which the data module "
                      f"cannot make; known: {list(ANNOTATIONS)}")
