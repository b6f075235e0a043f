"""What each loss term teaches a caption's σ (issue 25's "does σ measure vagueness?").

On a checkpoint whose model has shared distributions (UCFA's ``distributions:``; CRUE's UGM
keeps its Gaussians inside the head, which this does not read), runs training-mode
forward passes over a few shuffled training batches and takes, for every loss term that
reaches the captions' log-variances, the direction one step of gradient descent would move
each caption's log σ² (minus the gradient, averaged over dimensions). Printed per term as
JSON: Spearman's ρ of that direction with log(identities the caption fits) (SynthPedes'
record; > 0: the term raises σ for vague captions, which is what σ is meant to learn), the
same with the caption's length held fixed (the partial ρ ``tbps uncertainty`` reads σ by),
and the direction's mean and mean magnitude (which term dominates). The ordering term and
PFE's term come on their own keys (``loss_dcl_order``, ``loss_dcl_mls``). Nothing is updated.

    python -m tbps.analysis.sigma_signal runs/ucfa_synthetic/<time>/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchmetrics.functional import spearman_corrcoef

from ..errors import TBPSError
from .features import checkpoint_data
from .uncertainty import _captions_by_split, partial_spearman


def caption_directions(module, dm, batches: int = 12, seed: int = 0
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                  torch.Tensor]:
    """Per loss term, the descent direction of each caption's log σ² over ``batches``
    shuffled training batches [N] (minus the gradient, averaged over dimensions); the
    captions' log σ² [N, D], their log(identities fitted) [N] and their lengths in tokens
    [N], in the same order."""
    if module.distributions is None:
        raise TBPSError("this checkpoint's model has no distributions (`distributions:` in "
                        "its config: UCFA's), so no caption σ to read")
    captions = _captions_by_split(dm.root / dm.benchmark.folder / dm.benchmark.annotation)
    if not captions.get("train"):
        raise TBPSError(f"{dm.root} records no identities_fitted per caption: SynthPedes does")
    log_fitted = torch.tensor([n for _, n, _ in captions["train"]], dtype=torch.float32).log()
    caption_of_pair = torch.tensor([c for _, c, _ in dm._train_pairs().pairs])
    torch.manual_seed(seed)
    module.train()
    directions: dict[str, list[torch.Tensor]] = {}
    logvars, fitted, lengths = [], [], []
    for step, batch in enumerate(dm.train_dataloader()):
        if step == batches:
            break
        _, terms = module.compute_losses(batch, progress=0.5)
        logvar = batch["distributions"].text_logvar
        for name, term in terms.items():
            if not (name.startswith("loss_") and term.requires_grad):
                continue
            grad, = torch.autograd.grad(term, logvar, retain_graph=True, allow_unused=True)
            if grad is not None:
                directions.setdefault(name, []).append(-grad.detach().mean(1))
        logvars.append(logvar.detach())
        fitted.append(log_fitted[caption_of_pair[batch["index"]]])
        lengths.append(module.encoder.text_mask(batch["caption_ids"]).sum(1).float())
    module.zero_grad(set_to_none=True)
    return ({k: torch.cat(v) for k, v in directions.items()}, torch.cat(logvars),
            torch.cat(fitted), torch.cat(lengths))


def sigma_signal(module, dm, batches: int = 12, seed: int = 0) -> dict:
    """The per-term figures of the module docstring (``all_terms``: their sum, the step σ
    takes), and where σ stands: its ρ with log(identities fitted) on the same captions."""
    directions, logvar, y, length = caption_directions(module, dm, batches, seed)
    directions["all_terms"] = sum(directions.values())
    sigma = logvar.mul(0.5).exp().mean(1)
    out = {"captions": len(y),
           "sigma_spearman_with_log_identities_fitted":
               round(float(spearman_corrcoef(sigma, y)), 4),
           "sigma_partial_given_length": partial_spearman(sigma, y, length)[
               "partial_given_length"],
           "terms": {}}
    for name, d in directions.items():
        out["terms"][name] = {
            "spearman_with_log_identities_fitted": round(float(spearman_corrcoef(d, y)), 4),
            "partial_given_length": partial_spearman(d, y, length)["partial_given_length"],
            "mean": float(f"{float(d.mean()):.3e}"),
            "mean_magnitude": float(f"{float(d.abs().mean()):.3e}")}
    return out


def main(argv: list[str] | None = None) -> None:
    from ..model.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(prog="python -m tbps.analysis.sigma_signal",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--out", help="also write the JSON to this file")
    args = ap.parse_args(argv)
    if not Path(args.ckpt).is_file():
        raise TBPSError(f"{args.ckpt}: no such checkpoint (runs/<exp>/<time>/checkpoints/best.ckpt)")
    module = load_checkpoint(args.ckpt)
    dm = checkpoint_data(module)
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    text = json.dumps(sigma_signal(module, dm, args.batches), indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    try:
        main()
    except TBPSError as exc:
        raise SystemExit(f"error: {exc}") from None
