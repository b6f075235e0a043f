"""ACSA's asymmetric cross-scale alignment (Ji et al., IEEE TMM; code mul-hjh/ACSA;
``docs/methods.md`` §3): 7 image tokens at several scales against a caption's phrases,
parameter-free SCAN cross-attention both ways, a local contrastive loss (CONT), and the
local image→text score fused with the global cosine at inference.

Follows the official code: the attention (``func_attention_MxN``): cosine of l2-normalised
keys and queries, LeakyReLU(0.1), l2-normalisation over the query axis, softmax over the
keys at λ = 20 (``lambda_softmax``), values weighted by it; the scores
(``compute_weiTexts``): i2t = mean over the 7 image tokens of cos(V_I, l2norm(A(Q_I, K_T,
V_T))), t2i = mean over the phrases of cos(V_T, l2norm(A(K_T, Q_I, V_I))); image query and
value are linear maps of the 7 tokens, text key and value linear maps of the phrases
followed by one LayerNorm over phrases and channels together; CONT is CMPM's KL at
20·score (``cont_scale``) towards the L2-normalised identity rows, with a row softmax over
the captions in both matrices (the code's [image, caption] layout for both). Up to
``num_phrases`` = 10 phrases per caption.

Our choices (``docs/methods.md`` §3, each a key): image tokens from the shared encoder's
patch grid (``part_mode: stripes``: the class token, 4 horizontal stripes and 2 halves) or
the code's channel split of the global feature (``channel_split``: a residual block, 6
chunks, head/upper/lower/feet through FC + ReLU + dropout, the two halves of the grid and
the mean of those six); phrases from our offline chunker (``tbps.data.phrases``; the code
used TextBlob), mean-pooled over their tokens in the sentence (``phrase_mode: span``) or
each encoded alone by the text tower and pooled as the encoder pools a caption (``separate``,
as the code does: BERT's [CLS]; CLIP's end token); padded phrase
slots are masked (the code lets them take part); all B×B pairs of the gathered batch at
once, in chunks of ``chunk`` images. Inference: score = w·global cosine + (1 − w)·i2t for
the ``top_k`` = 100 best gallery images of each query by the global cosine; w is
``fusion_weight`` if set, else the best of ``fusion_grid`` (the code's scanned values) on
the validation split.

The attention and its scores are in ``acsa_attention.py``, the image scales and the phrases
in ``acsa_tokens.py``; this file is the head: its inputs, loss, explanation and re-scoring.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import nn

from ..components.pooling import pool_text
from ..distributed import gather_with_grad
from ..settings_types import PositiveFloat, PositiveInt, Rate
from ..types import EncoderOutput
from .acsa_attention import EPS, i2t_from_products, l2norm, pairwise, t2i_attention
from .acsa_tokens import (NUM_IMAGE_TOKENS, ChannelParts, phrase_token_ids, region_maps,
                          scale_basis, span_pool, stripe_tokens)
from .base import AlignmentHead, HeadContext, Modality
from .cmpm import cmpm_from_logits


class ACSAHead(AlignmentHead):
    caption_annotations = ("phrases",)
    rescores = True
    rescoring_keys = {"gallery": ("x", "q_inv", "v_norm"), "query": ("a", "c", "gram", "mask")}
    # re-scoring in slabs of about this many pair values, and within them, captions whose
    # gathered image values fit this many floats (4 MB), near a CPU's cache. On a GPU those
    # blocks made the re-scoring launch-bound (one H200: 118 ms at CUHK-PEDES size and top
    # 100, 2 captions a gather, against 5 ms of arithmetic), so there they are 64x larger
    slab_values, gather_floats = 2**21, 2**20
    accelerator_block_scale = 64

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 0.1,
                 num_phrases: PositiveInt = 10,
                 phrase_mode: Literal["span", "separate"] = "span",
                 phrase_length: Annotated[int, Field(ge=3)] = 24,
                 test_phrase_length: Annotated[int, Field(ge=3)] | None = None,
                 part_mode: Literal["stripes", "channel_split"] = "stripes",
                 lambda_softmax: PositiveFloat = 20.0, cont_scale: PositiveFloat = 20.0,
                 top_k: PositiveInt = 100, fusion_weight: Rate | None = None,
                 fusion_grid: list[Rate] = (1.0, 0.95, 0.92, 0.9, 0.88, 0.85, 0.82),
                 chunk: PositiveInt = 32) -> None:
        super().__init__(ctx, weight)
        d = ctx.embed_dim
        self.num_phrases, self.phrase_mode = num_phrases, phrase_mode
        self.phrase_length = phrase_length
        self.test_phrase_length = test_phrase_length or phrase_length
        self.part_mode, self.lam, self.cont_scale = part_mode, lambda_softmax, cont_scale
        self.top_k, self.chunk = top_k, chunk
        self.fusion_weight = fusion_weight
        self.fusion_grid = [fusion_weight] if fusion_weight is not None else list(fusion_grid)
        self.grid = tuple(ctx.image_grid)
        if min(self.grid) < 1 or self.grid[0] < 4:
            raise ValueError(f"ACSA needs a patch grid with at least 4 rows, got {self.grid}")
        self.parts = ChannelParts(d) if part_mode == "channel_split" else None
        self.img_query, self.img_value = nn.Linear(d, d), nn.Linear(d, d)
        self.txt_key, self.txt_value = nn.Linear(d, d), nn.Linear(d, d)
        self.key_norm = nn.LayerNorm([num_phrases, d])
        self.value_norm = nn.LayerNorm([num_phrases, d])
        basis, mix = scale_basis(part_mode, self.grid)
        self.basis = basis
        self.register_buffer("scale_mix", mix, persistent=False)

    # --- the two sides -------------------------------------------------------------------
    def image_scales(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens [B, 1 + N, D] -> the 7 tokens at several scales, [B, 7, D]."""
        tokens = tokens.float()
        stripes, halves = stripe_tokens(tokens, self.grid)
        if self.parts is None:
            return torch.cat([tokens[:, :1], stripes, halves], 1)
        six = torch.cat([self.parts(tokens[:, 0]), halves], 1)
        return torch.cat([six.mean(1, keepdim=True), six], 1)

    def image_side(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens [B, 1 + N, D] -> (Q_I, V_I), each [B, 7, D]."""
        scales = self.image_scales(tokens)
        return self.img_query(scales), self.img_value(scales)

    def text_side(self, phrases: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Phrase features [B, P, D] and mask -> (K_T, V_T, mask); padded slots zeroed."""
        keep = mask[..., None].to(torch.float32)
        k = self.key_norm(self.txt_key(phrases.float())) * keep
        v = self.value_norm(self.txt_value(phrases.float())) * keep
        return k, v, mask

    def extra_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.phrase_mode != "separate":
            return {}
        return {"acsa_phrase_ids": self._phrase_ids(batch["caption_ids"], batch["phrases"])}

    def _phrase_ids(self, ids: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
        """Each phrase alone between start and end tokens, at most ``phrase_length`` tokens
        in training and ``test_phrase_length`` at inference (the code: 40 and 24)."""
        c = self.ctx
        length = self.phrase_length if self.training else self.test_phrase_length
        return phrase_token_ids(ids, phrases, self.num_phrases, length,
                                c.sos_id, c.eos_id, c.pad_id)

    def _phrases(self, text_tokens: torch.Tensor, phrases: torch.Tensor,
                 phrase_tokens: torch.Tensor | None = None, phrase_ids: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Phrase features [B, P, D] and mask, by span pooling or from separate encodings."""
        pooled, mask = span_pool(text_tokens.float(), phrases, self.num_phrases)
        if self.phrase_mode == "span":
            return pooled, mask
        # read as the encoder reads a caption: BERT's [CLS] (the code), CLIP's end token
        feats = pool_text(phrase_tokens, phrase_ids, self.ctx.text_pool, self.ctx.eos_id).float()
        return rearrange(feats, "(b p) d -> b p d", p=self.num_phrases), mask

    # --- training ------------------------------------------------------------------------
    def forward(self, encoded: EncoderOutput, batch: dict) -> dict[str, torch.Tensor]:
        phrases, mask = self._phrases(encoded.text_tokens, batch["phrases"],
                                      encoded.extra_text.get("acsa_phrase_ids"),
                                      batch.get("acsa_phrase_ids"))
        q, v = self.image_side(encoded.image_tokens)
        k, tv, mask = self.text_side(phrases, mask)
        # one collective per side (the mask rides along as a float channel): fewer calls,
        # and no two gathers of one side whose backward passes could pair up differently
        d = q.shape[-1]
        q, v = gather_with_grad(torch.cat([q, v], -1)).split(d, -1)
        text = gather_with_grad(torch.cat([k, tv, mask[..., None].to(k.dtype)], -1))
        k, tv, mask = text[..., :d], text[..., d:2 * d], text[..., 2 * d] > 0.5
        pid = gather_with_grad(batch["pid"])
        i2t, t2i = pairwise(q, v, k, tv, mask, self.lam, self.chunk)
        loss = cmpm_from_logits(self.cont_scale * i2t, self.cont_scale * t2i, pid)
        positive = pid[:, None] == pid[None, :]
        return {"loss_cont": self.weight * loss,
                "acsa_i2t_pos": i2t.detach()[positive].mean(),
                "acsa_i2t_neg": i2t.detach()[~positive].mean()}

    # --- explaining a match (the head contract) -------------------------------------------
    @torch.no_grad()
    def phrase_token_attention(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                               batch: dict, encoder: nn.Module) -> torch.Tensor:
        """Each phrase of one caption attending over the 7 tokens of one image (the t2i
        direction of the cross-attention the local score reads): [P, 7]."""
        k, _, mask = self.caption_side(text_tokens.float(), batch, encoder)
        q, _ = self.image_side(image_tokens.float())
        s = l2norm(k[0]) @ l2norm(q[0]).t()                                   # [P, 7]
        return t2i_attention(s[None, :, None], self.lam)[0, :, 0][:int(mask[0].sum())]

    def explain(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, batch: dict,
                encoder: nn.Module) -> tuple[torch.Tensor, str]:
        """A phrase's weights over the 7 tokens spread over the regions they pool."""
        weights = self.phrase_token_attention(image_tokens, text_tokens, batch, encoder)
        return region_maps(weights, self.grid).flatten(1), "ACSA's phrase-to-scale attention"

    # --- inference-time re-scoring (the head contract) -----------------------------------
    def rescoring_inputs(self, modality: Modality, tokens: torch.Tensor, batch: dict,
                         encoder: nn.Module) -> dict[str, torch.Tensor]:
        # kept in float32 whatever the evaluation's autocast: the re-scoring multiplies
        # them exactly, and one product may not mix bf16 and float32
        with torch.autocast(tokens.device.type, enabled=False):
            if modality == "image":
                return self.kept_image(tokens.float())
            return self.kept_caption(*self.caption_side(tokens.float(), batch, encoder))

    def caption_side(self, tokens: torch.Tensor, batch: dict, encoder: nn.Module
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K_T, V_T, mask) of captions at inference, from their text tokens (and, with
        ``phrase_mode: separate``, each phrase encoded alone)."""
        phrase_tokens = phrase_ids = None
        if self.phrase_mode == "separate":
            phrase_ids = self._phrase_ids(batch["caption_ids"], batch["phrases"])
            phrase_tokens = encoder.encode_text_tokens(phrase_ids)
        phrases, mask = self._phrases(tokens, batch["phrases"], phrase_tokens, phrase_ids)
        return self.text_side(phrases, mask)

    # What evaluation keeps of each item, so that a (caption, image) pair costs as little as
    # it can: Q_I = W_q X + b_q and V_I = W_v X + b_v are linear in the image's 7 scale
    # tokens X, so K̂_T·Q_I = (K̂_T W_q)·X + K̂_T·b_q and V_T·V_I = (V_T W_v)·X + V_T·b_v.
    # The caption keeps K̂_T W_q and V_T W_v, the image keeps X alone: a pair reads the
    # image's tokens once, not both projections (the re-scoring is bound by that read on a CPU).
    # And X = M X_b: some of the 7 tokens are weighted means of the others (``scale_basis``),
    # M's rows sum to 1, so the products with X are M times those with X_b (bias included):
    # the image keeps only X_b (5 of the 7 tokens with stripes, 6 with the channel split).
    def kept_image(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Of each image (its encoder tokens [B, 1 + N, D]): X_b [b, D], and of its 7 scale
        tokens 1 / (‖Q_I‖ + 1e-8) (SCAN's l2norm of Q_I) and ‖V_I‖."""
        scales = self.image_scales(tokens)
        q, v = self.img_query(scales), self.img_value(scales)
        return {"x": scales[:, self.basis], "q_inv": 1 / (q.norm(dim=-1) + EPS),
                "v_norm": v.norm(dim=-1)}

    def kept_caption(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """Of each caption: a = [K̂_T W_q; V_T W_v] [2P, D], c = [K̂_T·b_q; V_T·b_v] [2P],
        the Gram matrix V_T V_Tᵀ [P, P] and the phrase mask."""
        k_hat = l2norm(k)
        wq, wv = self.img_query, self.img_value
        return {"a": torch.cat([k_hat @ wq.weight, v @ wv.weight], -2),
                "c": torch.cat([k_hat @ wq.bias, v @ wv.bias], -1),
                "gram": v @ v.transpose(-1, -2), "mask": mask}

    def rescore(self, query: dict[str, torch.Tensor], gallery: dict[str, torch.Tensor],
                candidates: torch.Tensor) -> torch.Tensor:
        """i2t scores [Q, k] of each query caption with its candidate images [Q, k]:
        ``candidate_i2t_scores`` for the captions with the same number of phrases together,
        each kept only with its real phrases (a padded slot adds nothing but work: its
        attention weight is 0), in slabs of about 2M pair values (the element-wise steps
        cost a fixed overhead per call: blocks of 2 captions spent more time on it than on
        the arithmetic)."""
        out = torch.empty(candidates.shape, device=candidates.device)
        slab_values, gather_floats = self.block_sizes(candidates.device)
        counts = query["mask"].sum(1)
        for n in counts.unique().tolist():
            n = max(n, 1)
            rows = (counts == n).nonzero().squeeze(1)
            kept = real_phrases(query, rows, n)
            slab = max(1, slab_values // (candidates.shape[1] * NUM_IMAGE_TOKENS * 2 * n))
            for s in range(0, len(rows), slab):
                block = rows[s:s + slab]
                out[block] = candidate_i2t_scores(
                    gallery, {name: t[s:s + slab] for name, t in kept.items()},
                    candidates[block], self.lam, self.scale_mix, gather_floats)
        return out

    def block_sizes(self, device: torch.device) -> tuple[int, int]:
        """(pair values per slab, gathered floats per block) for re-scoring on ``device``:
        cache-sized on a CPU, ``accelerator_block_scale`` times larger elsewhere. The
        scores do not depend on them (tested)."""
        scale = 1 if device.type == "cpu" else self.accelerator_block_scale
        return self.slab_values * scale, self.gather_floats * scale


def real_phrases(caption: dict[str, torch.Tensor], rows: torch.Tensor, n: int
                 ) -> dict[str, torch.Tensor]:
    """``ACSAHead.kept_caption`` of the captions ``rows`` (each with n real phrases) cut to
    those n slots, in their order, wherever the padding sits."""
    mask = caption["mask"][rows]
    p = mask.shape[1]
    slots = torch.argsort((~mask).int(), dim=1, stable=True)[:, :n]          # real ones first
    both = torch.cat([slots, slots + p], 1)                                  # K̂W_q rows, V W_v rows
    a = caption["a"]
    flat = (rows[:, None] * a.shape[1] + both).reshape(-1)                   # copied once
    a = a.reshape(-1, a.shape[-1]).index_select(0, flat).view(len(rows), 2 * n, -1)
    gram = caption["gram"][rows].gather(1, slots[..., None].expand(-1, -1, p))
    return {"a": a, "c": caption["c"][rows].gather(1, both),
            "gram": gram.gather(2, slots[:, None, :].expand(-1, n, -1)),
            "mask": mask.gather(1, slots)}


@torch.no_grad()   # inference only: the products are written into one buffer
def candidate_i2t_scores(image: dict[str, torch.Tensor], caption: dict[str, torch.Tensor],
                         candidates: torch.Tensor, lam: float, mix: torch.Tensor,
                         gather_floats: int = 2**20) -> torch.Tensor:
    """The training-time i2t scores (``pairwise``) of c captions (``ACSAHead.kept_caption``,
    [c, …]) with their k candidate images (``candidates`` [c, k] into
    ``ACSAHead.kept_image`` of G images, whose b kept tokens give the 7 through ``mix``)
    -> [c, k], up to rounding (tested). One batched product per block of captions (their
    gathered values within ``gather_floats``) gives both products of ``i2t_from_products``.
    Every (caption, candidate) pair reads its image's b × D values, copied as whole rows
    (``index_select`` runs at memory speed; advanced indexing was 2.5× slower): on a CPU
    that copy is a large part of the cost."""
    c, k = candidates.shape
    g, b, d = image["x"].shape
    r = NUM_IMAGE_TOKENS
    p = caption["mask"].shape[1]
    flat = candidates.reshape(-1)
    both = torch.empty(c, 2 * p, k * b, device=candidates.device)
    rows = max(1, gather_floats // (k * b * d))      # captions gathered at a time
    for s in range(0, c, rows):
        x = image["x"].reshape(g, b * d).index_select(0, flat[s * k:(s + rows) * k])
        torch.baddbmm(caption["c"][s:s + rows, :, None], caption["a"][s:s + rows],
                      x.view(-1, k * b, d).transpose(1, 2), out=both[s:s + rows])
    both = both.view(c, 2 * p, k, b)
    if b != r:
        both = both @ mix.t()                                                # [c, 2P, k, 7]
    q_inv = image["q_inv"].index_select(0, flat).view(c, 1, k, r)            # 1/‖Q_I‖
    v_norm = image["v_norm"].index_select(0, flat).view(c, k, r)
    return i2t_from_products(both[:, :p] * q_inv, both[:, p:], caption["gram"], v_norm,
                             caption["mask"], lam)
