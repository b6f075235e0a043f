"""The contract every alignment head follows.

A head is a small ``nn.Module`` that reads the encoder's output (and the batch) and returns
named, already weighted loss terms. Keys starting with ``loss_`` are summed into the
training loss; any other key is a diagnostic that is only logged. A head must return at
least one ``loss_*`` term (the module refuses one that trains nothing at the first step).

Everything else a head may declare lives here, with its default, so that the training
module reads it without ``getattr`` guesses and never needs to know a head by name:

- ``needs_memory``: the head reads ``batch["memory"]`` (momentum features and queues);
  the module refuses the config unless ``memory`` is set.
- ``needs_distributions``: the head reads ``batch["distributions"]`` (each modality's
  Gaussian, ``tbps.components.distributions``); the module refuses the config unless
  ``distributions`` is set.
- ``caption_annotations``: per-caption token annotations the head reads from the training
  batch (``"attribute_words"``, see ``tbps.data.annotations``); the data module makes them
  once, when it tokenises.
- ``extra_inputs(batch)``: extra tensors made from the batch (masked captions …); entries
  whose key ends in ``_ids`` are encoded by the text tower and reach ``forward`` in
  ``encoded.extra_text``.
- ``needs_attention``: the head reads the global tokens' last-layer attention rows
  (``encoded.image_attention`` / ``text_attention``, RDE's token selection); the encoder
  computes them only when a head asks.
- ``claims_retrieval(modality)`` / ``retrieval_embedding(modality, inputs)``: the head
  makes the embedding ranking uses for ``"image"`` or ``"text"`` from that side's tokens,
  global feature and attention row (``types.RetrievalInput``): a learned Gaussian mean, say,
  or RDE's BGE and TSE side by side. By default nothing is claimed and ranking uses the
  global feature. At most one head may claim a modality; evaluation, search, the notebooks
  and the benchmark all rank through ``TBPSModule.embed_images`` / ``embed_texts``, which
  ask it. ``retrieval_parts()`` names slices of that embedding that rank on their own too
  (RDE's BGE and TSE): evaluation reports each under ``<split>/<part>/``.
- ``rescores``: the head re-scores the best candidates of the global ranking at inference
  (ACSA's local scores). It keeps what it needs of every gallery image and query caption
  (``rescoring_inputs``), scores each query's ``top_k`` candidates (``rescore``), and the
  evaluation fuses w·global + (1 − w)·local with w = ``fusion_weight``, or the best of
  ``fusion_grid`` on the validation split. At most one head may re-score; the module, the
  metric and the evaluation loop never know which.
- ``irra_role(name)``: which of IRRA's optimiser name tests a parameter of the head
  answers to under ``optim.param_rule: irra`` (``tbps.model.optim``): ``"cross"`` (the
  default: a randomly initialised module, as IRRA's cross-modal ones), ``"classifier"`` or
  ``"plain"``.
- ``own_lr(name)``: a learning rate of its own for the head's parameter ``name`` under
  every ``optim.param_rule`` (RDE's solver trains its token selection at 1e-3 whatever the
  base rate), or ``None`` (the default: the rule decides).
- ``prepares_for(epoch)`` / ``preparation_scores`` / ``prepare``: a head that prepares itself
  from a forward-only pass over the training pairs before an epoch (RDE's consensus
  division). When any head ``prepares_for`` the epoch, the module puts the model in eval
  mode, runs every training pair once through the encoder (each process its shard, batches
  gathered across processes as in training), collects each head's
  ``preparation_scores(encoded, batch)`` per pair, and hands every process the same full
  arrays, indexed by pair, in ``prepare(scores, noisy, epoch, seed)``; what it returns is
  logged as ``train/<key>`` and printed. What a head prepared must be in its buffers (saved
  with the checkpoint, so a run resumed mid-epoch keeps it; the module broadcasts them from
  rank 0 so every process holds the same).
- ``distribution(modality, inputs)`` / ``match_probability(text, image)``: a head that models
  every image or caption as a Gaussian (CRUE's UGM) gives it for a batch, from the same
  ``RetrievalInput`` ranking reads, and a head with a probabilistic match (PCME++'s
  σ(−a·d + b), UCFA's DCL) gives P(match) of every caption with every image from their
  Gaussians. ``TBPSModule.uncertainty`` asks the shared ``distributions`` component first,
  then the heads in config order, and takes the first answer of each: `tbps uncertainty`,
  the notebooks and search read uncertainty through it, never from a head's insides.
- ``pair_confidence(encoded, batch)``: a head with a probabilistic match gives each training
  pair of the (local) batch its P(match) [B], detached; with ``pair_weights`` set, the module
  turns the first answer into ``batch["pair_weight"]`` [B] before any head runs
  (``components.pair_weights``; with ``by: division``, from a division of the pairs by their
  P(match) in the preparation pass before each epoch, ``components.pair_division``), and
  every head that has per-pair terms weights them with it (``weighted_mean``; absent, the
  plain mean).
- ``explain(...)``: where each phrase of a caption looks in an image, as the head itself
  relates words to image regions (a cross-attention, ACSA's phrase-to-scale attention), or
  ``None`` (the default). ``TBPSModule.explain`` asks the heads in config order and takes
  the first answer (else the similarity of the phrase's token features to the patches);
  ``tbps serve`` and the notebooks draw it.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..settings_types import PositiveFloat
from ..types import EncoderOutput, Gaussian, RetrievalInput

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class HeadContext:
    """What heads may need to know about the encoder, the tokenizer and the data set."""

    embed_dim: int
    num_classes: int  # training identities
    vocab_size: int
    mask_id: int
    pad_id: int
    special_ids: tuple[int, ...]
    sos_id: int = -1
    eos_id: int = -1
    image_grid: tuple[int, int] = (0, 0)  # the vision tower's patch grid (rows, columns)
    text_pool: str = "eos"  # how the text tower's tokens become one feature (pool_text)
    context_length: int = 77  # the tokenizer's caption length (before batches are trimmed)
    num_train_pairs: int = 0  # training (image, caption) pairs, for per-pair state


def phrase_means(token_rows: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """Rows [L, X] of a caption's tokens and its ``phrases`` annotation [L] (phrase p at
    the positions numbered p + 1) -> the mean row of each phrase's tokens [P, X]."""
    count = int(phrases.max()) if phrases.numel() else 0
    one_hot = (phrases[None, :] == torch.arange(1, count + 1, device=phrases.device)[:, None])
    one_hot = one_hot.to(token_rows.dtype)
    return (one_hot @ token_rows) / one_hot.sum(1, keepdim=True).clamp(min=1)


