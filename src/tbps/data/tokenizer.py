"""Caption tokenisation: a byte-pair tokenizer with a mask token, trained with `tokenizers`.

From-scratch runs train it on the training captions once and save it with the run (and
inside every checkpoint), so that evaluation and search encode text exactly as training did.
Ids follow CLIP's conventions where it matters to the heads: padding is 0, each caption is
``[SOS] tokens [EOS]``, truncation keeps ``[EOS]`` last, and ``[MASK]`` exists for MLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIALS = ["[PAD]", "[UNK]", "[SOS]", "[EOS]", "[MASK]"]


class CaptionTokenizer:
    """Wraps a `tokenizers.Tokenizer` with fixed-length batch encoding to id tensors."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tok = tokenizer
        self.context_length = context_length
        ids = {s: tokenizer.token_to_id(s) for s in SPECIALS}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; train it with "
                             f"CaptionTokenizer.train so that it has {SPECIALS}")
        self.pad_id, self.unk_id = ids["[PAD]"], ids["[UNK]"]
        self.sos_id, self.eos_id, self.mask_id = ids["[SOS]"], ids["[EOS]"], ids["[MASK]"]
        self.tok.enable_truncation(max_length=context_length)  # the post-processor keeps [EOS]
        self.tok.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", length=context_length)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def special_ids(self) -> list[int]:
        return [self.pad_id, self.unk_id, self.sos_id, self.eos_id, self.mask_id]

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 1024,
              context_length: int = 64) -> "CaptionTokenizer":
        """Learns a byte-pair vocabulary of at most ``vocab_size`` from ``captions``."""
        tok = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))  # as CLIP
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      end_of_word_suffix="</w>", show_progress=False)
        tok.train_from_iterator(captions, trainer=trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="[SOS] $A [EOS]", special_tokens=[("[SOS]", 2), ("[EOS]", 3)])
        return cls(tok, context_length)

    def encode(self, captions: list[str]) -> torch.Tensor:
        """Token ids [len(captions), context_length], int64, padded with 0."""
        return torch.tensor([e.ids for e in self.tok.encode_batch(captions)], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def to_json(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_json(cls, text: str, context_length: int) -> "CaptionTokenizer":
        return cls(Tokenizer.from_str(text), context_length)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())
