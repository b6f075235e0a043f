"""How much does a re-scoring head's local score add? For a checkpoint with one (ACSA), the
fused metrics at every weight of its grid, on the validation and the test split, beside
the global ranking's; the weight the run chose on validation is marked.

`python -m tbps.analysis.fusion runs/acsa_synthetic/<time>/checkpoints/best.ckpt`
"""

from __future__ import annotations

import json
import sys

import torch
from omegaconf import OmegaConf

from ..metrics.retrieval import TextToImageRetrieval
from ..model.checkpoint import load_checkpoint
from ..train import build_data


@torch.inference_mode()
def fusion_table(ckpt: str) -> dict:
    module = load_checkpoint(ckpt).eval()
    head = module._rescorer
    if head is None:
        raise SystemExit(f"{ckpt} has no head that re-scores at inference: nothing to fuse")
    dm = build_data(OmegaConf.create({"data": dict(module.cfg["data"], num_workers=0,
                                                    pin_memory=False)}))
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    grid = sorted(set(head.fusion_grid) | {0.0, 0.5})
    out = {"checkpoint": ckpt, "chosen_on_validation": module.fusion_weight,
           "top_k": head.top_k}
    for split in (dm.val_split, "test"):
        metric = TextToImageRetrieval(extra_keys=head.rescoring_keys)
        for idx, loader in enumerate(dm._eval_loaders(split)):
            for batch in loader:
                module._eval_step(metric, batch, idx)
        _, fused = metric.compute_fused(head.rescore, grid, head.top_k)
        out[split] = {f"w={w:g}": {k: round(v, 2) for k, v in fused[w].items()
                                   if k in ("R1", "mAP")} for w in grid}
    return out


if __name__ == "__main__":
    print(json.dumps(fusion_table(sys.argv[1]), indent=1))
