"""Does a model's predicted uncertainty measure anything? ``tbps uncertainty CKPT``.

For a checkpoint whose model predicts uncertainty (``TBPSModule.uncertainty``: CRUE's UGM,
UCFA's distributions), three measurements, as JSON:

- ``noise`` (a run trained with swapped captions): one pass over the training pairs
  (evaluation transform, no caption augmentation, batches of the run's size in a fixed
  shuffled order), and the ROC AUC with which each per-pair score flags the data set's
  record of swapped pairs: the caption's σ, the image's + the caption's σ, 1 − P(match)
  when the model has a match probability, and beside them the loss-based detector RDE's
  division uses (the pair's triplet alignment loss over the retrieval embeddings in its
  batch, τ 0.015, margin 0.1). 0.5 is chance.
- ``ambiguity`` (clean test captions of SynthPedes, which records how many identities of
  the split each caption fits, ``identities_fitted``): Spearman's ρ of the caption's σ with
  log(identities fitted), and the partial rank correlation with the caption's length in
  tokens held fixed (a vague caption is often a short one: the partial says whether σ
  measures more than length). Beside it, the reference σ is read against
  (``stated_attributes_predictor``): the same two figures for a least-squares predictor of
  log(identities fitted) from which attributes each caption states (SynthPedes' record)
  and its word count, fitted on the training captions. A caption's σ sees only the caption,
  and test people are new families, so that is about what the text can tell; on the default
  SynthPedes it is ≈ 0.3 with the length held fixed (docs/results.md). And what the
  model's own caption embedding holds of vagueness (``caption_embedding_probe``): the same
  figures for a ridge regression (λ 1, standardised) from the retrieval embeddings of the
  training captions to their log(identities fitted), read on the test captions, an oracle
  taught the count σ never sees: where it is near 0 the encoder has not kept what a caption
  leaves unsaid, and σ, read from the same features, has little to follow. And, for a model
  with a match probability, what PCME++'s loss would raise σ for (``false_match_mass``):
  each caption's P(match) summed over other people's images, for vague and specific
  captions and against log(identities fitted). When the means do not bring a vague caption
  nearer the people it also fits, this is level, and σ has no signal to follow. And the
  same two figures for the squared distance of the caption's mean to its own person's
  images (``own_image_distance_vs_log_identities_fitted``, means l2-normalised): in PCME++'s
  closed form that distance and Σσ_t² add up to one per-caption offset, so where σ misses
  vagueness this says whether the means hold it instead. And the same for σ/‖μ‖
  (``sigma_over_mean_norm_vs_log_identities_fitted``): the spread a sample drawn around
  the raw feature has once l2-normalised (UGM's ``sample_around: raw``). And the same for
  the entropy of each caption's softmax over the test gallery by the means' cosine / 0.1
  (``match_entropy_vs_log_identities_fitted``): the one-to-many count as the means hold it,
  what ``match_entropy_weight`` asks σ to follow.
- ``calibration`` (a model with a match probability): the expected calibration error of
  P(match) over every (test caption, test image) pair against "same person" (15 bins), and
  the mean P(match) of true and false pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from ..data.datamodule import collate_trimmed
from ..components.gaussian import masked_mean
from ..components.match_entropy import match_entropy
from ..heads.rde import tal_per_pair
from ..data.transforms import eval_transform
from ..errors import TBPSError
from ..model.uncertainty import (NoUncertainty, gaussian, gaussian_and_embedding,
                                 match_probability)
from ..types import Gaussian

RDE_TAU, RDE_MARGIN = 0.015, 0.1


def _data(module):
    from .features import checkpoint_data

    return checkpoint_data(module)


def _auc(score: torch.Tensor, flags: torch.Tensor) -> float:
    return round(float(binary_auroc(score.float(), flags.long())), 4)


@torch.inference_mode()
def noise_detection(module, dm, batch_size: int = 64) -> dict:
    """Per-pair scores over the training pairs and the AUC of each against the noise flags."""
    pairs = dm._train_pairs()
    # the images as evaluation sees them: the flags, not the augmentation's draws, decide
    pairs.transform, pairs.resize = eval_transform(dm.image_size), None
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    loader = DataLoader(torch.utils.data.Subset(pairs, order), batch_size=batch_size,
                        collate_fn=collate_trimmed)
    got: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        # one encoder pass per side gives both the Gaussian and the ranking embedding
        image, img = gaussian_and_embedding(module, "image", batch["image"])
        text, txt = gaussian_and_embedding(module, "text", batch["caption_ids"])
        scores = {"text_sigma": text.sigma, "pair_sigma": image.sigma + text.sigma,
                  "loss_tal": tal_per_pair(img, txt, batch["pid"], RDE_TAU, RDE_MARGIN)}
        prob = match_probability(module, text, image)
        if prob is not None:
            scores["one_minus_match_probability"] = 1 - prob.diagonal()
        scores["noisy"] = batch["noisy"]
        for k, v in scores.items():
            got.setdefault(k, []).append(v.float().cpu())
    flat = {k: torch.cat(v) for k, v in got.items()}
    noisy = flat.pop("noisy").bool()
    if not bool(noisy.any()):
        return {"skipped": "the run trained on clean captions (data.noise_rate 0): nothing "
                           "to flag"}
    out = {"pairs": len(noisy), "noisy": int(noisy.sum())}
    out["auc"] = {k: _auc(v, noisy) for k, v in flat.items()}
    out["text_sigma_clean"] = round(float(flat["text_sigma"][~noisy].mean()), 5)
    out["text_sigma_noisy"] = round(float(flat["text_sigma"][noisy].mean()), 5)
    return out


def _captions_by_split(annotation: Path) -> dict[str, list[tuple[dict, int, int]]]:
    """Per split, per caption: (attributes it states, identities of the split it fits,
    words); only the splits whose every record has them (only SynthPedes records them)."""
    try:
        recs = json.loads(annotation.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, list[tuple[dict, int, int]]] = {}
    missing = set()
    for r in recs:
        split = r.get("split")
        if "identities_fitted" not in r or "attribute_mentions" not in r:
            missing.add(split)
            continue
        out.setdefault(split, []).extend(zip(r["attribute_mentions"], r["identities_fitted"],
                                             map(len, r["processed_tokens"])))
    return {k: v for k, v in out.items() if k not in missing}


def _caption_texts(annotation: Path, split: str) -> list[str]:
    """The captions of ``split`` as the annotation has them, in ``_captions_by_split``'s
    order."""
    return [c for r in json.loads(annotation.read_text()) if r.get("split") == split
            for c in r["captions"]]


def identities_fitted(annotation: Path, split: str) -> list[int]:
    """Per caption of ``split``, SynthPedes' count of the identities it fits ([] if the data
    set does not record it)."""
    return [n for _, n, _ in _captions_by_split(annotation).get(split, [])]


def text_only_prediction(train: list[tuple[dict, int, int]],
                         test: list[tuple[dict, int, int]]) -> torch.Tensor:
    """log(identities fitted) of each test caption as the text alone predicts it: least
    squares on the training captions over [1, one indicator per attribute key it states,
    its word count]. An oracle on what is stated (SynthPedes' record, not the model's
    reading), and no more than linear: the reference a caption's σ is read against."""
    keys = sorted({k for said, _, _ in train for k in said})

    def features(rows):
        return torch.tensor([[1.0, *(float(k in said) for k in keys), float(words)]
                             for said, _, words in rows], dtype=torch.float64)

    target = torch.tensor([n for _, n, _ in train], dtype=torch.float64).log()[:, None]
    weights = torch.linalg.lstsq(features(train), target, driver="gelsd").solution
    return (features(test) @ weights).squeeze(1).float()


