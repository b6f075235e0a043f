"""The LightningDataModule shared by every data set: records -> tokenised datasets -> loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from pydantic import Field
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from ..errors import ConfigError, DatasetError
from .annotations import ANNOTATIONS, annotate
from .benchmarks import BENCHMARKS
from ..settings_types import NonNegativeInt, PositiveInt
from .cleaning import POLICIES as CLEANING
from .cleaning import clean_captions
from .datasets import CaptionDataset, ImageDataset, PairDataset
from .noise import apply_noise_permutation, inject_noisy_correspondence, read_noise_permutation
from .records import SplitRecords, read_benchmark
from .samplers import IdentitySampler
from .synthpedes.generate import SynthConfig, generate, is_complete
from .tokenizer import CaptionTokenizer
from .transforms import (Augment, augment_transform, eval_transform, normalise_transform, resize,
                         train_transform)


def collate_trimmed(items: list[dict | None]) -> dict:
    """Stacks a batch and cuts caption ids after the batch's longest caption: padding after
    every end-of-text token changes no feature (causal text attention) but costs compute.
    Items that are ``None`` (skipped unreadable images) are dropped and counted."""
    kept = [item for item in items if item is not None]
    if not kept:
        raise DatasetError(f"all {len(items)} images of a batch were unreadable; run "
                           "`tbps check-data` on the data set and fix or remove them")
    batch = default_collate(kept)
    if len(kept) < len(items):
        batch["skipped_images"] = len(items) - len(kept)
    if "caption_ids" in batch:
        # the last non-zero id is each caption's end token (CLIP's "!" is also 0, so the
        # number of non-zero ids would undercount)
        ids = batch["caption_ids"]
        nonzero = ids != 0
        last = int((nonzero * torch.arange(1, ids.shape[1] + 1)).amax())
        for key in ("caption_ids", *ANNOTATIONS):  # annotations are aligned with the ids
            if key in batch:
                batch[key] = batch[key][:, :last]
    return batch


# How the validation split is chosen -> the prefix of its metric keys. ICFG-PEDES has no
# val split: the published numbers select on test, and the key says so.
VAL_SPLITS = {"val": "val", "test": "val_on_test", "holdout": "val_holdout"}


def val_metric_prefix(val_split: str) -> str:
    if val_split not in VAL_SPLITS:
        raise ConfigError(f"data.val_split={val_split!r}; choose 'val' (the official split), "
                          "'test' (select on test, as the published numbers do) or 'holdout' "
                          "(data.holdout_ids training identities held out)")
    return VAL_SPLITS[val_split]


class TBPSDataModule(L.LightningDataModule):
    """Training pairs, and gallery images + query captions for validation and test.

    Captions are cleaned (``caption_cleaning``) and tokenised once, when the tokenizer is
    attached, never per epoch. Training person ids are mapped to contiguous classifier
    labels in sorted order (for CUHK-PEDES that is IRRA's ``id - 1``); evaluation keeps the
    raw ids, since only equality matters. ``noise_rate`` swaps that share of training
    captions to other identities (RDE protocol) with ``noise_seed``; ``noise_file`` applies
    one of RDE's own permutation files instead. ``drop_noisy`` then trains on the captions
    the noise left in place only: the oracle division, the upper bound of what a method that
    tells swapped pairs apart can keep (SynthPedes and injected noise flag every caption).
    """

    def __init__(self, root: str | None, dataset: Literal[tuple(BENCHMARKS)] = "cuhk-pedes",
                 image_size: tuple[PositiveInt, PositiveInt] = (384, 128),
                 batch_size: PositiveInt = 64, eval_batch_size: PositiveInt = 512,
                 num_workers: NonNegativeInt = 4, augment: Augment | None = None,
                 synth: SynthConfig | None = None,
                 val_split: Literal["val", "test", "holdout"] = "val",
                 holdout_ids: NonNegativeInt = 0, holdout_seed: int = 0,
                 caption_cleaning: Literal[tuple(CLEANING)] = "none",
                 noise_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0, noise_seed: int = 0,
                 noise_file: str | None = None, drop_noisy: bool = False,
                 sampler: Literal["random", "identity"] = "random",
                 num_instances: PositiveInt = 4, skip_bad_images: bool = False,
                 pin_memory: bool = True, cache_images: bool = False, seed: int = 0) -> None:
        super().__init__()
        if root is None:
            raise ConfigError(f"no data root for {dataset!r}: set DATA_ROOT to the folder that "
                              "holds the data set's folder, or pass data.root=<path>")
        if dataset not in BENCHMARKS:
            raise ConfigError(f"unknown data set {dataset!r} in data.dataset; known: "
                              f"{sorted(BENCHMARKS)}")
        if sampler not in ("random", "identity"):
            raise ConfigError(f"data.sampler={sampler!r}; choose 'random' (IRRA's default) or "
                              "'identity' (P×K: batch_size/num_instances identities per batch)")
        if not 0.0 <= noise_rate < 1.0:
            raise ConfigError(f"data.noise_rate={noise_rate} must be in [0, 1)")
        self.val_prefix = val_metric_prefix(val_split)
        if val_split == "holdout" and holdout_ids <= 0:
            raise ConfigError("data.val_split=holdout needs data.holdout_ids > 0 (how many "
                              "training identities to hold out for validation)")
        self.root, self.benchmark = Path(root), BENCHMARKS[dataset]
        self.dataset = dataset
        self.image_size = tuple(image_size)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment = dict(augment or {})
        self.synth = SynthConfig(**synth) if isinstance(synth, dict) else synth
        self.val_split, self.holdout_ids, self.holdout_seed = val_split, holdout_ids, holdout_seed
        self.caption_cleaning = caption_cleaning
        clean_captions([], caption_cleaning)  # an unknown policy fails now, not after reading
        self.noise_rate, self.noise_seed = noise_rate, noise_seed
        if noise_file and noise_rate > 0:
            raise ConfigError(f"data.noise_file={noise_file} and data.noise_rate={noise_rate} "
                              "both ask for noise: the file is RDE's permutation (its rate is in "
                              "its name); set data.noise_rate=0 to use it, or drop the file")
        self.noise_file, self.drop_noisy = noise_file, drop_noisy
        self.sampler, self.num_instances = sampler, num_instances
        self.skip_bad_images, self.seed = skip_bad_images, seed
        self.cache_images = cache_images
        self._records: dict[str, SplitRecords] | None = None
        self.tokenizer: CaptionTokenizer | None = None
        self._annotations: dict[str, dict[str, torch.Tensor]] = {}

    # --- records -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generates SynthPedes under the root when it is missing or was made differently."""
        if self.synth is not None and not is_complete(self.root, self.synth):
            print(f"generating SynthPedes under {self.root} ...", flush=True)
            summary = generate(self.root, self.synth, workers=2)
            print(f"  {summary['images']} images in {summary['seconds']} s "
                  f"({summary['images_per_s']} images/s)", flush=True)

    @property
    def records(self) -> dict[str, SplitRecords]:
        if self._records is None:
            self._records = self._build_records()
        return self._records

    def _build_records(self) -> dict[str, SplitRecords]:
        splits = read_benchmark(self.root / self.benchmark.folder, self.benchmark)
        if self.val_split == "holdout":
            train = splits["train"]
            ids = sorted(set(train.image_pids))
            if self.holdout_ids >= len(ids):
                raise ConfigError(f"data.holdout_ids={self.holdout_ids} leaves no training "
                                  f"identity (the train split has {len(ids)})")
            rng = np.random.default_rng(self.holdout_seed)
            held = {ids[i] for i in rng.choice(len(ids), self.holdout_ids, replace=False)}
            splits["holdout"] = train.select_identities(held)
            splits["train"] = train.select_identities(set(ids) - held)
        for rec in splits.values():
            rec.captions = clean_captions(rec.captions, self.caption_cleaning)
        if self.noise_rate > 0:
            splits["train"] = inject_noisy_correspondence(splits["train"], self.noise_rate,
                                                          self.noise_seed)
        if self.noise_file:
            train = splits["train"]
            perm = read_noise_permutation(self.noise_file, len(train.captions))
            splits["train"] = apply_noise_permutation(train, perm)
        if self.drop_noisy:
            train = splits["train"]
            splits["train"] = train.without_noisy_captions()
            dropped = len(train.captions) - len(splits["train"].captions)
            print(f"data.drop_noisy: trained on {len(splits['train'].captions)} of "
                  f"{len(train.captions)} training captions ({dropped} flagged noisy dropped)",
                  flush=True)
        return splits

    @property
    def train_labels(self) -> dict[int, int]:
        return {pid: k for k, pid in enumerate(sorted(set(self.records["train"].image_pids)))}

    @property
    def num_train_ids(self) -> int:
        return len(self.train_labels)

    def set_tokenizer(self, tokenizer: CaptionTokenizer, annotations: tuple[str, ...] = ()
                      ) -> None:
        """Tokenises every split's captions, and makes their token ``annotations`` that the
        heads ask for (``tbps.data.annotations``), once."""
        self.tokenizer = tokenizer
        self._caption_ids = {s: tokenizer.encode(r.captions) if r.captions else None
                             for s, r in self.records.items()}
        self._annotations = {split: {} for split in self.records}
        for name in annotations:
            for split, rec in self.records.items():
                if not rec.captions:
                    continue
                made = annotate(name, tokenizer, rec.captions, rec.words_per_caption)
                self._annotations[split][name] = made.tensor
                if made.empty:
                    print(f"{name}: none found in {made.empty} of {len(rec.captions)} {split} "
                          "captions (the heads fall back for them and count it)", flush=True)

    # --- loaders -------------------------------------------------------------------------
    def _loader(self, ds, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, drop_last=shuffle, collate_fn=collate_trimmed,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def _train_pairs(self, augment: bool = True) -> PairDataset:
        """Every training (image, caption) pair, with the training transform (or, with
        ``augment=False``, the evaluation one)."""
        rec = self.records["train"]
        labels = self.train_labels
        pairs = [(img, k, labels[rec.image_pids[img]]) for k, img in enumerate(rec.caption_image)]
        if self.cache_images:  # decoded and resized once per worker, not once per epoch
            transform = (augment_transform(self.image_size, **self.augment) if augment
                         else normalise_transform())
            once = resize(self.image_size)
        elif not augment:
            transform, once = eval_transform(self.image_size), None
        else:
            transform, once = train_transform(self.image_size, **self.augment), None
        return PairDataset(rec.image_paths, pairs, self._caption_ids["train"], transform,
                           rec.caption_noisy, self.skip_bad_images,
                           self._annotations.get("train"), once)

    @property
    def num_train_pairs(self) -> int:
        return len(self.records["train"].captions)

    def train_dataloader(self) -> DataLoader:
        ds = self._train_pairs()
        world, rank = self._world()
        if self.sampler == "identity":
            sampler = IdentitySampler([p[2] for p in ds.pairs], self.batch_size,
                                      self.num_instances, num_replicas=world, rank=rank,
                                      seed=self.seed)
        else:
            # Shuffled by (seed, epoch), also in one process: a resumed run sees the same
            # order as an uninterrupted one, and every rank its own share under DDP.
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                         seed=self.seed, drop_last=True)
        return self._loader(ds, self.batch_size, shuffle=True, sampler=sampler)

    def preparation_dataloader(self, epoch: int, augment: bool = True) -> DataLoader:
        """Every training pair once (a few twice under DDP, to even the shards), shuffled
        per epoch, in training batches with the training transform (``augment=False``: the
        evaluation one): the pass heads prepare from before an epoch
        (``tbps.model.preparation``; RDE makes it over its training loader). Workers live
        for this pass only."""
        ds = self._train_pairs(augment)
        world, rank = self._world()
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.seed + 1, drop_last=False)
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=False,
                          collate_fn=collate_trimmed, num_workers=self.num_workers,
                          pin_memory=self.pin_memory)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _eval_sampler(self, ds):
        """Under DDP each rank scores a disjoint slice of the gallery and the queries, with
        no sample repeated: Lightning's default evaluation sampler pads the last slice with
        repeats, which would count duplicated gallery images and queries in the metrics."""
        world, rank = self._world()
        if world == 1:
            return None
        return UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        rec = self.records.get(split)
        if rec is None or not rec.image_paths:
            raise ConfigError(f"{self.dataset} under {self.root} has no {split!r} split "
                              "(ICFG-PEDES never has one); choose another validation policy: "
                              "data.val_split=test or data.val_split=holdout data.holdout_ids=N")
        gallery = ImageDataset(rec.image_paths, rec.image_pids, eval_transform(self.image_size))
        queries = CaptionDataset(self._caption_ids[split], rec.caption_pids,
                                 self._annotations.get(split))
        return [self._loader(gallery, self.eval_batch_size, False, self._eval_sampler(gallery)),
                self._loader(queries, self.eval_batch_size, False, self._eval_sampler(queries))]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")
