"""The pass over the training pairs that heads prepare from before an epoch
(``AlignmentHead.prepares_for`` / ``preparation_scores`` / ``prepare``; RDE's division), and
the module's own division of the pairs by P(match) (``components.pair_division``), which
reads each batch's P(match) through ``TBPSModule.pair_confidence``.

Every process runs its shard of the pairs (``TBPSDataModule.preparation_dataloader``: the
training transform and caption augmentation, shuffled per epoch as RDE's pass over its
training loader, every pair at least once; ``preparation_augment: false`` scores the pairs
as evaluation sees them instead), in eval mode and without gradients; the heads score each
batch gathered from every process, so each process assembles the same full arrays. What the heads prepare
is then broadcast from rank 0, so that no process can hold a different division.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from ..distributed import gather_with_grad, world_size


def prepare_heads(module, epoch: int) -> dict[str, float]:
    """Runs the pass if a head of ``module`` (a ``TBPSModule`` attached to a trainer with a
    ``TBPSDataModule``) prepares for ``epoch``; returns what the heads report."""
    heads = {n: h for n, h in module.heads.items() if h.prepares_for(epoch)}
    division = module.pair_division
    if division is not None and not division.prepares_for(epoch):
        division = None
    if not heads and division is None:
        return {}
    began = time.perf_counter()
    augment = bool(module.cfg.get("preparation_augment", True))
    loader = module.trainer.datamodule.preparation_dataloader(epoch, augment)
    total = len(loader.dataset)
    preparers = dict(heads, **({"pair_weights": division} if division is not None else {}))
    scores: dict[str, dict[str, torch.Tensor]] = {n: {} for n in preparers}
    noisy = torch.zeros(total, dtype=torch.bool)
    seen = torch.zeros(total, dtype=torch.bool)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), module.trainer.precision_plugin.forward_context():
            for batch in loader:
                batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v
                         for k, v in batch.items()}
                if augment and module.text_augment is not None:  # what training sees
                    batch["caption_ids"] = module.text_augment(batch["caption_ids"])
                encoded = module.encode(batch["image"], batch["caption_ids"])
                index = gather_with_grad(batch["index"]).cpu()
                noisy[index] = gather_with_grad(batch["noisy"].long()).cpu().bool()
                seen[index] = True
                if module.distributions is not None:  # as in training: UCFA's heads read them
                    batch["distributions"] = module.distributions(encoded)
                got = {n: h.preparation_scores(encoded, batch) for n, h in heads.items()}
                if division is not None:
                    got["pair_weights"] = division.preparation_scores(
                        module.pair_confidence(encoded, batch))
                for name, said in got.items():
                    for key, value in said.items():
                        kept = scores[name].setdefault(key, torch.full((total,), float("nan")))
                        kept[index] = value.float().cpu()
    finally:
        module.train(was_training)
    unscored = int((~seen).sum())
    if unscored and not module.count_skipped:
        raise RuntimeError(f"the preparation pass before epoch {epoch} scored "
                           f"{total - unscored} of {total} training pairs: run `tbps "
                           "check-data` on the data set")
    for kept in scores.values():  # pairs whose image was skipped (data.skip_bad_images) score
        for values in kept.values():  # as the worst scored pair, and are counted
            values[~seen] = values[seen].max() if bool(seen.any()) else 0.0
    report: dict[str, float] = {"preparation_unscored_pairs": float(unscored)} if unscored else {}
    for name, preparer in preparers.items():
        said = preparer.prepare(scores[name], noisy, epoch, int(module.cfg.get("seed", 0)))
        if world_size() > 1:
            for buffer in preparer.buffers():
                dist.broadcast(buffer, src=0)
        report.update(said)
    report["preparation_seconds"] = time.perf_counter() - began
    return report
