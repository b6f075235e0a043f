"""Does UGM's variance find the noisy pairs? For a CRUE checkpoint trained with caption
noise, the predicted σ of every training caption and image, split by the clean/noisy flag
the loader keeps, and how well σ alone separates them (ROC AUC; 0.5 = not at all).

`python -m tbps.analysis.uncertainty runs/crue_synthetic/<time>/checkpoints/best.ckpt`
"""

from __future__ import annotations

import json
import sys

import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import binary_auroc

from ..model.checkpoint import load_checkpoint
from ..train import build_data


@torch.inference_mode()
def sigma_by_noise(ckpt: str) -> dict:
    module = load_checkpoint(ckpt).eval()
    ugm = next((h for h in module.heads.values() if hasattr(h, "text_gauss")), None)
    if ugm is None:
        raise SystemExit(f"{ckpt} has no UGM head: nothing to measure")
    data = dict(module.cfg["data"], num_workers=0, pin_memory=False)
    dm = build_data(OmegaConf.create({"data": data}))
    dm.set_tokenizer(module.tokenizer)
    rec = dm.records["train"]
    noisy = torch.tensor(rec.caption_noisy)
    ids = dm._caption_ids["train"]
    sigmas = []
    for s in range(0, len(ids), 256):
        feats = module.encoder.encode_text(ids[s:s + 256])
        _, logvar = ugm.text_gauss(feats)
        sigmas.append(logvar.mul(0.5).exp().mean(1))
    sigma = torch.cat(sigmas)
    return {"checkpoint": ckpt, "noise_rate": data.get("noise_rate"), "captions": len(sigma),
            "noisy": int(noisy.sum()),
            "text_sigma_clean": round(float(sigma[~noisy].mean()), 5),
            "text_sigma_noisy": round(float(sigma[noisy].mean()), 5),
            "auc_sigma_flags_noisy": round(float(binary_auroc(sigma, noisy.long())), 4)}


if __name__ == "__main__":
    print(json.dumps(sigma_by_noise(sys.argv[1]), indent=1))
