"""Caption tokenisation: a byte-pair tokenizer with a mask token, trained with `tokenizers`.

From-scratch runs train it on the training captions once and save it with the run (and
inside every checkpoint), so that evaluation and search encode text exactly as training did.
Ids follow CLIP's conventions where it matters to the heads: padding is 0, each caption is
``[SOS] tokens [EOS]``, truncation keeps ``[EOS]`` last, and ``[MASK]`` exists for MLM.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..errors import ConfigError
from .clip_bpe import EOT, MASK, SOT, build_clip_tokenizer, clip_clean

if TYPE_CHECKING:
    import torch

SPECIALS = ["[PAD]", "[UNK]", "[SOS]", "[EOS]", "[MASK]"]
# CLIP pads with id 0 (which is also the token "!", as in every CLIP codebase) and has no
# unknown token (byte-level BPE covers every input).
CLIP_SPECIALS = {"pad": "!", "unk": None, "sos": SOT, "eos": EOT, "mask": MASK}


# BERT's WordPiece vocabulary (ACSA's backbone): [CLS] caption [SEP], padded with [PAD]
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "sos": "[CLS]", "eos": "[SEP]", "mask": "[MASK]"}


class CaptionTokenizer:
    """Wraps a `tokenizers.Tokenizer` with fixed-length batch encoding to id tensors."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tok = tokenizer
        self.context_length = context_length
        self.is_clip = tokenizer.token_to_id(SOT) is not None
        is_bert = tokenizer.token_to_id("[CLS]") is not None and tokenizer.token_to_id("[SOS]") is None
        if self.is_clip:
            names = CLIP_SPECIALS
        elif is_bert:
            names = BERT_SPECIALS
        else:
            names = dict(zip(("pad", "unk", "sos", "eos", "mask"), SPECIALS))
            missing = [s for s in SPECIALS if tokenizer.token_to_id(s) is None]
            if missing:
                raise ValueError(f"tokenizer lacks the special tokens {missing}; train it with "
                                 f"CaptionTokenizer.train so that it has {SPECIALS}")
        ids = {k: None if v is None else tokenizer.token_to_id(v) for k, v in names.items()}
        self.pad_id, self.unk_id = ids["pad"], ids["unk"]
        self.sos_id, self.eos_id, self.mask_id = ids["sos"], ids["eos"], ids["mask"]
        # The post-processor adds [SOS]/[EOS] after truncation, so the end token stays last.
        self.tok.enable_truncation(max_length=context_length)
        self.tok.enable_padding(pad_id=self.pad_id, pad_token=names["pad"], length=context_length)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def special_ids(self) -> list[int]:
        return [i for i in (self.pad_id, self.unk_id, self.sos_id, self.eos_id, self.mask_id)
                if i is not None]

    @classmethod
    def clip(cls, folder: str | Path | None = None, context_length: int = 77) -> "CaptionTokenizer":
        """CLIP's BPE with ``<|mask|>`` at 49405 (see ``clip_bpe``), from a checkpoint
        folder's vocab.json + merges.txt or from open_clip_torch's copy."""
        return cls(build_clip_tokenizer(folder), context_length)

    @classmethod
    def bert(cls, folder: str | Path, context_length: int = 64) -> "CaptionTokenizer":
        """BERT's uncased WordPiece from a Hugging Face folder (tokenizer.json or vocab.txt)."""
        from tokenizers.implementations import BertWordPieceTokenizer

        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), context_length)
        if not (folder / "vocab.txt").is_file():
            raise ConfigError(f"{folder} has neither tokenizer.json nor vocab.txt: give the "
                              "bert-base-uncased folder as encoder.bert_weights")
        wp = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)
        return cls(wp._tokenizer, context_length)

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 1024,
              context_length: int = 64) -> "CaptionTokenizer":
        """Learns a byte-pair vocabulary of at most ``vocab_size`` from ``captions``.

        The merges are learnt here, deterministically (ties go to the lexicographically
        smallest pair), and handed to a `tokenizers` BPE model that does the encoding:
        the library's own trainer breaks ties in hash-map order, so the same captions gave
        different ids in different processes, and runs with the same seed diverged."""
        tok = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))  # as CLIP
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        vocab, merges = _learn_merges(captions, tok, vocab_size)
        tok.model = models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges,
                               unk_token="[UNK]", end_of_word_suffix="</w>")
        tok.add_special_tokens(SPECIALS)
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
        tok.post_processor = processors.TemplateProcessing(
            single="[SOS] $A [EOS]", special_tokens=[("[SOS]", 2), ("[EOS]", 3)])
        return cls(tok, context_length)

    def encode(self, captions: list[str]) -> torch.Tensor:
        """Token ids [len(captions), context_length], int64, padded with 0."""
        import torch

        return torch.from_numpy(self.encode_numpy(captions))

    def encode_numpy(self, captions: list[str]) -> np.ndarray:
        """``encode`` as a NumPy array: what a query of an indexed gallery needs, without
        importing torch (``tbps.search``)."""
        if self.is_clip:
            captions = [clip_clean(c) for c in captions]
        return np.array([e.ids for e in self.tok.encode_batch(captions)], dtype=np.int64)

    def prepare(self, caption: str) -> str:
        """The caption as the tokenizer reads it (CLIP's cleaning for CLIP; our own BPE
        normalises inside `tokenizers`, which keeps offsets into the original). Phrase and
        attribute spans for ``token_spans`` are taken on this text."""
        return clip_clean(caption) if self.is_clip else caption

    def token_spans(self, text: str, char_spans: list[tuple[int, int]]
                    ) -> list[tuple[int, int] | None]:
        """Token positions [start, end) in the encoded ids of ``text`` (a ``prepare``d
        caption) covering each character span: every sub-word piece of a word, so a word is
        masked or pooled whole. ``None`` where truncation cut the span off."""
        enc = self.tok.encode(text)
        pieces = [(k, a, b) for k, ((a, b), special) in
                  enumerate(zip(enc.offsets, enc.special_tokens_mask)) if not special]
        cut = [(a, b) for o in enc.overflowing
               for (a, b), special in zip(o.offsets, o.special_tokens_mask) if not special]
        out: list[tuple[int, int] | None] = []
        for s, e in char_spans:
            hit = [k for k, a, b in pieces if a < e and b > s]
            partly_cut = any(a < e and b > s for a, b in cut)
            out.append((hit[0], hit[-1] + 1) if hit and not partly_cut else None)
        return out

    def decode(self, ids: list[int]) -> str:
        ids = list(ids)
        if self.eos_id in ids:  # what follows is padding (for CLIP, id 0 is also "!")
            ids = ids[:ids.index(self.eos_id)]
        return self.tok.decode(ids, skip_special_tokens=True)

    def to_json(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_json(cls, text: str, context_length: int) -> "CaptionTokenizer":
        return cls(Tokenizer.from_str(text), context_length)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())


def _learn_merges(captions: Iterable[str], tok: Tokenizer, vocab_size: int
                  ) -> tuple[list[str], list[tuple[str, str]]]:
    """Classic BPE over word counts (Sennrich et al.), with CLIP's end-of-word mark."""
    words: Counter = Counter()
    for caption in captions:
        text = tok.normalizer.normalize_str(caption)
        words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text))
    splits = {w: (*w[:-1], w[-1] + "</w>") for w in words}
    vocab = SPECIALS + sorted({s for parts in splits.values() for s in parts})
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for w, n in words.items():
            parts = splits[w]
            for pair in zip(parts, parts[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        joined = best[0] + best[1]
        for w, parts in splits.items():
            if len(parts) < 2 or best[0] not in parts:
                continue
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            splits[w] = tuple(out)
        merges.append(best)
        vocab.append(joined)
    return vocab, merges