class AlignmentHead(nn.Module, metaclass=ABCMeta):
    """Base class: holds the loss weight; subclasses implement ``forward``."""

    needs_memory: ClassVar[bool] = False
    needs_distributions: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False
    rescores: ClassVar[bool] = False
    rescoring_keys: ClassVar[dict[str, tuple[str, ...]]] = {}  # {"query": (...), "gallery": (...)}
    top_k: int = 0
    fusion_grid: list[float] = []
    caption_annotations: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: HeadContext, weight: PositiveFloat = 1.0) -> None:
        super().__init__()
        self.ctx, self.weight = ctx, float(weight)

    def extra_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Extra tensors this head needs, made on the batch's device; none by default."""
        return {}

    def claims_retrieval(self, modality: Modality) -> bool:
        """Whether this head makes the retrieval embedding of ``modality``."""
        return False

    def retrieval_embedding(self, modality: Modality, inputs: RetrievalInput) -> torch.Tensor:
        """The embedding [B, E] ranking uses for a batch of ``modality`` (not normalised;
        ranking is by cosine); only asked of a head that ``claims_retrieval(modality)``."""
        raise NotImplementedError(f"{type(self).__name__} claims no retrieval embedding")

    def retrieval_parts(self) -> dict[str, slice]:
        """Named slices of the retrieval embedding that evaluation also ranks by alone."""
        return {}

    def rescoring_inputs(self, modality: Modality, tokens: torch.Tensor, batch: dict,
                         encoder: nn.Module) -> dict[str, torch.Tensor]:
        """What to keep of a batch of gallery images (``"image"``: ``tokens`` are the image
        tokens [B, N, D]) or query captions (``"text"``: text tokens [B, L, D]; ``batch``
        holds the ids and the caption annotations) for ``rescore``: tensors [B, ...]."""
        raise NotImplementedError(f"{type(self).__name__} does not re-score")

    def rescore(self, query: dict[str, torch.Tensor], gallery: dict[str, torch.Tensor],
                candidates: torch.Tensor) -> torch.Tensor:
        """Local scores [Q, k] of queries (``query``: rows of what ``rescoring_inputs`` kept)
        with their candidate gallery items (``candidates`` [Q, k] indices into ``gallery``)."""
        raise NotImplementedError(f"{type(self).__name__} does not re-score")

    def irra_role(self, name: str) -> str:
        """IRRA's optimiser role of the parameter ``name`` (relative to the head): by default
        "cross", the factor IRRA gives its randomly initialised cross-modal modules."""
        return "cross"

    def own_lr(self, name: str) -> float | None:
        """A learning rate of its own for the parameter ``name`` (relative to the head)."""
        return None

    # --- preparation from a pass over the training pairs before an epoch ------------------
    def prepares_for(self, epoch: int) -> bool:
        """Whether this head needs the pass over the training pairs before ``epoch``."""
        return False

    def preparation_scores(self, encoded: EncoderOutput, batch: dict[str, torch.Tensor]
                           ) -> dict[str, torch.Tensor]:
        """Per-pair losses [B'] (higher: worse) for one batch of the pass (no gradient), for
        the batch gathered from every process in rank order (``gather_with_grad``),
        B' = B × processes. A pair whose image was skipped (``data.skip_bad_images``) gets
        the worst value of the pass."""
        raise NotImplementedError(f"{type(self).__name__} does not prepare")

    def prepare(self, scores: dict[str, torch.Tensor], noisy: torch.Tensor, epoch: int,
                seed: int) -> dict[str, float]:
        """Prepares from the whole pass: ``scores`` as ``preparation_scores`` named them, each
        [num_train_pairs] indexed by pair; ``noisy`` [num_train_pairs] the data set's record
        of mismatched pairs (all False on clean data). Returns numbers to log."""
        raise NotImplementedError(f"{type(self).__name__} does not prepare")

    def distribution(self, modality: Modality, inputs: RetrievalInput) -> Gaussian | None:
        """The Gaussian this head models each item of a batch of ``modality`` as, or ``None``
        (the default: the head models no distribution)."""
        return None

    def match_probability(self, text: Gaussian, image: Gaussian) -> torch.Tensor | None:
        """P(match) [T, I] of every caption with every image, from their Gaussians (as
        ``TBPSModule.uncertainty`` found them), or ``None`` (the default: no probabilistic
        match)."""
        return None

    def pair_confidence(self, encoded: EncoderOutput, batch: dict[str, torch.Tensor]
                        ) -> torch.Tensor | None:
        """P(match) [B] of each training pair of the batch (no gradient), or ``None``."""
        return None

    def explain(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, batch: dict,
                encoder: nn.Module) -> tuple[torch.Tensor, str] | None:
        """For one image (its tokens [1, 1 + N, D]) and one caption (its text tokens
        [1, L, D]; ``batch`` holds ``caption_ids`` and the ``phrases`` annotation, phrase p
        at the positions numbered p + 1): (non-negative weights [P, gh·gw] of each phrase over
        the image patches, a few words naming what they are), or ``None`` if this head does
        not relate words to regions."""
        return None

    @abstractmethod
    def forward(self, encoded: EncoderOutput, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns weighted ``loss_*`` terms and diagnostics for one batch."""
