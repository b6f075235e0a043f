"""The dual encoder: a timm vision transformer and a transformers CLIP text transformer,
each followed by a linear projection into the joint space (as CLIP and IRRA do)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import timm
import torch
from torch import nn
from transformers import BertModel, CLIPTextConfig, CLIPTextModel

from ..components.pooling import caption_mask, pool_text
from ..errors import ConfigError
from ..types import EncoderOutput
from .attention_rows import clip_text_tokens_with_eos_attention, vit_tokens_with_cls_attention


class DualEncoder(nn.Module):
    """Encodes images and token ids into token sequences and global features.

    The global image feature is the projected class token; the global text feature is the
    projected token at the first end-of-text id (CLIP's pooling, ``text_pool="eos"``). With
    ``text_pool="mean"`` it is the mean over the caption's tokens instead: a randomly
    initialised causal text tower starts with an end-of-text token that has not yet learnt
    to read the caption, and training from scratch can then sit on a plateau for epochs.
    """

    def __init__(self, vision: nn.Module, text: CLIPTextModel, embed_dim: int, eos_id: int,
                 text_pool: str = "eos", global_bottleneck: bool = False) -> None:
        super().__init__()
        if text_pool not in ("eos", "mean", "cls"):
            raise ValueError(f"encoder.text_pool must be 'eos', 'mean' or 'cls', not {text_pool!r}")
        self.vision, self.text, self.text_pool = vision, text, text_pool
        # a bidirectional text tower (BERT) must not read the padding; CLIP's causal one
        # never does
        self.text_reads_padding = isinstance(text, BertModel)
        self.vision_proj = nn.Linear(vision.embed_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text.config.hidden_size, embed_dim, bias=False)
        self.embed_dim, self.eos_id = embed_dim, eos_id
        self.tokenizer = None  # set by from_pretrained; the training module keeps its own
        for proj in (self.vision_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        # ACSA's code passes both global features through a BatchNorm1d "bottleneck" (weight
        # 1, bias 0 and frozen) before every loss, the retrieval and the body-part tokens
        # (mul-hjh/ACSA models/model.py); off unless ``encoder.global_bottleneck``
        self.bottleneck = (nn.ModuleDict({"image": _bottleneck(embed_dim),
                                          "text": _bottleneck(embed_dim)})
                           if global_bottleneck else None)

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> projected tokens [B, 1 + patches, D] (with
        ``global_bottleneck``, token 0, the global feature, through the image bottleneck)."""
        return self._image_tokens(self.vision.forward_features(images))

    def encode_image_tokens_attention(self, images: torch.Tensor
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_image_tokens`` and the last layer's [CLS] attention row [B, N], averaged
        over heads (``tbps.model.attention_rows``; ViT towers only)."""
        features, rows = vit_tokens_with_cls_attention(self.vision, images)
        return self._image_tokens(features), rows

    def _image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.vision_proj(features)
        if self.bottleneck is None:
            return tokens
        return torch.cat([self.bottleneck["image"](tokens[:, 0])[:, None], tokens[:, 1:]], 1)

    def encode_text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> projected tokens [B, L, D] (CLIP's causal tower, or BERT with
        the padding masked)."""
        if not self.text_reads_padding:
            return self.text_proj(self.text(input_ids=ids).last_hidden_state)
        return self.text_proj(self._bert_tokens(ids))

    def encode_text_words(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> the words as the text tower takes them in, before any layer
        mixes them (its input embedding table, no position), projected into the joint space
        [B, L, D]: what a caption says word by word, whoever it describes."""
        return self.text_proj(self.text.get_input_embeddings()(ids))

    def _bert_tokens(self, ids: torch.Tensor, groups: int = 4) -> torch.Tensor:
        """BERT's last hidden states [B, L, H], the padding zeros. BERT masks the padding, so
        a caption's tokens do not depend on how far it is padded: the batch runs in
        ``groups`` groups of similar length, each cut to its longest caption (a batch pads
        to its longest caption, often twice the mean, and a BERT pass costs per column)."""
        mask = self.text_mask(ids)
        lengths = mask.sum(1)
        out = None
        for rows in lengths.argsort().chunk(groups):
            used = int(lengths[rows].max())
            hidden = self.text(input_ids=ids[rows, :used],
                               attention_mask=mask[rows, :used].long()).last_hidden_state
            if out is None:
                out = hidden.new_zeros(ids.shape[0], ids.shape[1], hidden.shape[-1])
            out[rows, :used] = hidden
        # zeros, not what BERT wrote at a padded column: a caption's output must not depend
        # on which captions share its group
        return out * mask.unsqueeze(-1)

    def encode_text_tokens_attention(self, ids: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_text_tokens`` and the last layer's attention row of the end-of-text token
        over the caption [B, L], averaged over heads (CLIP's causal text tower only)."""
        eos = (ids == self.eos_id).int().argmax(dim=-1)
        hidden, rows = clip_text_tokens_with_eos_attention(self.text, ids, eos)
        return self.text_proj(hidden), rows

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in both towers, with each library's own switch (timm's
        ``set_grad_checkpointing``, transformers' activation checkpointing, non-reentrant):
        a transformer block keeps only its input for the backward pass and recomputes the
        rest there, so a step needs far less memory (``encoder.grad_checkpointing``) for
        about one more forward pass of compute. The values are the same (tested). A
        frozen text tower keeps no activations and is left alone."""
        self.vision.set_grad_checkpointing(enable)
        if not any(p.requires_grad for p in self.text.parameters()):
            return
        # transformers >= 5.24 names it activation checkpointing; earlier, gradient
        on = getattr(self.text, "activation_checkpointing_enable", None)
        off = getattr(self.text, "activation_checkpointing_disable", None)
        if not enable:
            (off or self.text.gradient_checkpointing_disable)()
            return
        (on or self.text.gradient_checkpointing_enable)({"use_reentrant": False})
        # the hook transformers adds for frozen embeddings (adapters) is not wanted here:
        # ours train, and a forward hook that sets requires_grad only costs a compiled step
        # (older transformers add none, and raise AttributeError removing it)
        with contextlib.suppress(AttributeError):
            self.text.disable_input_require_grads()

    @property
    def grid_size(self) -> tuple[int, int]:
        """The vision tower's token grid (rows, columns) behind the non-global tokens."""
        grid = getattr(self.vision, "token_grid", None)
        return tuple(grid) if grid is not None else tuple(self.vision.patch_embed.grid_size)

    def text_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the caption's positions up to its end-of-text token."""
        return caption_mask(ids, self.eos_id)

    def text_global(self, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] tokens -> [B, D] by the configured pooling (then the text bottleneck)."""
        pooled = pool_text(tokens, ids, self.text_pool, self.eos_id)
        return pooled if self.bottleneck is None else self.bottleneck["text"](pooled)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global image features [B, D], not normalised."""
        return self.encode_image_tokens(images)[:, 0]

    def encode_text(self, ids: torch.Tensor | list[str]) -> torch.Tensor:
        """Global text features [B, D], not normalised, from token ids or from strings
        (tokenised with the encoder's own tokenizer, set by ``from_pretrained``)."""
        if not isinstance(ids, torch.Tensor):
            if getattr(self, "tokenizer", None) is None:
                raise ValueError("this encoder has no tokenizer attached; pass token ids")
            ids = self.tokenizer.encode(list(ids)).to(self.text_proj.weight.device)
        return self.text_global(self.encode_text_tokens(ids), ids)

    @classmethod
    def from_pretrained(cls, source: str | Path, image_size: tuple[int, int] = (384, 128),
                        pos_interpolation: str = "bilinear", act: str | None = None,
                        text_pool: str = "eos") -> "DualEncoder":
        """A CLIP ViT dual encoder with real weights, its tokenizer and normalisation.

        ``source``: OpenAI's ``ViT-B-16.pt`` (TorchScript or state dict), an open_clip
        checkpoint (file, or folder with ``open_clip_config.json``), a Hugging Face CLIP
        folder, or a hub name when online. The 14×14 position grid is interpolated to
        ``image_size / patch`` (``pos_interpolation``: any ``F.interpolate`` mode; IRRA's is
        bilinear). ``act`` overrides the MLP activation where the file cannot tell (a bare
        open_clip state dict of a non-OpenAI model: ``act="gelu"``). The result carries
        ``tokenizer`` (CLIP BPE with ``<|mask|>``), ``image_mean``, ``image_std`` and
        ``arch`` (the ``encoder`` config that rebuilds it).
        """
        from ..data.tokenizer import CaptionTokenizer
        from ..data.transforms import CLIP_MEAN, CLIP_STD
        from .clip_weights import infer_architecture, read_clip_source, to_dual_encoder_state

        sd, facts, folder = read_clip_source(source)
        if act is not None:
            facts.update(act=act, text_act=act)
        arch = infer_architecture(sd, tuple(image_size), facts.get("act", "quick_gelu"),
                                  facts.get("text_act"), facts.get("eps", 1e-5))
        tokenizer = CaptionTokenizer.clip(folder, arch["context_length"])
        if tokenizer.vocab_size != arch["vocab_size"]:
            raise ConfigError(f"{source}: the text tower has {arch['vocab_size']} token "
                              f"embeddings but the CLIP tokenizer {tokenizer.vocab_size}")
        enc = build_dual_encoder(arch["vision"], arch["text"], arch["embed_dim"],
                                 tokenizer.vocab_size, tokenizer.context_length,
                                 tokenizer.eos_id, tokenizer.pad_id, tokenizer.sos_id, text_pool)
        nested = any(k.startswith("text_model.") for k in enc.text.state_dict())
        state = to_dual_encoder_state(sd, arch, pos_interpolation,
                                      "text.text_model." if nested else "text.")
        missing, unexpected = enc.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ConfigError(f"{source}: weights do not fit the CLIP architecture read from "
                              f"them (missing {missing[:4]}, unexpected {unexpected[:4]})")
        enc.tokenizer, enc.arch = tokenizer, arch
        enc.image_mean, enc.image_std = CLIP_MEAN, CLIP_STD
        return enc

    def forward(self, images: torch.Tensor, ids: torch.Tensor,
                extra_text: dict[str, torch.Tensor] | None = None,
                attention: bool = False, words: bool = False) -> EncoderOutput:
        """Both towers on a batch; ``attention``: also the global tokens' last-layer attention
        rows (``EncoderOutput.image_attention`` / ``text_attention``); ``words``: also the
        caption's input word embeddings (``EncoderOutput.text_words``)."""
        img_attn = txt_attn = None
        if attention:
            img_tokens, img_attn = self.encode_image_tokens_attention(images)
            txt_tokens, txt_attn = self.encode_text_tokens_attention(ids)
        else:
            img_tokens, txt_tokens = self.encode_image_tokens(images), self.encode_text_tokens(ids)
        extra = {k: self.encode_text_tokens(v) for k, v in (extra_text or {}).items()}
        return EncoderOutput(image_tokens=img_tokens, text_tokens=txt_tokens,
                             image_global=img_tokens[:, 0], text_global=self.text_global(txt_tokens, ids),
                             text_mask=self.text_mask(ids), extra_text=extra,
                             image_attention=img_attn, text_attention=txt_attn,
                             text_words=self.encode_text_words(ids) if words else None)


def _bottleneck(dim: int) -> nn.BatchNorm1d:
    norm = nn.BatchNorm1d(dim)  # weight 1, bias 0: the code's kaiming init of a BatchNorm
    norm.bias.requires_grad_(False)
    return norm


def build_dual_encoder(vision: dict, text: dict, embed_dim: int, vocab_size: int,
                       context_length: int, eos_id: int, pad_id: int = 0,
                       bos_id: int = 2, text_pool: str = "eos",
                       global_bottleneck: bool = False,
                       grad_checkpointing: bool = False) -> DualEncoder:
    """Builds a randomly initialised dual encoder of any size.

    ``vision`` is ``{"model": <timm name>, **timm kwargs}`` (e.g. ``img_size``, ``patch_size``,
    ``embed_dim``, ``depth``); ``text`` holds `CLIPTextConfig` fields (``hidden_size``,
    ``num_hidden_layers``, ...). Vocabulary, context and special ids come from the tokenizer.
    """
    vision = dict(vision)
    name = vision.pop("model")
    if "img_size" in vision:
        vision["img_size"] = tuple(vision["img_size"])
    if name.startswith("swin"):  # ACSA's Swin-T (tbps.model.swin_bert)
        from .swin_bert import SwinTokens

        tower = SwinTokens(name, **vision)
    else:
        tower = timm.create_model(name, pretrained=False, num_classes=0, **vision)
    if text.get("model") == "bert":  # a BERT text tower: ACSA's, or MiniLM (encoder=tiny_minilm)
        from .swin_bert import build_bert

        txt = build_bert(text, vocab_size, context_length, pad_id)
    else:
        cfg = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=context_length,
                             eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=bos_id,
                             **text)
        txt = CLIPTextModel._from_config(cfg, attn_implementation="sdpa")
    encoder = DualEncoder(tower, txt, embed_dim, eos_id, text_pool, global_bottleneck)
    if grad_checkpointing:
        encoder.set_grad_checkpointing()
    return encoder
