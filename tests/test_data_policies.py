"""Caption cleaning, noisy correspondence, the P×K identity sampler under DDP, and the
stop-or-skip rule for unreadable training images."""

import numpy as np
import pytest
import torch

from tbps.data.cleaning import clean_captions
from tbps.data.datamodule import collate_trimmed
from tbps.data.datasets import PairDataset
from tbps.data.noise import inject_noisy_correspondence
from tbps.data.records import SplitRecords
from tbps.data.samplers import IdentitySampler
from tbps.errors import ConfigError, DatasetError

RAW = 'A Woman (young) wears a "red" T-shirt; black/white shoes... She\'s carrying a bag!'


def test_cleaning_policies():
    assert clean_captions([RAW], "none") == [RAW]
    assert clean_captions([RAW], "tbps-clip") == [
        "a woman young wears a red t-shirt black/white shoes she's carrying a bag"]
    assert clean_captions([RAW], "rasa") == [
        "a woman young wears a red t shirt black white shoes shes carrying a bag"]
    assert clean_captions([" ".join(["w"] * 90)], "tbps-clip")[0].count("w") == 77
    with pytest.raises(ConfigError, match="caption_cleaning"):
        clean_captions([RAW], "bert")


def _records(ids=40, images=2, caps=2):
    rec = SplitRecords()
    for pid in range(ids):
        for j in range(images):
            rec.image_paths.append(f"{pid}_{j}.jpg")
            rec.image_pids.append(pid)
            for k in range(caps):
                rec.captions.append(f"caption {pid} {j} {k}")
                rec.caption_image.append(len(rec.image_paths) - 1)
                rec.caption_noisy.append(False)
    return rec


def test_noisy_correspondence_rde_protocol():
    rec = _records()
    noisy = inject_noisy_correspondence(rec, 0.3, seed=5)
    n = len(rec.captions)
    moved = [a != b for a, b in zip(rec.captions, noisy.captions)]
    assert sum(noisy.caption_noisy) == sum(moved) == round(0.3 * n)
    # a flagged caption now describes another identity; the rest are untouched
    for cap, img, flag, orig in zip(noisy.captions, noisy.caption_image, noisy.caption_noisy,
                                    rec.captions):
        owner = int(cap.split()[1])
        assert (owner != noisy.image_pids[img]) == flag
        assert flag or cap == orig
    assert sorted(noisy.captions) == sorted(rec.captions)  # swapped, not invented
    assert noisy.image_pids == rec.image_pids and noisy.caption_image == rec.caption_image
    assert inject_noisy_correspondence(rec, 0.3, seed=5).captions == noisy.captions
    assert inject_noisy_correspondence(rec, 0.3, seed=6).captions != noisy.captions
    assert inject_noisy_correspondence(rec, 0.0, seed=5).captions == rec.captions


def test_drop_noisy_keeps_exactly_the_captions_of_their_own_image(tiny_synth, tmp_path):
    """The oracle division: every caption the swap moved goes, every other stays with its
    own image; images stay (their other captions may remain)."""
    from conftest import tiny_module

    _, dm = tiny_module(tiny_synth, tmp_path / "n", "synthetic", "data.noise_rate=0.3")
    _, oracle = tiny_module(tiny_synth, tmp_path / "o", "synthetic", "data.noise_rate=0.3",
                            "data.drop_noisy=true")
    noisy, kept = dm.records["train"], oracle.records["train"]
    expected = [(c, i) for c, i, f in zip(noisy.captions, noisy.caption_image,
                                          noisy.caption_noisy) if not f]
    assert 0 < sum(noisy.caption_noisy) and len(expected) < len(noisy.captions)
    assert list(zip(kept.captions, kept.caption_image)) == expected
    assert not any(kept.caption_noisy) and kept.image_paths == noisy.image_paths
    assert len(kept.caption_words) == len(kept.captions)
    _, clean = tiny_module(tiny_synth, tmp_path / "c", "synthetic")
    _, clean_oracle = tiny_module(tiny_synth, tmp_path / "co", "synthetic", "data.drop_noisy=true")
    assert clean_oracle.records["train"].captions == clean.records["train"].captions


