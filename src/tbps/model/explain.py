"""Where each phrase of a caption looks in an image: what `tbps serve` and the attention
notebook draw. The first head (in config order) that relates words to regions answers
(``AlignmentHead.explain``: IRRA's MLM and UCFA's UAMLR with their cross-attention, ACSA
with its phrase-to-scale attention); with none, the cosine of each phrase's mean token
feature with each patch feature, clipped at 0. No head is named here."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..data.tokenizer import CaptionTokenizer
from ..heads.base import phrase_means
from ..types import Explanation


@torch.no_grad()
def explain(module, image: torch.Tensor, caption: str, phrases: list[str] | None = None
            ) -> Explanation:
    """``image`` [3, H, W] and ``caption`` -> each phrase with its map [gh, gw] scaled to
    [0, 1]. Phrases are those ``tbps.data.phrases`` finds (a caption with none is one
    phrase), or the words or phrases of ``phrases``, each found in the caption (ValueError
    if one is not)."""
    batch = module.query_batch([caption], annotations=() if phrases else ("phrases",))
    if phrases:
        batch["phrases"] = chosen_phrases(module.tokenizer, caption, phrases)
    batch = {k: v.to(image.device) for k, v in batch.items()}
    enc = module.encoder
    image_tokens = enc.encode_image_tokens(image[None])
    text_tokens = enc.encode_text_tokens(batch["caption_ids"])
    ids, ann = batch["caption_ids"][0], batch["phrases"][0]
    gh, gw = enc.grid_size
    found = next((e for h in module.heads.values()
                  if (e := h.explain(image_tokens, text_tokens, batch, enc)) is not None), None)
    if found is None:
        patches = F.normalize(image_tokens[0, -gh * gw:].float(), dim=-1)
        means = F.normalize(phrase_means(text_tokens[0].float(), ann), dim=-1)
        found = ((means @ patches.t()).clamp(min=0),
                 "token similarity (no head relates words to regions)")
    weights, source = found
    low = weights.amin(1, keepdim=True)
    maps = (weights - low) / (weights.amax(1, keepdim=True) - low).clamp(min=1e-8)
    labels = [module.tokenizer.decode(ids[ann == p + 1].tolist()).strip()
              for p in range(len(maps))]
    return Explanation(labels, maps.reshape(-1, gh, gw).float().cpu(), source)


def chosen_phrases(tokenizer: CaptionTokenizer, caption: str, phrases: list[str]) -> torch.Tensor:
    """The ``phrases`` annotation [1, L] marking the first occurrence of each of ``phrases``
    (whole words, any case) in ``caption``, numbered in the given order."""
    text = tokenizer.prepare(caption)
    spans = []
    for phrase in phrases:
        found = re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, re.I)
        if not phrase.strip() or found is None:
            raise ValueError(f"{phrase!r} is not in the caption {caption!r}")
        spans.append(found.span())
    out = torch.zeros(1, tokenizer.context_length, dtype=torch.long)
    for p, tokens in enumerate(tokenizer.token_spans(text, spans)):
        if tokens is None:
            raise ValueError(f"{phrases[p]!r} lies past the text encoder's "
                             f"{tokenizer.context_length} tokens")
        out[0, tokens[0]:tokens[1]] = p + 1
    return out
