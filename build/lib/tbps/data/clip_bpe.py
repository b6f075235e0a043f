"""The CLIP byte-pair tokenizer as a `tokenizers.Tokenizer`, with IRRA's mask token.

CLIP's vocabulary is 256 byte symbols, the same with the end-of-word mark ``</w>``, 48,894
merges and two specials: 49,408 ids. IRRA, TBPS-CLIP and RDE give id 49,405 (the last
merge, ``jekyll</w>``) to ``<|mask|>`` and drop that merge, so that the embedding table
keeps its size; ``<|startoftext|>`` is 49,406 and ``<|endoftext|>`` 49,407. The only
difference from stock CLIP ids is therefore the word "jekyll", which becomes two tokens.

Text is cleaned as CLIP cleans it (ftfy, HTML unescape, whitespace collapse, lowercase) in
Python before the Rust tokenizer; see ``clip_clean``.
"""

from __future__ import annotations

import gzip
import html
import json
import re
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ..errors import ConfigError

SOT, EOT, MASK = "<|startoftext|>", "<|endoftext|>", "<|mask|>"
# CLIP's pre-tokenisation pattern (text is already lowercase when it runs).
_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPACES = re.compile(r"\s+")


@lru_cache(1)
def _bytes_to_unicode() -> list[str]:
    """CLIP's (and GPT-2's) printable stand-in for each byte, in vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACES.sub(" ", text).strip().lower()


def _open_clip_merges() -> list[tuple[str, str]]:
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as exc:
        raise ConfigError("the CLIP vocabulary comes from open_clip_torch (pip install "
                          "open_clip_torch) or from a checkpoint folder with vocab.json and "
                          "merges.txt") from exc
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]


def _folder_merges(folder: Path) -> list[tuple[str, str]]:
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if len(vocab) != 512 + len(merges) + 2:
        raise ConfigError(f"{folder}: vocab.json has {len(vocab)} entries and merges.txt "
                          f"{len(merges)} merges, which is not a CLIP vocabulary "
                          "(512 + merges + 2 specials)")
    return merges


def build_clip_tokenizer(folder: str | Path | None = None) -> Tokenizer:
    """The CLIP BPE from ``folder``'s vocab.json + merges.txt (a Hugging Face CLIP folder)
    if it has them, else from the copy inside open_clip_torch."""
    folder = Path(folder) if folder else None
    merges = (_folder_merges(folder) if folder and (folder / "merges.txt").is_file()
              else _open_clip_merges())
    symbols = _bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges[:-1]]
    vocab += [MASK, SOT, EOT]  # the last merge gives its id to <|mask|>
    tok = Tokenizer(models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges[:-1],
                               end_of_word_suffix="</w>", continuing_subword_prefix="",
                               fuse_unk=False))
    tok.add_special_tokens([MASK, SOT, EOT])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.Sequence([decoders.BPEDecoder(suffix="</w>"), decoders.ByteLevel()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab.index(SOT)), (EOT, vocab.index(EOT))])
    return tok
