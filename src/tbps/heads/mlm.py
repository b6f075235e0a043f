"""IRR / MLM: implicit relation reasoning by masked-token reconstruction (IRRA).

Follows IRRA: BERT-style masking of the caption (15% of real tokens; of those 80% become
the mask token, 10% a random token, 10% stay; at least one token per caption), the masked
caption encoded by the same text tower, one cross-attention layer (queries: masked text
tokens; keys and values: all image tokens; LayerNorm before), a transformer of ``depth``
layers, a LayerNorm and the MLM head (Linear, GELU, LayerNorm, Linear to the vocabulary),
cross-entropy at the masked positions. Our choices: masking happens on the device inside
the training step (not in the loader workers), the vocabulary projection runs only at the
masked positions (same loss, far less compute), and GELU replaces CLIP's QuickGELU.
``batch_share`` < 1 (IRRA: 1) reconstructs only the first ``ceil(share · B)`` captions of a
batch: the batch is shuffled, so they are a random subset, and the second text pass, the
cross-former and the vocabulary head cost that share; SDM and ID still see the whole batch.
The CPU default experiment uses 0.25 (the MLM branch was 43% of its forward pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..components.rng import generator_kwargs

from ..types import EncoderOutput
from ..settings_types import OpenRate, PositiveFloat, PositiveInt
from .base import AlignmentHead, HeadContext, phrase_means

IGNORE = -100


def replacement_ids(vocab_size: int, special_ids: tuple[int, ...]) -> torch.Tensor:
    """The ids a selected token may be replaced with at random: every non-special id."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[list(special_ids)] = False
    return keep.nonzero().squeeze(1)


def mask_tokens(ids: torch.Tensor, special_ids: tuple[int, ...], replacements: torch.Tensor,
                mask_id: int, prob: float = 0.15, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (masked ids, labels) for ids [B, L]; labels are IGNORE where not selected.
    ``replacements`` [V'] holds the ids used for the 10% random replacements."""
    selected = select_random_tokens(ids, special_ids, prob, generator)
    return corrupt_selected(ids, selected, replacements, mask_id, generator)


def real_tokens(ids: torch.Tensor, special_ids: tuple[int, ...]) -> torch.Tensor:
    """[B, L] bool: True at every token that is not special (padding, start, end, mask)."""
    return ~torch.isin(ids, torch.tensor(special_ids, device=ids.device))


def select_random_tokens(ids: torch.Tensor, special_ids: tuple[int, ...], prob: float,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, L] bool: each real token with probability ``prob``, at least one per caption."""
    real = real_tokens(ids, special_ids)
    draw = lambda: torch.rand(ids.shape, device=ids.device, **generator_kwargs(generator))  # noqa: E731
    selected = real & (draw() < prob)
    # At least one token per caption that has any: pick one real position at random. Drawn
    # for every batch, used where needed: no data-dependent branch, so the step compiles whole.
    none = ~selected.any(dim=1) & real.any(dim=1)
    forced = (draw() * real).argmax(dim=1)
    position = torch.arange(ids.shape[1], device=ids.device)
    return selected | (none[:, None] & (position[None, :] == forced[:, None]))


def corrupt_selected(ids: torch.Tensor, selected: torch.Tensor, replacements: torch.Tensor,
                     mask_id: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the selected tokens: 80% become the mask token, 10% a random
    token, 10% stay. Returns (corrupted ids, labels: the original id where selected, else
    IGNORE)."""
    rng = generator_kwargs(generator)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, device=ids.device, **rng)
    pick = torch.randint(len(replacements), ids.shape, device=ids.device, **rng)
    random_tok = replacements.to(ids.device)[pick]
    masked = torch.where(selected & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(selected & (roll >= 0.8) & (roll < 0.9), random_tok, masked)
    return masked, labels


class MLMHead(AlignmentHead):
    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0, depth: PositiveInt = 4,
                 num_heads: PositiveInt = 8, mask_prob: OpenRate = 0.15,
                 batch_share: OpenRate = 1.0) -> None:
        super().__init__(ctx, weight)
        d = ctx.embed_dim
        self.mask_prob, self.batch_share = mask_prob, batch_share
        # Built once: a per-step Python loop over a 49,408-word vocabulary would cost real time.
        self.register_buffer("replacements", replacement_ids(ctx.vocab_size, ctx.special_ids),
                             persistent=False)
        self.ln_text, self.ln_image = nn.LayerNorm(d), nn.LayerNorm(d)
        self.cross_attn = nn.MultiheadAttention(d, num_heads, batch_first=True)
        layer = nn.TransformerEncoderLayer(d, num_heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.ln_post = nn.LayerNorm(d)
        self.mlm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d),
                                      nn.Linear(d, ctx.vocab_size))

    def reconstructed(self, batch_size: int) -> int:
        """How many captions of a batch of ``batch_size`` (the first ones) are reconstructed."""
        return max(1, math.ceil(self.batch_share * batch_size))

    def extra_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        ids = batch["caption_ids"]
        masked, labels = mask_tokens(ids[:self.reconstructed(len(ids))], self.ctx.special_ids,
                                     self.replacements, self.ctx.mask_id, self.mask_prob)
        return {"mlm_ids": masked, "mlm_labels": labels}

    def reconstruction_logits(self, text: torch.Tensor, image: torch.Tensor,
                              at: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits [M, V] (float32) at the M positions where ``at`` [B, L] is True,
        from masked-text tokens attending to ``image`` tokens (the keys and values)."""
        return self.mlm_head(self.cross_former(text, image)[at]).float()

    def cross_former(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Masked-text tokens [B, L, D] attend to image tokens [B, N, D] -> [B, L, D]."""
        kv = self.ln_image(image)
        x = self.cross_attn(self.ln_text(text), kv, kv, need_weights=False)[0]
        return self.ln_post(self.transformer(x))

    @torch.no_grad()
    def cross_attention(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Where each text token looks among the image tokens: [B, L, N] weights of the
        cross-attention layer, averaged over heads (for attention maps in notebooks)."""
        kv = self.ln_image(image)
        return self.cross_attn(self.ln_text(text), kv, kv, need_weights=True,
                               average_attn_weights=True)[1]

    def irra_role(self, name: str) -> str:
        """As IRRA names these modules: ``cross_attn`` and ``cross_modal_transformer``
        ("cross"), ``ln_pre_t`` / ``ln_pre_i`` / ``ln_post`` (neither test: plain), and
        ``mlm_head`` (the classifier test)."""
        if name.startswith("mlm_head."):
            return "classifier"
        return "plain" if name.startswith(("ln_text.", "ln_image.", "ln_post.")) else "cross"

    def explain(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, batch: dict,
                encoder: nn.Module) -> tuple[torch.Tensor, str]:
        """Each phrase's tokens' cross-attention over the image patches (the class token's
        share left out), averaged over the phrase."""
        gh, gw = self.ctx.image_grid
        weights = self.cross_attention(text_tokens, image_tokens)[0, :, -gh * gw:]  # [L, N]
        name = type(self).__name__.removesuffix("Head")
        return (phrase_means(weights.float(), batch["phrases"][0]),
                f"cross-attention of the {name} head")

    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        labels = batch["mlm_labels"]
        at = labels != IGNORE
        image = encoded.image_tokens[:len(labels)]
        logits = self.reconstruction_logits(encoded.extra_text["mlm_ids"], image, at)
        loss = F.cross_entropy(logits, labels[at])
        acc = (logits.argmax(-1) == labels[at]).float().mean()
        return {"loss_mlm": self.weight * loss, "mlm_accuracy": acc.detach()}