def test_identity_sampler_pk_and_ddp():
    labels = np.repeat(np.arange(30), [3 + i % 5 for i in range(30)]).tolist()
    p, k = 4, 2
    ranks = [IdentitySampler(labels, p * k, k, num_replicas=2, rank=r, seed=1) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) and len(ranks[0]) % (p * k) == 0
    epoch0 = [list(s) for s in ranks]
    assert all(len(e) == len(ranks[0]) for e in epoch0)
    for step in range(len(ranks[0]) // (p * k)):
        ids = []
        for r in range(2):
            batch = epoch0[r][step * p * k:(step + 1) * p * k]
            by_id = [labels[i] for i in batch]
            assert sorted(set(by_id)) == sorted(set(by_id[::k]))  # groups of K
            assert all(by_id.count(x) == k for x in set(by_id)) and len(set(by_id)) == p
            ids.append(set(by_id))
        assert not ids[0] & ids[1]  # distinct identities on the two ranks in each step
    for s in ranks:
        s.set_epoch(1)
    epoch1 = [list(s) for s in ranks]
    assert epoch1[0] != epoch0[0] and len(epoch1[0]) == len(epoch0[0])  # reshuffled
    assert [list(s) for s in ranks] == epoch1  # same epoch, same order (all ranks agree)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        IdentitySampler(labels, 10, 4)


class _Identity:
    def __call__(self, image):
        return {"image": torch.from_numpy(image.copy())}


def test_unreadable_training_image_stops_or_is_skipped(tmp_path):
    from PIL import Image

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (4, 8)).save(good)
    bad.write_bytes(b"\x89PNG broken")
    ids = torch.ones(2, 5, dtype=torch.long)
    args = ([good, bad], [(0, 0, 0), (1, 1, 1)], ids, _Identity(), [False, False])
    with pytest.raises(DatasetError, match=str(bad)):
        PairDataset(*args)[1]
    ds = PairDataset(*args, skip_bad_images=True)
    batch = collate_trimmed([ds[0], ds[1]])
    assert batch["image"].shape[0] == 1 and batch["skipped_images"] == 1
    with pytest.raises(DatasetError, match="all 1 images of a batch"):
        collate_trimmed([ds[1]])


def test_cached_images_give_the_same_augmented_tensors_and_are_read_once(tmp_path):
    from PIL import Image

    from tbps.data.transforms import augment_transform, resize, train_transform

    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (40, 16, 3), dtype=np.uint8)).save(paths[-1])
    ids = torch.ones(4, 5, dtype=torch.long)
    pairs = [(0, 0, 0), (1, 1, 1), (0, 2, 0), (1, 3, 1)]
    knobs = dict(flip=0.5, pad=2, erase=0.5)
    plain = PairDataset(paths, pairs, ids, train_transform((20, 8), **knobs), [False] * 4)
    cached = PairDataset(paths, pairs, ids, augment_transform((20, 8), **knobs), [False] * 4,
                         resize=resize((20, 8)))
    for epoch in range(3):
        for k in range(4):
            np.random.seed(100 * epoch + k)
            a = plain[k]["image"]
            np.random.seed(100 * epoch + k)
            b = cached[k]["image"]
            assert torch.equal(a, b)
    assert sorted(cached.cache) == [0, 1] and cached.cache[0].shape == (20, 8, 3)
    # the preparation pass without augmentation reads the cache too, with eval's pixels
    from tbps.data.transforms import eval_transform, normalise_transform

    evaluated = PairDataset(paths, pairs, ids, eval_transform((20, 8)), [False] * 4)
    cached_eval = PairDataset(paths, pairs, ids, normalise_transform(), [False] * 4,
                              resize=resize((20, 8)))
    for k in range(4):
        assert torch.equal(evaluated[k]["image"], cached_eval[k]["image"])
    for p in paths:
        p.unlink()  # read once: later epochs never open the files again
    np.random.seed(7)
    assert cached[2]["image"].shape == (3, 20, 8)
    assert cached_eval[3]["image"].shape == (3, 20, 8)


def test_the_unaugmented_preparation_pass_reads_the_image_cache(tiny_synth, tmp_path):
    """`preparation_augment: false` scores the pairs with the evaluation pixels, decoded once
    per image when the data module caches images."""
    from conftest import tiny_module

    _, plain = tiny_module(tiny_synth, tmp_path / "p", "synthetic", "data.cache_images=false")
    _, cached = tiny_module(tiny_synth, tmp_path / "c", "synthetic", "data.cache_images=true")
    a, b = plain._train_pairs(augment=False), cached._train_pairs(augment=False)
    assert a.resize is None and b.resize is not None
    for k in (0, 1, len(a) - 1):
        assert torch.equal(a[k]["image"], b[k]["image"])
    assert len(b.cache) == len({b.pairs[k][0] for k in (0, 1, len(a) - 1)})