def ridge_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                penalty: float = 1.0) -> torch.Tensor:
    """Ridge regression of ``train_y`` [N] on ``train_x`` [N, F] (features standardised by
    the training rows, an unpenalised intercept), read on ``test_x`` [M, F] -> [M]."""
    x, t = train_x.double(), test_x.double()
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    x, t = (x - mean) / scale, (t - mean) / scale
    y = train_y.double()
    w = torch.linalg.solve(x.t() @ x + penalty * torch.eye(x.shape[1], dtype=x.dtype),
                           x.t() @ (y - y.mean()))
    return (t @ w + y.mean()).float()


@torch.inference_mode()
def caption_embeddings(module, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The retrieval embedding of each caption [T, E] (float32, on the CPU)."""
    return torch.cat([module.embed_texts(ids[s:s + batch_size]).float().cpu()
                      for s in range(0, len(ids), batch_size)])


@torch.inference_mode()
def caption_word_means(module, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The mean of each caption's input word embeddings in the joint space [T, D] (float32,
    on the CPU): what the caption says word by word, before the text tower mixes it."""
    out = []
    for s in range(0, len(ids), batch_size):
        rows = ids[s:s + batch_size]
        out.append(masked_mean(module.encoder.encode_text_words(rows).float(),
                               module.encoder.text_mask(rows)).cpu())
    return torch.cat(out)


@torch.inference_mode()
def _caption_sigma(module, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Each caption's σ as ``tbps uncertainty`` reads it [T] (float32, on the CPU)."""
    return torch.cat([module.uncertainty(ids=ids[s:s + batch_size]).text_sigma.float().cpu()
                      for s in range(0, len(ids), batch_size)])


def partial_spearman(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> dict[str, float]:
    """Spearman's ρ of x with y, and the partial rank correlation with z held fixed."""
    xy, xz, yz = (float(spearman_corrcoef(a.float(), b.float())) for a, b in
                  ((x, y), (x, z), (y, z)))
    partial = (xy - xz * yz) / max(1e-12, ((1 - xz ** 2) * (1 - yz ** 2)) ** 0.5)
    return {"spearman": round(xy, 4), "partial_given_length": round(partial, 4),
            "spearman_with_length": round(xz, 4), "spearman_fitted_with_length": round(yz, 4)}


@torch.inference_mode()
def ambiguity(module, dm, matched: tuple[torch.Tensor, torch.Tensor] | None,
              gaussians: tuple[Gaussian, Gaussian, torch.Tensor],
              split: str = "test", batch_size: int = 256) -> dict:
    """σ against vagueness on ``split``; ``matched``: ``match_probabilities`` of the same
    split (None without a match probability), read for the false-match mass; ``gaussians``:
    ``split_gaussians`` of it, read for the means' distance to the caption's own images."""
    by_split = _captions_by_split(dm.root / dm.benchmark.folder / dm.benchmark.annotation)
    captions = by_split.get(split)
    if not captions:
        return {"skipped": f"{dm.root} records no identities_fitted per caption (SynthPedes "
                           "does, since generator version 4)"}
    fitted = [n for _, n, _ in captions]
    ids = dm._caption_ids[split]
    sigma = _caption_sigma(module, ids, batch_size)
    length = module.encoder.text_mask(ids).sum(1).float()
    count = torch.tensor(fitted, dtype=torch.float32)
    out = {"split": split, "captions": len(sigma),
           "identities_fitted_median": float(count.median()),
           "sigma_vs_log_identities_fitted": partial_spearman(sigma, count.log(), length)}
    train = by_split.get("train")
    if train:
        predicted = text_only_prediction(train, captions)
        out["stated_attributes_predictor"] = partial_spearman(predicted, count.log(), length)
        # what the model's own caption embedding holds of vagueness, linearly: a probe taught
        # the true count on the training captions (σ never sees it), read on the test ones;
        # the captions as the annotation has them (a noisy run's data module moved some)
        text = _caption_texts(dm.root / dm.benchmark.folder / dm.benchmark.annotation, "train")
        counts = torch.tensor([n for _, n, _ in train], dtype=torch.float32)
        train_ids = dm.tokenizer.encode(text)
        train_x = caption_embeddings(module, train_ids, batch_size)
        probe = ridge_probe(train_x, counts.log(), caption_embeddings(module, ids, batch_size))
        out["caption_embedding_probe"] = partial_spearman(probe, count.log(), length)
        # the same from the mean of the caption's input words (a bag of words in the tower's
        # own table): what carries to new identities before the layers mix the words
        words = ridge_probe(caption_word_means(module, train_ids, batch_size), counts.log(),
                            caption_word_means(module, ids, batch_size))
        out["caption_words_probe"] = partial_spearman(words, count.log(), length)
        # the same two read on the training captions themselves (the probe in-sample): how
        # much of σ's and the probe's reading holds from the training identities to new ones
        train_length = module.encoder.text_mask(train_ids).sum(1).float()
        out["training_captions"] = {
            "sigma_vs_log_identities_fitted": partial_spearman(
                _caption_sigma(module, train_ids, batch_size), counts.log(), train_length),
            "caption_embedding_probe_in_sample": partial_spearman(
                ridge_probe(train_x, counts.log(), train_x), counts.log(), train_length)}
    # PCME++'s closed form adds Σσ_t² and the means' distance into one per-caption offset;
    # where σ does not follow vagueness, this says whether the means took it
    text, image, same = gaussians
    # σ against the mean's norm: how far a sample drawn around the raw feature moves once
    # l2-normalised (UGM's `sample_around: raw`), where the norm can say what σ does not
    out["sigma_over_mean_norm_vs_log_identities_fitted"] = partial_spearman(
        text.sigma / text.mean.norm(dim=-1).clamp_min(1e-12), count.log(), length)
    # what `match_entropy_weight` asks σ to follow: the entropy of each caption's softmax over
    # the gallery by the means (τ 0.1), the one-to-many count as the means hold it
    out["match_entropy_vs_log_identities_fitted"] = partial_spearman(
        match_entropy(text.mean, image.mean, 0.1), count.log(), length)
    d = torch.cdist(F.normalize(text.mean, dim=-1), F.normalize(image.mean, dim=-1)) ** 2
    own = (d * same).sum(1) / same.sum(1).clamp_min(1)
    out["own_image_distance_vs_log_identities_fitted"] = partial_spearman(
        own, count.log(), length)
    vague = count > count.median()
    out["sigma_vague"] = round(float(sigma[vague].mean()), 5)
    out["sigma_specific"] = round(float(sigma[~vague].mean()), 5)
    if matched is not None:
        # What PCME++'s loss raises σ for: a caption's P(match) with other people's images.
        # If the means do not bring a vague caption nearer the people it also fits, this mass
        # is no larger for vague captions, and σ has nothing to learn vagueness from.
        prob, same = matched
        mass = (prob * ~same).sum(1)
        out["false_match_mass"] = {
            "vague": round(float(mass[vague].mean()), 4),
            "specific": round(float(mass[~vague].mean()), 4),
            "vs_log_identities_fitted": partial_spearman(mass, count.log(), length)}
    return out


@torch.inference_mode()
def split_gaussians(module, dm, split: str = "test", batch_size: int = 256
                    ) -> tuple[Gaussian, Gaussian, torch.Tensor]:
    """The Gaussians of ``split``'s captions and gallery images (float32, on the CPU), and
    "same person" [T, I]."""
    gallery_loader, _ = dm._eval_loaders(split)
    ids = dm._caption_ids[split]
    images = [gaussian(module, "image", b["image"]) for b in gallery_loader]
    texts = [gaussian(module, "text", ids[s:s + batch_size]) for s in range(0, len(ids), batch_size)]

    def joined(parts: list[Gaussian]) -> Gaussian:
        return Gaussian(torch.cat([g.mean.float().cpu() for g in parts]),
                        torch.cat([g.logvar.float().cpu() for g in parts]))

    rec = dm.records[split]
    same = torch.tensor(rec.caption_pids)[:, None] == torch.tensor(rec.image_pids)[None, :]
    return joined(texts), joined(images), same


@torch.inference_mode()
def match_probabilities(module, gaussians: tuple[Gaussian, Gaussian, torch.Tensor],
                        batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor] | None:
    """P(match) of every (caption, image) pair [T, I] of ``split_gaussians``' output and
    "same person" [T, I], or None for a model without a match probability."""
    text, image, same = gaussians
    probs = []
    for s in range(0, len(text.mean), batch_size):
        rows = Gaussian(text.mean[s:s + batch_size], text.logvar[s:s + batch_size])
        prob = match_probability(module, rows, image)
        if prob is None:
            return None
        probs.append(prob.float().cpu())
    return torch.cat(probs), same


def calibration(matched: tuple[torch.Tensor, torch.Tensor] | None, split: str = "test"
                ) -> dict:
    """The ECE of ``matched`` (``match_probabilities`` of ``split``) against "same person"."""
    if matched is None:
        return {"skipped": "the model has no match probability (DCL's `pcme` objective "
                           "gives one)"}
    prob, same = matched
    return {"split": split, "pairs": prob.numel(),
            "ece": round(float(binary_calibration_error(prob.flatten(), same.flatten().long(),
                                                         n_bins=15)), 4),
            "match_probability_true_pairs": round(float(prob[same].mean()), 4),
            "match_probability_false_pairs": round(float(prob[~same].mean()), 4)}


def measure(ckpt: str, batch_size: int = 64) -> dict:
    """The three measurements of a checkpoint (``NoUncertainty`` if it predicts none)."""
    from ..model.checkpoint import load_checkpoint

    if not Path(ckpt).is_file():
        raise TBPSError(f"{ckpt}: no such checkpoint (runs/<exp>/<time>/checkpoints/best.ckpt)")
    module = load_checkpoint(ckpt).eval()
    dm = _data(module)
    try:
        noise = noise_detection(module, dm, batch_size)
    except NoUncertainty as exc:
        raise NoUncertainty(f"{ckpt}: {exc}") from None
    gaussians = split_gaussians(module, dm)
    matched = match_probabilities(module, gaussians)  # the test pairs' P(match), read twice below
    return {"checkpoint": str(ckpt), "noise_rate": module.cfg["data"].get("noise_rate", 0.0),
            "noise": noise, "ambiguity": ambiguity(module, dm, matched, gaussians),
            "calibration": calibration(matched)}


def main(ckpt: str, out: str | None = None, batch_size: int = 64) -> None:
    text = json.dumps(measure(ckpt, batch_size), indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":  # the older spelling of `tbps uncertainty CKPT`
    import sys

    from ..cli import main as cli

    sys.exit(cli(["uncertainty", *sys.argv[1:]]))
