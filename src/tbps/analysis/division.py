"""How well a checkpoint's per-pair losses find the swapped training pairs, and what RDE's
consensus division makes of them (docs/results.md, "RDE on SynthPedes").

`python -m tbps.analysis.division runs/rde_synthetic/<time>/checkpoints/last.ckpt` runs the
preparation pass of the checkpoint's heads over its training pairs (its own data config,
caption noise included; no caption augmentation, so the numbers do not depend on its
draws), then prints JSON: per view, the ROC AUC of the loss as a detector of the data set's
noise flags and the share of clean pairs among the lowest 70% of losses; and the division's
precision and recall of "clean" with the code's default mixture fit and with its longer fit
(RSTPReid, noise above 40%), and with the default fit at the stricter posterior thresholds
0.9 and 0.95 (`heads.rde.clean_threshold`, applied to a view whose mixture separates, Ashman's
D ≥ 2, as the head applies it); each with the mixtures' separations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from types import SimpleNamespace

import numpy as np
import torch

from ..components.consensus import SEPARATED, MixtureFit, consensus_division


def pair_losses(ckpt: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Each view's per-pair loss over the checkpoint's training pairs, and the noise flags."""
    from omegaconf import OmegaConf

    from ..model.module import TBPSModule
    from ..model.preparation import prepare_heads
    from ..train import build_data

    module = TBPSModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = build_data(OmegaConf.create(module.cfg))
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    module.text_augment = None
    shim = SimpleNamespace(datamodule=dm, world_size=1, global_rank=0, precision_plugin=
                           SimpleNamespace(forward_context=contextlib.nullcontext))
    dm.trainer = module._trainer = shim
    got: dict = {}
    for head in module.heads.values():
        if not head.prepares_for(10**6):
            continue

        def keep(scores, noisy, epoch, seed, _prepare=head.prepare):
            got.update(scores=scores, noisy=noisy.numpy().astype(bool))
            return _prepare(scores, noisy, epoch, seed)

        head.prepare = keep
    if not prepare_heads(module, 10**6):
        raise SystemExit(f"{ckpt}: no head of this model prepares from the training pairs "
                         "(RDE's `rde` head does)")
    return got["scores"], got["noisy"]


def measure(scores: dict[str, torch.Tensor], noisy: np.ndarray, seed: int = 0) -> dict:
    from sklearn.metrics import roc_auc_score

    clean = ~noisy
    out: dict = {"pairs": int(len(noisy)), "noisy_share": float(noisy.mean()), "views": {}}
    for name, losses in scores.items():
        v = losses.numpy()
        lowest = np.argsort(v, kind="stable")[: int(0.7 * len(v))]
        out["views"][name] = {"auc": float(roc_auc_score(noisy, v)),
                              "clean_share_of_lowest_70pct": float(clean[lowest].mean())}
    a, b = list(scores.values())[:2]

    def division(fit: MixtureFit, threshold: float = 0.5) -> dict:
        # the head's gate: a stricter threshold only where a view's mixture separates
        labels, said = consensus_division(a, b, fit, seed, threshold, SEPARATED)
        kept = labels.numpy().astype(bool)
        return {"precision": float((kept & clean).sum() / max(1, kept.sum())),
                "recall": float((kept & clean).sum() / max(1, clean.sum())),
                "clean_share": float(kept.mean()),
                "separation": [said["separation_a"], said["separation_b"]]}

    out["default_fit"] = division(MixtureFit())
    out["long_fit"] = division(MixtureFit(100, 1e-4, 1e-6))
    # `heads.rde.clean_threshold`: the default fit with a stricter posterior
    out["default_fit_threshold"] = {str(t): division(MixtureFit(), t) for t in (0.9, 0.95)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tbps.analysis.division",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt")
    args = parser.parse_args(argv)
    scores, noisy = pair_losses(args.ckpt)
    print(json.dumps(measure(scores, noisy), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
