"""UCFA's uncertainty-aware attribute-masking language reconstruction, UAMLR (Deng et al.,
Visual Intelligence 2025).

What follows the abstract: attribute words of the caption are masked at random and
reconstructed through cross-modal interaction, made uncertainty-aware with the sampled
points of the distributions. Our reconstruction (``docs/methods.md`` §4, each a config key):

- Attribute words (colours, patterns, materials, garments, footwear, bags, accessories,
  hair, build; never person nouns or function words) come from the data module's
  ``attribute_words`` annotation: SynthPedes' recorded words, or the phrase chunker's on real
  captions. Each word is chosen with ``mask_prob`` (0.5); the chosen words, in random order,
  are kept while their sub-word pieces stay within ``max_share`` (15%) of the caption's
  tokens, and at least one word always is. Every piece of a chosen word is masked together,
  with BERT's 80/10/10 corruption. A caption with no attribute word falls back to IRRA's
  random 15% masking and is counted (``uamlr_random_fallback``: its share of the batch).
- Reconstruction is the MLM head's cross-modal transformer and vocabulary head (this class
  extends ``MLMHead``; nothing is copied). ``uncertainty: points`` (default): K =
  ``num_samples`` reparameterised points of the image's Gaussian join the image tokens as
  keys and values (the masked caption reads the image and its uncertainty); ``weight``: the
  per-caption loss is weighted by the image's confidence, B·softmax(−mean log σ²) over the
  batch (weights average 1; an uncertain image counts less, and a hard caption can lower
  its weight by raising its image's σ, which the KL term holds back); ``none``: the plain
  reconstruction, the ablation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

from ..components.gaussian import sample
from ..components.pair_weights import weighted_mean
from ..components.rng import generator_kwargs
from ..settings_types import OpenRate, PositiveFloat, PositiveInt
from ..types import EncoderOutput
from .base import HeadContext
from .mlm import IGNORE, MLMHead, corrupt_selected, real_tokens, select_random_tokens


def select_attribute_words(words: torch.Tensor, real: torch.Tensor, prob: float,
                           max_share: float, generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chooses whole attribute words to mask. ``words`` [B, L]: 0, or k ≥ 1 on every piece
    of the caption's k-th attribute word; ``real`` [B, L]: non-special tokens.

    Returns (selected tokens [B, L] bool, has_words [B] bool). Fixed shapes throughout (the
    word slots are 0..L), so the training step compiles without a data-dependent branch.
    """
    b, length = words.shape
    slots = length + 1
    rng = generator_kwargs(generator)
    counts = torch.zeros(b, slots, device=words.device, dtype=torch.float32)
    counts.scatter_add_(1, words, torch.ones_like(words, dtype=torch.float32))
    counts[:, 0] = 0                                    # slot 0: not a word
    present = counts > 0                                # [B, slots]
    has_words = present.any(1)
    r = torch.rand(b, slots, device=words.device, **rng)
    chosen = present & (r < prob)
    # at least one word: the present word with the smallest draw
    first = torch.where(present, r, torch.full_like(r, 2.0)).argmin(1)
    slot = torch.arange(slots, device=words.device)
    chosen = chosen | ((~chosen.any(1) & has_words)[:, None] & (slot[None] == first[:, None]))
    # within the token budget: chosen words in order of their draw, while the pieces fit
    order = torch.where(chosen, r, torch.full_like(r, 2.0)).argsort(1)
    in_order = chosen.gather(1, order)
    used = (counts.gather(1, order) * in_order).cumsum(1)
    budget = max_share * real.sum(1, keepdim=True)
    keep_in_order = in_order & ((used <= budget) | (slot[None] == 0))  # the first always
    keep = torch.zeros_like(chosen).scatter(1, order, keep_in_order)
    keep[:, 0] = False
    return keep.gather(1, words) & real, has_words


class UAMLRHead(MLMHead):
    needs_distributions = True
    caption_annotations = ("attribute_words",)

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0, depth: PositiveInt = 4,
                 num_heads: PositiveInt = 8, mask_prob: OpenRate = 0.5,
                 max_share: OpenRate = 0.15, fallback_prob: OpenRate = 0.15,
                 uncertainty: Literal["points", "weight", "none"] = "points",
                 num_samples: PositiveInt = 7) -> None:
        super().__init__(ctx, weight, depth, num_heads, mask_prob)
        self.max_share, self.fallback_prob = max_share, fallback_prob
        self.uncertainty, self.num_samples = uncertainty, num_samples

    def extra_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        ids = batch["caption_ids"]
        real = real_tokens(ids, self.ctx.special_ids)
        random_sel = select_random_tokens(ids, self.ctx.special_ids, self.fallback_prob)
        attr_sel, has_words = select_attribute_words(batch["attribute_words"], real,
                                                     self.mask_prob, self.max_share)
        selected = torch.where(has_words[:, None], attr_sel, random_sel)
        masked, labels = corrupt_selected(ids, selected, self.replacements, self.ctx.mask_id)
        return {"uamlr_ids": masked, "uamlr_labels": labels, "uamlr_fallback": ~has_words}

    def keys_values(self, encoded: EncoderOutput, batch: dict) -> torch.Tensor:
        """The image tokens, with the image's sampled points appended (``points``)."""
        tokens = encoded.image_tokens
        if self.uncertainty != "points":
            return tokens
        d = batch["distributions"]
        points = sample(d.image_mean, d.drawn(d.image_logvar), self.num_samples)      # [K, B, D]
        return torch.cat([tokens, rearrange(points, "k b d -> b k d").to(tokens.dtype)], dim=1)

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        labels = batch["uamlr_labels"]
        at = labels != IGNORE
        logits = self.reconstruction_logits(encoded.extra_text["uamlr_ids"],
                                            self.keys_values(encoded, batch), at)
        target = labels[at]
        token_loss = F.cross_entropy(logits, target, reduction="none")           # [M]
        if self.uncertainty == "weight":
            # per caption: the mean over its masked tokens, weighted by its image's confidence
            row = at.nonzero()[:, 0]
            b = labels.shape[0]
            per_row = torch.zeros(b, device=logits.device).index_add(0, row, token_loss)
            n = torch.zeros(b, device=logits.device).index_add(0, row, torch.ones_like(token_loss))
            d = batch["distributions"]
            conf = b * torch.softmax(-d.drawn(d.image_logvar).mean(1), dim=0)
            has = n > 0
            loss = (conf * per_row / n.clamp(min=1) * has).sum() / has.sum().clamp(min=1)
        elif batch.get("pair_weight") is not None:
            # a caption's masked tokens weigh its pair's weight (pair_weights)
            loss = weighted_mean(token_loss, batch["pair_weight"][at.nonzero()[:, 0]])
        else:
            loss = token_loss.mean()
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss_uamlr": self.weight * loss, "uamlr_accuracy": acc.detach(),
                "uamlr_random_fallback": batch["uamlr_fallback"].float().mean()}
