"""The LightningDataModule shared by every data set: records -> tokenised datasets -> loaders."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, default_collate

from ..errors import ConfigError
from .datasets import CaptionDataset, ImageDataset, PairDataset
from .records import SplitRecords, read_cuhk_pedes
from .synthpedes.generate import LAYOUT_DIR, SynthConfig, generate, is_complete
from .tokenizer import CaptionTokenizer
from .transforms import eval_transform, train_transform

# Data-set name -> (folder under the root, reader). Real benchmarks add entries here.
READERS = {
    "synthpedes": (LAYOUT_DIR, read_cuhk_pedes),
    "cuhk-pedes": ("CUHK-PEDES", read_cuhk_pedes),
}


def collate_trimmed(items: list[dict]) -> dict:
    """Stacks a batch and cuts caption ids after the batch's longest caption: padding after
    every end-of-text token changes no feature (causal text attention) but costs compute."""
    batch = default_collate(items)
    if "caption_ids" in batch:
        ids = batch["caption_ids"]
        batch["caption_ids"] = ids[:, : int((ids != 0).sum(1).max())]
    return batch


class TBPSDataModule(L.LightningDataModule):
    """Training pairs, and gallery images + query captions for validation and test.

    Captions are tokenised once, when the tokenizer is attached, never per epoch. Training
    person ids are mapped to contiguous classifier labels in sorted order (for CUHK-PEDES
    that is IRRA's ``id - 1``); evaluation keeps the raw ids, since only equality matters.
    """

    def __init__(self, root: str | None, dataset: str = "cuhk-pedes", image_size: tuple = (384, 128),
                 batch_size: int = 64, eval_batch_size: int = 512, num_workers: int = 4,
                 augment: dict | None = None, synth: dict | None = None,
                 val_split: str = "val", pin_memory: bool = True) -> None:
        super().__init__()
        if root is None:
            raise ConfigError(f"no data root for {dataset!r}: set DATA_ROOT to the folder that "
                              "holds the data set's folder, or pass data.root=<path>")
        if dataset not in READERS:
            raise ConfigError(f"unknown data set {dataset!r} in data.dataset; known: "
                              f"{sorted(READERS)}")
        self.root, self.dataset = Path(root), dataset
        self.image_size = tuple(image_size)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment = dict(augment or {})
        self.synth = SynthConfig(**synth) if synth is not None else None
        self.val_split = val_split
        self._records: dict[str, SplitRecords] | None = None
        self.tokenizer: CaptionTokenizer | None = None

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
            folder, reader = READERS[self.dataset]
            self._records = reader(self.root / folder)
        return self._records

    @property
    def train_labels(self) -> dict[int, int]:
        return {pid: k for k, pid in enumerate(sorted(set(self.records["train"].image_pids)))}

    @property
    def num_train_ids(self) -> int:
        return len(self.train_labels)

    def set_tokenizer(self, tokenizer: CaptionTokenizer) -> None:
        self.tokenizer = tokenizer
        self._caption_ids = {s: tokenizer.encode(r.captions) if r.captions else None
                             for s, r in self.records.items()}

    # --- loaders -------------------------------------------------------------------------
    def _loader(self, ds, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                          collate_fn=collate_trimmed,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        rec = self.records["train"]
        labels = self.train_labels
        pairs = [(img, k, labels[rec.image_pids[img]]) for k, img in enumerate(rec.caption_image)]
        ds = PairDataset(rec.image_paths, pairs, self._caption_ids["train"],
                         train_transform(self.image_size, **self.augment), rec.caption_noisy)
        return self._loader(ds, self.batch_size, shuffle=True)

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        rec = self.records[split]
        if not rec.image_paths:
            raise ConfigError(f"the {split!r} split of {self.root} is empty; choose another "
                              "split with data.val_split")
        gallery = ImageDataset(rec.image_paths, rec.image_pids, eval_transform(self.image_size))
        queries = CaptionDataset(self._caption_ids[split], rec.caption_pids)
        return [self._loader(gallery, self.eval_batch_size, False),
                self._loader(queries, self.eval_batch_size, False)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")
