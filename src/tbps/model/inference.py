"""The one path from inputs to rankings, shared by evaluation, `tbps search`, `tbps serve`,
the notebooks and `tbps bench` (a part of ``TBPSModule``): each side's tokens and global
feature, the retrieval embedding a head may claim, the re-scoring of the best candidates,
the model's uncertainty and the explanations. Nothing here trains.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..metrics.retrieval import fuse
from ..types import EncoderOutput, Explanation, RetrievalInput, Uncertainty


class InferencePath:
    """Mixed into ``TBPSModule``: reads ``self.encoder``, ``self.heads``,
    ``self.distributions``, ``self.tokenizer`` and the retrieval claims it makes."""

    @property
    def _rescorer(self):
        """The head that re-scores at inference, if any (held by name: one module, one
        place in the state dict)."""
        return None if self._rescorer_name is None else self.heads[self._rescorer_name]

    @property
    def caption_annotations(self) -> tuple[str, ...]:
        """The per-caption token annotations the heads read (the data module makes them)."""
        return tuple(sorted({a for h in self.heads.values() for a in h.caption_annotations}))

    def _claimed_retrieval(self, modality: str) -> str | None:
        """The name of the one head that makes the retrieval embedding of ``modality``."""
        claims = [n for n, h in self.heads.items() if h.claims_retrieval(modality)]
        if len(claims) > 1:
            raise ConfigError(f"heads {sorted(claims)} each define the {modality} retrieval "
                              "embedding; at most one head may (turn the others' option off)")
        return claims[0] if claims else None

    def _embedding_head(self, modality: str):
        name = self._retrieval[modality]
        return None if name is None else self.heads[name]

    @property
    def retrieval_parts(self) -> dict[str, slice]:
        """Named slices of the retrieval embedding that evaluation also ranks by alone."""
        head = self._embedding_head("image")
        return {} if head is None else dict(head.retrieval_parts())

    def encode(self, images: torch.Tensor, ids: torch.Tensor,
               extra: dict[str, torch.Tensor] | None = None) -> EncoderOutput:
        """Both towers on a training batch, with what the heads and distributions read (the
        attention rows, the captions' input words) and nothing more."""
        return self.encoder(images, ids, extra, self._attention, self._words)

    # --- the one path from inputs to retrieval embeddings ----------------------------------
    def image_side(self, images: torch.Tensor) -> RetrievalInput:
        """Pixels [B, 3, H, W] -> tokens, global feature (and the [CLS] attention row when
        the head that makes the image embedding reads it)."""
        head = self._embedding_head("image")
        if head is not None and head.needs_attention:
            tokens, attention = self.encoder.encode_image_tokens_attention(images)
        else:
            tokens, attention = self.encoder.encode_image_tokens(images), None
        return self._with_gaussian("image", RetrievalInput(tokens, tokens[:, 0], attention))

    def text_side(self, ids: torch.Tensor) -> RetrievalInput:
        """Token ids [B, L] -> tokens, global feature (and the [EOT] attention row when the
        head that makes the text embedding reads it)."""
        head = self._embedding_head("text")
        if head is not None and head.needs_attention:
            tokens, attention = self.encoder.encode_text_tokens_attention(ids)
        else:
            tokens, attention = self.encoder.encode_text_tokens(ids), None
        words = self.encoder.encode_text_words(ids) if self._words else None
        return self._with_gaussian("text", RetrievalInput(
            tokens, self.encoder.text_global(tokens, ids), attention, ids,
            self.encoder.text_mask(ids), words=words))

    def _with_gaussian(self, modality: str, side: RetrievalInput) -> RetrievalInput:
        """The shared distributions' Gaussian of each item, for a head that ranks by it."""
        if self.distributions is not None and self._embedding_head(modality) is not None:
            side.gaussian = self.distributions.distribution(modality, side)
        return side

    def _embed(self, modality: str, side: RetrievalInput) -> torch.Tensor:
        head = self._embedding_head(modality)
        return side.global_feature if head is None else head.retrieval_embedding(modality, side)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] -> the embeddings ranking uses [B, E] (not normalised): the
        global image feature, or the embedding a head makes (``claims_retrieval``)."""
        return self._embed("image", self.image_side(images))

    def embed_texts(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> the embeddings ranking uses [B, E] (not normalised)."""
        return self._embed("text", self.text_side(ids))

    # --- inference: the one path evaluation, search and serving rank through -------------
    def gallery_entries(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pixels [B, 3, H, W] -> (retrieval embedding [B, E], not normalised; what the
        re-scoring head keeps of each image, {} without one)."""
        side = self.image_side(images)
        rescorer = self._rescorer
        kept = {} if rescorer is None else rescorer.rescoring_inputs(
            "image", side.tokens, {"image": images}, self.encoder)
        return self._embed("image", side), kept

    def query_entries(self, batch: dict[str, torch.Tensor]
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Captions (``caption_ids`` [B, L] and the annotations ``query_batch`` makes) ->
        (retrieval embedding [B, E], not normalised; what the re-scoring head keeps)."""
        side = self.text_side(batch["caption_ids"])
        rescorer = self._rescorer
        kept = {} if rescorer is None else rescorer.rescoring_inputs(
            "text", side.tokens, batch, self.encoder)
        return self._embed("text", side), kept

    def query_batch(self, captions: list[str], annotations: tuple[str, ...] = ()
                    ) -> dict[str, torch.Tensor]:
        """Sentences -> the batch ``query_entries`` reads: token ids and the caption
        annotations the heads read (and ``annotations``), made as the data module makes them
        for test captions."""
        from ..data.annotations import annotate

        batch = {"caption_ids": self.tokenizer.encode(captions)}
        for name in sorted(set(self.caption_annotations) | set(annotations)):
            made = annotate(name, self.tokenizer, captions, [None] * len(captions))
            batch[name] = made.tensor.long()  # as the data sets hand them out
        return batch

    @property
    def candidates_to_rescore(self) -> int:
        """How many of each query's best global candidates the ranking re-scores (0: the
        global cosine is the ranking)."""
        return 0 if self._rescorer is None else int(self._rescorer.top_k)

    @property
    def inference_fusion_weight(self) -> float:
        """w of w·global + (1 − w)·local: the weight chosen on validation, else the first
        of the head's grid (a checkpoint of a run that never validated)."""
        w = self.fusion_weight
        return float(self._rescorer.fusion_grid[0] if w is None else w)

    def candidate_scores(self, query_kept: dict[str, torch.Tensor],
                         gallery_kept: dict[str, torch.Tensor], cosines: torch.Tensor,
                         candidates: torch.Tensor) -> torch.Tensor:
        """The ranking scores [Q, k] of each query's candidates (``candidates`` [Q, k]
        indices into ``gallery_kept``, ``cosines`` their global cosines): the cosine
        itself, or the re-scoring head's fusion, as the evaluation ranks them."""
        if self._rescorer is None:
            return cosines
        local = self._rescorer.rescore(query_kept, gallery_kept, candidates).float()
        return fuse(self.inference_fusion_weight, cosines, local)

    def uncertainty(self, images: torch.Tensor | None = None, ids: torch.Tensor | None = None
                    ) -> Uncertainty:
        """What the model predicts of its own uncertainty: σ of each image (pixels
        [B_i, 3, H, W]) and caption (token ids [B_t, L]), and P(match) [B_t, B_i] of every
        caption with every image when the model has a probabilistic match; raises
        ``NoUncertainty`` when it predicts none (``tbps.model.uncertainty``)."""
        from .uncertainty import uncertainty

        return uncertainty(self, images, ids)

    def explain(self, image: torch.Tensor, caption: str, phrases: list[str] | None = None
                ) -> Explanation:
        """Which part of ``image`` [3, H, W] each phrase of ``caption`` (or each of
        ``phrases``) matches, as the heads relate words to regions (``tbps.model.explain``)."""
        from .explain import explain

        return explain(self, image, caption, phrases)
