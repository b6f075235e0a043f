"""Is a model's predicted uncertainty meaningful? Two measurements on a checkpoint whose
model predicts a caption's variance (CRUE's UGM head, or UCFA's shared distributions):

- ``noise``: for a run trained with caption noise, the predicted σ of every training
  caption split by the clean/noisy flag the loader keeps, and how well σ alone separates
  them (ROC AUC; 0.5 = not at all);
- ``words``: on SynthPedes' test captions, which leave details out at random, the Spearman
  rank correlation between a caption's σ and the number of attribute words it mentions
  (negative: fewer words, more uncertainty).

`python -m tbps.analysis.uncertainty [noise|words] runs/<experiment>/<time>/checkpoints/best.ckpt`
"""

from __future__ import annotations

import json
import sys

import torch
from omegaconf import OmegaConf
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.classification import binary_auroc

from ..model.checkpoint import load_checkpoint
from ..model.module import TBPSModule
from ..train import build_data
from .features import _attribute_words


@torch.inference_mode()
def caption_sigma(module: TBPSModule, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Each caption's mean predicted σ [N], from UCFA's distributions or CRUE's UGM head."""
    ugm = next((h for h in module.heads.values() if hasattr(h, "text_gauss")), None)
    if module.distributions is None and ugm is None:
        raise SystemExit("this checkpoint predicts no caption variance (no UGM head, no "
                         "distributions): nothing to measure")
    enc = module.encoder
    sigmas = []
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        tokens = enc.encode_text_tokens(chunk)
        glob = enc.text_global(tokens, chunk)
        if module.distributions is not None:
            sigmas.append(module.distributions.text_sigma(tokens, glob, enc.text_mask(chunk)))
        else:
            sigmas.append(ugm.text_gauss(glob)[1].mul(0.5).exp().mean(1))
    return torch.cat(sigmas)


def _data(module: TBPSModule):
    data = dict(module.cfg["data"], num_workers=0, pin_memory=False)
    dm = build_data(OmegaConf.create({"data": data}))
    dm.set_tokenizer(module.tokenizer)
    return dm, data


def sigma_by_noise(ckpt: str) -> dict:
    module = load_checkpoint(ckpt).eval()
    dm, data = _data(module)
    noisy = torch.tensor(dm.records["train"].caption_noisy)
    sigma = caption_sigma(module, dm._caption_ids["train"])
    return {"checkpoint": ckpt, "noise_rate": data.get("noise_rate"), "captions": len(sigma),
            "noisy": int(noisy.sum()),
            "text_sigma_clean": round(float(sigma[~noisy].mean()), 5),
            "text_sigma_noisy": round(float(sigma[noisy].mean()), 5),
            "auc_sigma_flags_noisy": round(float(binary_auroc(sigma, noisy.long())), 4)}


def sigma_by_words(ckpt: str, split: str = "test") -> dict:
    module = load_checkpoint(ckpt).eval()
    dm, _ = _data(module)
    words = _attribute_words(dm.root / dm.benchmark.folder / dm.benchmark.annotation, split)
    if not words:
        raise SystemExit(f"{dm.root} records no attribute words (SynthPedes does): nothing "
                         "to correlate")
    ids = dm._caption_ids[split]
    sigma = caption_sigma(module, ids)
    count = torch.tensor([len(w) for w in words], dtype=torch.float32)
    # the number of words goes with the caption's length: the length's own correlation
    # says how much of the effect is just "shorter caption"
    length = module.encoder.text_mask(ids).sum(1).float()
    few = count <= count.median()
    sw, st, wt = (float(spearman_corrcoef(a, b)) for a, b in
                  ((sigma, count), (sigma, length), (count, length)))
    partial = (sw - st * wt) / max(1e-12, ((1 - st ** 2) * (1 - wt ** 2)) ** 0.5)
    return {"checkpoint": ckpt, "split": split, "captions": len(sigma),
            "spearman_sigma_vs_words": round(sw, 4),
            "spearman_sigma_vs_tokens": round(st, 4),
            "spearman_words_vs_tokens": round(wt, 4),
            # σ against the words with the caption length held fixed (partial rank corr.)
            "partial_sigma_vs_words_given_tokens": round(partial, 4),
            "sigma_fewer_words": round(float(sigma[few].mean()), 5),
            "sigma_more_words": round(float(sigma[~few].mean()), 5),
            "median_words": float(count.median())}


if __name__ == "__main__":
    what, path = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else ("noise", sys.argv[1])
    measure = {"noise": sigma_by_noise, "words": sigma_by_words}.get(what)
    if measure is None:
        raise SystemExit(f"unknown measurement {what!r}; choose noise or words")
    print(json.dumps(measure(path), indent=1))
