"""The division of the training pairs by the model's own P(match), remade before each epoch
(``pair_weights: {by: division}``, components/pair_division.py): the labels against a
mixture fitted by hand to the same −log P(match), the separation gate, the pass that makes
them, the weights a training step hands the heads, and a resumed run keeping them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from tbps.components.consensus import MixtureFit
from tbps.components.pair_division import divide

from test_rde import _prepare
import spawned


def _two_populations(n_clean=300, n_noisy=100, seed=0):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0.3, 0.9, n_clean), rng.uniform(1e-4, 0.02, n_noisy)])
    return -np.log(p), np.r_[np.zeros(n_clean, bool), np.ones(n_noisy, bool)]


def test_the_division_is_the_low_loss_component_of_a_mixture_fitted_by_hand():
    loss, noisy = _two_populations()
    labels, said = divide(loss, MixtureFit(), seed=3, min_separation=0.0)
    separation = said["separation"]
    # by hand: min-max normalise, fit two Gaussians, posterior of the lower mean above 0.5
    x = ((loss - loss.min()) / (loss.max() - loss.min()))[:, None]
    gmm = GaussianMixture(2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=3).fit(x)
    low = int(gmm.means_.ravel().argmin())
    expected = (gmm.predict_proba(x)[:, low] > 0.5).astype(int)
    assert (labels == expected).all()
    assert (labels[~noisy] == 1).all() and (labels[noisy] == 0).all()  # well apart: exact
    mu, var = gmm.means_.ravel(), gmm.covariances_.ravel()
    assert separation == pytest.approx(np.sqrt(2) * abs(mu[0] - mu[1]) / np.sqrt(var.sum()))


def test_below_the_separation_gate_every_pair_is_clean():
    rng = np.random.default_rng(1)
    one_population = rng.normal(1.0, 0.3, 400)  # one bell: nothing to divide
    labels, said = divide(one_population, MixtureFit(), 0, min_separation=2.0)
    assert said["separation"] < 2.0 and (labels == 1).all() and said["divided"] == 0
    ungated, _ = divide(one_population, MixtureFit(), 0, min_separation=0.0, min_clean_share=0.0)
    assert (ungated == 0).any()  # without the gate the mixture splits off a tail
    loss, _ = _two_populations()
    gated, said = divide(loss, MixtureFit(), 0, min_separation=2.0)
    assert said["separation"] >= 2.0 and (gated == 0).sum() == 100 and said["divided"] == 1


def test_a_division_that_keeps_fewer_than_the_floor_divides_nothing():
    """Early in training the low-loss component is the few pairs already learned: a
    division keeping fewer than ``min_clean_share`` of the pairs calls every pair clean."""
    loss, noisy = _two_populations(n_clean=100, n_noisy=300)  # the low component is 25%
    labels, _ = divide(loss, MixtureFit(), 0, min_separation=0.0, min_clean_share=0.0)
    assert (labels == ~noisy).all()
    floored, said = divide(loss, MixtureFit(), 0, min_separation=0.0, min_clean_share=0.5)
    assert (floored == 1).all() and said["mixture_clean_share"] == pytest.approx(0.25)
    kept, _ = divide(loss, MixtureFit(), 0, min_separation=0.0, min_clean_share=0.2)
    assert (kept == labels).all()


@pytest.mark.parametrize("experiment", ["crue_synthetic", "ucfa_synthetic"])
def test_the_pass_divides_by_the_heads_match_and_training_weighs_by_it(tiny_synth, tmp_path,
                                                                       experiment):
    """Before epoch 1 (not 0) the pass gives every pair −log P(match) from the module's
    `pair_confidence`, the labels are `divide` of exactly those scores, the report measures
    them against the noise flags, and a training step's `pair_weight` is the pair's label."""
    from conftest import tiny_module

    extra = ["data.noise_rate=0.3", "text_augment=null", "preparation_augment=false",
             "pair_weights={by:division,from_epoch:1,min_clean_share:0}"]
    if experiment.startswith("ucfa"):
        extra += ["heads.uamlr.num_heads=2", "heads.uamlr.depth=1"]
    module, dm = tiny_module(tiny_synth, tmp_path, experiment, *extra)
    division = module.pair_division
    assert not division.prepares_for(0) and division.prepares_for(1)
    assert _prepare(module, dm, 0) == {}  # nothing prepares before from_epoch
    seen = {}
    original = division.prepare
    division.prepare = lambda scores, *rest: seen.update(scores) or original(scores, *rest)
    report = _prepare(module, dm, 1)
    assert int(division.divided_epoch) == 1 and not division.prepares_for(1)
    # the scores are −log P(match) of each pair, recomputed here pair by pair
    pairs = dm.preparation_dataloader(1, False).dataset
    with torch.no_grad():
        for k in (0, 7, len(pairs) - 1):
            item = pairs[k]
            batch = {"image": item["image"][None], "caption_ids": item["caption_ids"][None],
                     "pid": torch.tensor([item["pid"]]), "index": torch.tensor([k])}
            encoded = module.encode(batch["image"], batch["caption_ids"])
            if module.distributions is not None:
                batch["distributions"] = module.distributions(encoded)
            p = float(module.pair_confidence(encoded, batch)[0])
            assert float(seen["neg_log_match"][k]) == pytest.approx(-np.log(p), rel=1e-4, abs=1e-5)
    labels, _ = divide(seen["neg_log_match"].double().numpy(), MixtureFit(), 0 * 1000 + 1, 0.0, 0.0)
    assert (division.clean.numpy() == labels).all()
    truly = ~np.array(dm.records["train"].caption_noisy)
    clean = labels.astype(bool)
    assert report["pair_division_clean_precision"] == pytest.approx((clean & truly).sum() / clean.sum())
    assert report["pair_division_clean_recall"] == pytest.approx((clean & truly).sum() / truly.sum())
    assert report["pair_division_clean_share"] == pytest.approx(clean.mean())
    # a training step hands every head its pairs' labels as weights
    division.clean.copy_(torch.from_numpy(np.arange(len(labels)) % 2 == 0).float())
    module.train()
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    batch = next(iter(dm.train_dataloader()))
    _, terms = module.compute_losses(batch, progress=1.5)
    assert torch.equal(batch["pair_weight"], (batch["index"] % 2 == 0).float())
    assert float(terms["pair_weight_mean"]) == pytest.approx(float(batch["pair_weight"].mean()))


def test_the_division_is_saved_and_restored_with_the_module(tiny_synth, tmp_path):
    from conftest import tiny_module

    args = ["pair_weights={by:division,from_epoch:0,min_separation:1.5}"]
    module, _ = tiny_module(tiny_synth, tmp_path, "crue_synthetic", *args)
    module.pair_division.clean[::3] = 0
    module.pair_division.divided_epoch.fill_(4)
    again, _ = tiny_module(tiny_synth, tmp_path, "crue_synthetic", *args)
    again.load_state_dict(module.state_dict())
    assert torch.equal(again.pair_division.clean, module.pair_division.clean)
    assert not again.pair_division.prepares_for(4) and again.pair_division.prepares_for(5)
    assert again.pair_division.min_separation == 1.5


def test_a_division_without_a_probabilistic_match_fails_at_the_first_step(tiny_synth, tmp_path):
    from conftest import tiny_module

    from tbps.errors import ConfigError

    module, dm = tiny_module(tiny_synth, tmp_path, "clip_synthetic",
                             "pair_weights={by:division,from_epoch:3}")
    module.train()
    batch = next(iter(dm.train_dataloader()))
    with pytest.raises(ConfigError, match="no head of this experiment has a probabilistic match"):
        module.compute_losses(batch)


DIVIDE_ALWAYS = ("pair_weights={by:division,from_epoch:0,min_clean_share:0}", "text_augment=null",
                 "data.noise_rate=0.3", "preparation_augment=false")


def _rank_divide(rank, world, port, root, run_dir, out):
    import torch.distributed as dist
    from pathlib import Path

    from conftest import tiny_module

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    module, dm = tiny_module(Path(root), Path(run_dir), "crue_synthetic", "data.batch_size=5",
                             *DIVIDE_ALWAYS)
    report = _prepare(module, dm, 0, world, rank)
    torch.save({"clean": module.pair_division.clean, "report": report}, f"{out}/rank{rank}.pt")
    spawned.leave()


def test_two_processes_hold_the_division_of_one_process(tiny_synth, tmp_path):
    """Each process scores its shard; the gathered P(match) make the one-process division, and
    every process holds it."""
    import socket

    import torch.multiprocessing as mp

    from conftest import tiny_module

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_divide, args=(2, port, str(tiny_synth), str(tmp_path / "r"), str(tmp_path)),
             nprocs=2, join=True)
    module, dm = tiny_module(tiny_synth, tmp_path / "one", "crue_synthetic", "data.batch_size=10",
                             *DIVIDE_ALWAYS)
    single = _prepare(module, dm, 0)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["clean"], ranks[1]["clean"])
    assert torch.equal(ranks[0]["clean"], module.pair_division.clean)
    assert 0 < float(module.pair_division.clean.mean()) < 1  # it divided
    for key in ("pair_division_clean_share", "pair_division_clean_precision"):
        assert ranks[1]["report"][key] == pytest.approx(single[key])


def test_tbps_train_divides_before_each_epoch_and_reports_it(tiny_synth, tmp_path):
    """`tbps train experiment=crue_synthetic pair_weights={by:division,...}` end to end at 30%
    noise: a division before epoch 1 (not 0), its report in metrics.json, saved with the
    last checkpoint."""
    import json

    from conftest import tiny_overrides

    from tbps.cli import main

    run = tmp_path / "run"
    args = [a for a in tiny_overrides(tiny_synth, run) if "mlm" not in a]
    assert main(["train", "experiment=crue_synthetic", *args, "trainer.max_epochs=2",
                 "data.noise_rate=0.3",
                 "pair_weights={by:division,from_epoch:1,min_clean_share:0}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("train/pair_division_clean_precision", "train/pair_division_clean_recall",
                "train/pair_division_separation", "train/pair_division_divided"):
        assert key in metrics, key
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(state["pair_division.divided_epoch"]) == 1
    clean = state["pair_division.clean"]
    assert float(clean.mean()) == pytest.approx(metrics["train/pair_division_clean_share"], abs=1e-4)


def test_keys_left_out_take_the_settings_defaults(tiny_synth, tmp_path):
    from conftest import tiny_module

    module, _ = tiny_module(tiny_synth, tmp_path, "crue_synthetic", "pair_weights={by:division}")
    division = module.pair_division
    assert (division.from_epoch, division.min_separation, division.min_clean_share) == (1.0, 0.0, 0.5)
    batch_mode, _ = tiny_module(tiny_synth, tmp_path / "b", "crue_synthetic",
                                "pair_weights={ratio:0.25}")
    assert batch_mode.pair_division is None
    assert batch_mode.pair_weights == {"from_epoch": 1.0, "ratio": 0.25, "ramp_epochs": 0.0}
