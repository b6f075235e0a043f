"""RDE (CVPR 2024): TAL, the token selection embedding, the consensus division, the
preparation pass before each epoch (one and two processes, resume), the ranking by the mean
of BGE and TSE cosines, RDE's noise files and TSE's own learning rate. Each formula against
a slow reference written from the paper's and the code's description."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tbps.components.consensus import (MixtureFit, clean_probability, consensus,
                                       consensus_division, mixture, split_prob)
from tbps.components.token_selection import TokenSelectionEmbedding
from tbps.errors import ConfigError
from tbps.heads.base import HeadContext
from tbps.heads.rde import RDEHead, tal_per_pair
import spawned

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


# --- TAL ------------------------------------------------------------------------------------
def tal_reference(image, text, pid, tau, margin):
    """Anchor by anchor: caption k against all images, image k against all captions."""
    s = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).t()
    s_fixed = s.detach()
    out = []
    for k in range(len(pid)):
        total = 0.0
        for row, fixed in ((s[k], s_fixed[k]), (s[:, k], s_fixed[:, k])):
            pos = [j for j in range(len(pid)) if pid[j] == pid[k]]
            neg = [j for j in range(len(pid)) if pid[j] != pid[k]]
            weights = torch.stack([torch.exp(fixed[j] / tau) for j in pos])
            weights = weights / weights.sum()
            pos_term = sum(w * row[j] for w, j in zip(weights, pos))
            if not neg:
                continue  # log of an empty sum: the hinge is 0
            upper = tau * torch.log(sum(torch.exp(row[j] / tau) for j in neg))
            total = total + torch.clamp(margin - pos_term + upper, min=0)
        out.append(total if torch.is_tensor(total) else torch.tensor(0.0))
    return torch.stack(out)


def test_tal_per_pair_and_its_gradient_equal_the_reference():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(9, 8, generator=g), torch.randn(9, 8, generator=g)
    pid = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    for tau, margin in ((0.015, 0.1), (0.1, 0.3)):
        a, b = image.clone().requires_grad_(), text.clone().requires_grad_()
        got = tal_per_pair(a, b, pid, tau, margin)
        got.sum().backward()
        c, d = image.clone().requires_grad_(), text.clone().requires_grad_()
        want = tal_reference(c, d, pid, tau, margin)
        want.sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.grad, c.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.grad, d.grad, rtol=1e-4, atol=1e-6)
    assert (got > 0).any()


def test_tal_of_a_batch_of_one_identity_is_zero_with_finite_gradients():
    image = torch.randn(4, 8, requires_grad=True)
    loss = tal_per_pair(image, torch.randn(4, 8), torch.zeros(4, dtype=torch.long), 0.015, 0.1)
    loss.sum().backward()
    assert torch.equal(loss, torch.zeros(4)) and torch.isfinite(image.grad).all()


# --- the token selection embedding ------------------------------------------------------------
def tse_reference(tse, tokens, attention, lengths_of, k, exclude):
    """Row by row: drop the excluded positions, take the k best by attention, normalise,
    MLP + skip over every selected row of the batch (BatchNorm sees them all), max over the
    first ``lengths_of(i)`` of each row."""
    scores = attention.clone()
    for i in range(len(tokens)):
        for j in exclude(i):
            scores[i, j] = -1.0
    # torch.topk over the batch, as the code: which of the tied padding positions (weight 0)
    # fill a short caption's k is topk's choice, and the BatchNorm statistics see them
    top = scores.topk(k, dim=-1).indices
    chosen = []
    for i in range(len(tokens)):
        order = top[i].tolist()
        assert all(scores[i, a] >= scores[i, b] for a, b in zip(order, order[1:]))
        rows = tokens[i, order]
        chosen.append(rows / (rows.norm(dim=-1, keepdim=True) + 1e-8))
    flat = torch.cat(chosen)
    mapped = tse.out(F.relu(tse.norm(tse.hidden(flat)))) + tse.skip(flat)
    mapped = mapped.view(len(tokens), k, -1)
    return torch.stack([mapped[i, :lengths_of(i)].max(0).values for i in range(len(tokens))])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_image_tse_equals_the_reference(mode):
    torch.manual_seed(0)
    tse = TokenSelectionEmbedding(16, 24, ratio=0.3).train(mode == "train")
    tse.norm.running_mean.normal_(), tse.norm.running_var.uniform_(0.5, 2)
    tokens, attention = torch.randn(5, 21, 16), torch.rand(5, 21).softmax(-1)
    k = int(20 * 0.3)
    want = tse_reference(tse, tokens, attention, lambda i: k, k, lambda i: [0])
    torch.testing.assert_close(tse.forward_image(tokens, attention), want)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_text_tse_equals_the_reference_on_full_length_captions(mode):
    torch.manual_seed(1)
    context, eos_id = 20, 9
    tse = TokenSelectionEmbedding(16, 24, ratio=0.3).train(mode == "train")
    ids = torch.zeros(4, context, dtype=torch.long)
    lengths = [3, 12, 1, 17]  # content tokens between the start and the end token
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = 8, torch.randint(10, 40, (n,)), eos_id
    tokens = torch.randn(4, context, 16)
    attention = torch.rand(4, context)
    attention = attention * (torch.arange(context)[None] <= torch.tensor(lengths)[:, None] + 1)
    k = int((context - 2) * 0.3)
    want = tse_reference(tse, tokens, attention, lambda i: min(lengths[i], k), k,
                         lambda i: [0, lengths[i] + 1])
    got = tse.forward_text(tokens, attention, ids, eos_id, context)
    torch.testing.assert_close(got, want)


def test_attention_rows_equal_the_towers_own_attention_weights():
    """The [CLS] row from timm's unfused attention and the [EOT] row from transformers'
    eager attention, averaged over heads, equal ours."""
    from tbps.model.encoder import build_dual_encoder

    torch.manual_seed(0)
    enc = build_dual_encoder({"model": "vit_tiny_patch16_224", "img_size": (32, 16),
                              "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4},
                             {"hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 4},
                             16, 60, 12, eos_id=3, pad_id=0, bos_id=2).eval()
    images = torch.randn(2, 3, 32, 16)
    captured = {}
    last = enc.vision.blocks[-1].attn
    last.fused_attn = False
    hook = last.attn_drop.register_forward_hook(lambda m, i, o: captured.update(a=o))
    tokens, rows = enc.encode_image_tokens_attention(images)
    enc.encode_image_tokens(images)
    hook.remove()
    torch.testing.assert_close(rows, captured["a"].mean(1)[:, 0])
    torch.testing.assert_close(tokens, enc.encode_image_tokens(images))
    ids = torch.tensor([[2, 7, 8, 9, 3, 0, 0], [2, 11, 3, 0, 0, 0, 0]])
    enc.text.config._attn_implementation = "eager"
    want = enc.text(input_ids=ids, output_attentions=True).attentions[-1].mean(1)
    text_tokens, text_rows = enc.encode_text_tokens_attention(ids)
    torch.testing.assert_close(text_rows, want[torch.arange(2), torch.tensor([4, 2])])
    torch.testing.assert_close(text_tokens, enc.encode_text_tokens(ids))


# --- the consensus division -------------------------------------------------------------------
def division_as_the_code_makes_it(loss_a, loss_b, fit, seed, draws, cut=0.5):
    """RDE's get_loss + the epoch loop's consensus, written out with scikit-learn (the
    mixture seeded as ours is: the code leaves it unseeded); ``cut`` is the code's 0.5."""
    from sklearn.mixture import GaussianMixture

    preds = []
    for losses, s in ((loss_a, seed), (loss_b, seed + 1)):
        x = ((losses - losses.min()) / (losses.max() - losses.min())).reshape(-1, 1)
        gmm = GaussianMixture(n_components=2, max_iter=fit.max_iter, tol=fit.tol,
                              reg_covar=fit.reg_covar, random_state=s).fit(x)
        prob = gmm.predict_proba(x)[:, gmm.means_.argmin()]
        threshold = cut if prob.min() <= cut else np.sort(prob)[len(prob) // 100]
        preds.append((prob > threshold).astype(int))
    division = preds[0] + preds[1]
    where = np.flatnonzero(division == 1)
    for j, d in zip(where, draws):
        division[j] += d
    return (division > 1).astype(int)


def test_consensus_division_equals_the_codes_division_given_the_same_draws():
    rng = np.random.default_rng(0)
    noisy = rng.random(400) < 0.3
    loss_a = np.where(noisy, rng.normal(3.0, 0.6, 400), rng.normal(1.0, 0.5, 400))
    loss_b = np.where(noisy, rng.normal(2.5, 0.8, 400), rng.normal(1.0, 0.7, 400))
    fit = MixtureFit()
    labels, said = consensus_division(torch.tensor(loss_a), torch.tensor(loss_b), fit, 7)
    count = int(round(said["disagreements"] * 400))
    draws = torch.randint(0, 2, (count,), generator=torch.Generator().manual_seed(7)).numpy()
    want = division_as_the_code_makes_it(loss_a, loss_b, fit, 7, draws)
    assert np.array_equal(labels.numpy(), want)
    precision = (labels.numpy().astype(bool) & ~noisy).sum() / labels.sum()
    assert precision > 0.95 and 0 < count < 400  # separable losses: a clean division


def test_a_stricter_posterior_threshold_calls_fewer_pairs_clean_and_fewer_of_them_noisy():
    """``clean_threshold`` t: a view calls a pair clean when its low-mean posterior exceeds
    t (the reference above with t for the code's 0.5); on overlapping losses a higher t
    keeps fewer pairs at a higher precision; the head divides with its own t."""
    rng = np.random.default_rng(3)
    n = 600
    noisy = rng.random(n) < 0.3
    loss_a = np.where(noisy, rng.normal(2.5, 0.6, n), rng.normal(1.0, 0.5, n))
    loss_b = np.where(noisy, rng.normal(2.5, 0.7, n), rng.normal(1.0, 0.6, n))
    fit, kept = MixtureFit(), {}
    for t in (0.5, 0.8, 0.9):
        labels, said = consensus_division(torch.tensor(loss_a), torch.tensor(loss_b), fit, 5, t)
        count = round(said["disagreements"] * n)
        draws = torch.randint(0, 2, (count,), generator=torch.Generator().manual_seed(5)).numpy()
        assert np.array_equal(labels.numpy(),
                              division_as_the_code_makes_it(loss_a, loss_b, fit, 5, draws, t))
        got = labels.numpy().astype(bool)
        kept[t] = (got.mean(), (got & ~noisy).sum() / got.sum())
    assert kept[0.5][0] > kept[0.8][0] > kept[0.9][0] > 0.4, kept
    assert kept[0.5][1] < kept[0.8][1] < kept[0.9][1]
    ctx = HeadContext(embed_dim=8, num_classes=3, vocab_size=20, mask_id=4, pad_id=0,
                      special_ids=(0, 1, 2, 3, 4), eos_id=3, num_train_pairs=n)
    head = RDEHead(ctx, tse_dim=8, clean_threshold=0.9)
    head.prepare({"bge": torch.tensor(loss_a), "tse": torch.tensor(loss_b)},
                 torch.from_numpy(noisy), 2, 1)
    want, said = consensus_division(torch.tensor(loss_a), torch.tensor(loss_b), fit, 1002, 0.9)
    assert torch.equal(head.clean, want.to(head.clean))
    assert min(said["separation_a"], said["separation_b"]) > 2  # both views strict


def test_the_stricter_threshold_applies_only_where_the_mixture_separates():
    """Ashman's D = √2·|μ₁ − μ₂| / √(σ₁² + σ₂²) of the fitted mixture: about 5 for two unit
    Gaussians 5 apart, below 2 for one Gaussian; below ``min_separation`` a view divides at
    the code's 0.5 whatever the threshold (clean captions: nothing to find)."""
    rng = np.random.default_rng(4)
    two = np.r_[rng.normal(0, 1, 700), rng.normal(5, 1, 300)]
    one = rng.normal(0, 1, 1000)
    prob, d_two = mixture(two)
    assert d_two == pytest.approx(5.0, abs=0.4)
    assert np.array_equal(prob, clean_probability(two))
    _, d_one = mixture(one)
    assert d_one < 2
    fit = MixtureFit()
    for losses, strict in ((two, True), (one, False)):
        a = b = torch.tensor(losses)
        gated, said = consensus_division(a, b, fit, 3, 0.95, 2.0)
        plain, _ = consensus_division(a, b, fit, 3, 0.5)
        always, _ = consensus_division(a, b, fit, 3, 0.95)
        assert torch.equal(gated, always if strict else plain)
        assert (said["separation_a"] >= 2.0) == strict
    assert not torch.equal(consensus_division(torch.tensor(one), torch.tensor(one), fit, 3,
                                              0.95)[0],
                           consensus_division(torch.tensor(one), torch.tensor(one), fit, 3)[0])


def test_consensus_labels_and_split_prob_follow_the_rules():
    a, b = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 1, 0, 0, 1])
    assert consensus(a, b, np.array([1, 0, 0, 1])).tolist() == [1, 1, 0, 0, 0, 1]
    with pytest.raises(ValueError):
        consensus(a, b, np.array([1]))
    prob = np.linspace(0.6, 1.0, 300)  # nobody noisy: the lowest 1% are held out anyway
    # (the threshold becomes the value at index 300 // 100 and clean means strictly above)
    assert split_prob(prob).tolist() == [0] * 4 + [1] * 296
    assert split_prob(np.array([0.2, 0.7, 0.5])).tolist() == [0, 1, 0]
    assert np.array_equal(clean_probability(np.ones(5)), np.ones(5))  # nothing to separate


# --- the head in a module: preparation, ranking, learning rates, resume ----------------------
def _module(tiny_synth, run_dir, *extra):
    from conftest import tiny_module

    return tiny_module(tiny_synth, run_dir, "rde_synthetic", "heads.rde.tse_dim=24",
                       "heads.rde.division_start_epoch=0", *extra)


class _Shim(SimpleNamespace):
    """What the preparation pass reads of a trainer."""

    precision_plugin = SimpleNamespace(forward_context=contextlib.nullcontext)


def _prepare(module, dm, epoch, world=1, rank=0):
    from tbps.model.preparation import prepare_heads

    shim = _Shim(datamodule=dm, world_size=world, global_rank=rank)
    dm.trainer, module._trainer = shim, shim
    return prepare_heads(module, epoch)


def test_the_division_flags_the_swapped_pairs_it_was_made_from(tiny_synth, tmp_path):
    """The pass scores every pair; the head's labels are the consensus of its own per-pair
    losses (recomputed here from the same features); its report measures them against the
    data set's noise flags."""
    module, dm = _module(tiny_synth, tmp_path, "data.noise_rate=0.3", "text_augment=null")
    head = module.heads["rde"]
    assert head.prepares_for(0) and int(head.divided_epoch) == -1
    report = _prepare(module, dm, 0)
    assert int(head.divided_epoch) == 0 and not head.prepares_for(0) and head.prepares_for(1)
    labels = head.clean.bool().numpy()
    truly = ~np.array(dm.records["train"].caption_noisy)
    assert 0.6 < truly.mean() < 0.8  # 30% swapped
    assert report["division_clean_precision"] == pytest.approx((labels & truly).sum() / labels.sum())
    assert report["division_clean_recall"] == pytest.approx((labels & truly).sum() / truly.sum())
    assert report["division_clean_share"] == pytest.approx(labels.mean())
    assert module.training is False  # eval mode is restored as it was


@pytest.mark.parametrize("augment", [True, False])
def test_the_pass_sees_the_training_augmentation_unless_told_not_to(tiny_synth, tmp_path,
                                                                     augment):
    """RDE's code scores the pairs through its training loader (image and caption
    augmentation); ``preparation_augment=false`` scores them as evaluation sees them, so two
    passes under different random states give the same losses."""
    from tbps.data.datasets import load_rgb
    from tbps.data.transforms import eval_transform

    module, dm = _module(tiny_synth, tmp_path, f"preparation_augment={str(augment).lower()}")
    assert module.text_augment is not None  # rde_synthetic augments its captions
    head, got = module.heads["rde"], []
    head.prepare = lambda scores, *rest: got.append(scores) or {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        np.random.seed(seed)
        head.divided_epoch.fill_(-1)
        _prepare(module, dm, 0)
    same = all(torch.equal(got[0][k], got[1][k]) for k in ("bge", "tse"))
    assert same is (not augment)
    ds, rec = dm.preparation_dataloader(0, augment).dataset, dm.records["train"]
    plain = eval_transform(dm.image_size)
    equal = [torch.equal(ds[k]["image"],
                         plain(image=load_rgb(rec.image_paths[rec.caption_image[k]]))["image"])
             for k in range(8)]
    assert all(equal) is (not augment)


def test_the_heads_loss_sums_tal_over_the_clean_pairs_only(tiny_synth, tmp_path):
    module, dm = _module(tiny_synth, tmp_path, "text_augment=null")
    head = module.heads["rde"].train()
    batch = next(iter(dm.train_dataloader()))
    head.clean.zero_()
    keep = batch["index"][::2]
    head.clean[keep] = 1.0
    encoded = module.encoder(batch["image"], batch["caption_ids"], None, True)
    bge, tse, index = head._per_pair(encoded, batch)
    out = head(encoded, batch)
    mask = torch.isin(index, keep).float()
    torch.testing.assert_close(out["loss_bge"], (bge * mask).sum())
    torch.testing.assert_close(out["loss_tse"], (tse * mask).sum())
    assert out["rde_clean_share"] == pytest.approx(float(mask.mean()))


def test_ranking_is_the_mean_of_bge_and_tse_cosines_and_reports_each(tiny_synth, tmp_path):
    module, dm = _module(tiny_synth, tmp_path)
    images = torch.stack([dm.test_dataloader()[0].dataset[i]["image"] for i in range(6)])
    ids = dm.test_dataloader()[1].dataset.caption_ids[:5]
    with torch.no_grad():
        g, q = module.embed_images(images), module.embed_texts(ids)
        head, enc = module.heads["rde"], module.encoder
        ti, ai = enc.encode_image_tokens_attention(images)
        tt, at = enc.encode_text_tokens_attention(ids)
        bge = F.normalize(enc.text_global(tt, ids), dim=-1) @ F.normalize(ti[:, 0], dim=-1).t()
        tse = (F.normalize(head.text_tse.forward_text(tt, at, ids, head.ctx.eos_id,
                                                      head.ctx.context_length), dim=-1)
               @ F.normalize(head.image_tse.forward_image(ti, ai), dim=-1).t())
    got = F.normalize(q, dim=-1) @ F.normalize(g, dim=-1).t()
    torch.testing.assert_close(got, (bge + tse) / 2, rtol=1e-5, atol=1e-6)
    parts = module.retrieval_parts
    assert set(parts) == {"bge", "tse"} and g.shape[1] == 32 + 24
    torch.testing.assert_close(F.normalize(q[:, parts["bge"]], dim=-1)
                               @ F.normalize(g[:, parts["bge"]], dim=-1).t(), bge)


def test_tse_trains_at_its_own_learning_rate_under_every_rule(tiny_synth, tmp_path):
    for rule in ("irra", "by_module", "uniform"):
        module, _ = _module(tiny_synth, tmp_path, f"optim.param_rule={rule}", "optim.lr=1e-5")
        module.trainer = None
        module._trainer = SimpleNamespace(max_epochs=2, estimated_stepping_batches=10)
        opt = module.configure_optimizers()["optimizer"]
        lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
        for name, p in module.named_parameters():
            if "_tse." in name:
                assert lr_of[id(p)] == 1e-3, (rule, name)
            elif name.startswith("encoder.") and rule != "by_module" and "bias" not in name:
                assert lr_of[id(p)] == 1e-5, (rule, name)


def test_paper_eval_mode_keeps_tse_batchnorm_in_eval_after_the_first_division():
    ctx = HeadContext(embed_dim=8, num_classes=3, vocab_size=20, mask_id=4, pad_id=0,
                      special_ids=(0, 1, 2, 3, 4), eos_id=3, num_train_pairs=5)
    for paper, after in ((True, False), (False, True)):
        head = RDEHead(ctx, tse_dim=8, paper_eval_mode=paper).train()
        assert head.image_tse.norm.training  # before any division: as the code, train mode
        head.prepare({"bge": torch.rand(5), "tse": torch.rand(5)}, torch.zeros(5), 0, 0)
        head.train()
        assert head.image_tse.norm.training is after and head.text_tse.norm.training is after


def _rank_prepare(rank, world, port, root, run_dir, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    module, dm = _module(Path(root), Path(run_dir), "text_augment=null", "data.batch_size=5",
                         *NO_AUGMENT)
    torch.manual_seed(1)  # the same weights on every rank (as DDP broadcasts them)
    module.heads["rde"].image_tse.norm.running_mean.normal_()
    report = _prepare(module, dm, 0, world, rank)
    torch.save({"clean": module.heads["rde"].clean, "report": report}, f"{out}/rank{rank}.pt")
    spawned.leave()


NO_AUGMENT = ("data.augment.flip=0", "data.augment.pad=0", "data.augment.erase=0")


def test_two_processes_hold_the_division_of_one_process(tiny_synth, tmp_path):
    """Each process scores its shard, the gathered batches are the one-process batches of
    10, and every process ends with the same division as one process makes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_prepare, args=(2, port, str(tiny_synth), str(tmp_path / "r"), str(tmp_path)),
             nprocs=2, join=True)
    module, dm = _module(tiny_synth, tmp_path / "one", "text_augment=null",
                         "data.batch_size=10", *NO_AUGMENT)
    assert dm.num_train_pairs % 10 == 0  # no padded repeats in the last batch
    torch.manual_seed(1)
    module.heads["rde"].image_tse.norm.running_mean.normal_()
    single = _prepare(module, dm, 0)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["clean"], ranks[1]["clean"])
    assert torch.equal(ranks[0]["clean"], module.heads["rde"].clean)
    for key in ("division_clean_share_a", "division_clean_share_b", "division_clean_share"):
        assert ranks[1]["report"][key] == pytest.approx(single[key])


def test_rde_synthetic_trains_divides_every_epoch_and_resumes_with_its_division(
        rde_run, tiny_synth, tmp_path):
    """`tbps train experiment=rde_synthetic` end to end at 30% noise: a division before
    every epoch from division_start_epoch, its quality in metrics.json, BGE, TSE and fused
    test metrics; a resumed run keeps its division and divides again for the new epoch."""
    import shutil

    from conftest import tiny_overrides

    from tbps.cli import main

    metrics = json.loads((rde_run / "metrics.json").read_text())
    for key in ("test/R1", "test/bge/R1", "test/tse/R1", "train/division_clean_precision",
                "train/division_clean_recall", "train/division_clean_share"):
        assert key in metrics, key
    ckpt = torch.load(rde_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(ckpt["state_dict"]["heads.rde.divided_epoch"]) == 1  # start 1: epoch 1 only
    first = ckpt["state_dict"]["heads.rde.clean"]
    assert 0 < float(first.mean()) < 1
    run = tmp_path / "run"
    shutil.copytree(rde_run, run)
    args = [a for a in tiny_overrides(tiny_synth, run) if "mlm" not in a]
    assert main(["train", "experiment=rde_synthetic", *args, "trainer.max_epochs=3",
                 "data.noise_rate=0.3", "heads.rde.tse_dim=24", f"resume={run}"]) == 0
    again = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(again["state_dict"]["heads.rde.divided_epoch"]) == 2


def test_a_module_restored_mid_epoch_keeps_its_division(tiny_synth, tmp_path):
    module, dm = _module(tiny_synth, tmp_path, "text_augment=null")
    _prepare(module, dm, 0)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    fresh, _ = _module(tiny_synth, tmp_path / "b", "text_augment=null")
    assert fresh.heads["rde"].prepares_for(0)
    fresh.load_state_dict(state)
    assert not fresh.heads["rde"].prepares_for(0)  # restored: no second pass for epoch 0
    assert torch.equal(fresh.heads["rde"].clean, module.heads["rde"].clean)
    assert _prepare(fresh, dm, 0) == {}


# --- RDE's noise files ------------------------------------------------------------------------
def test_rde_noise_files_are_applied_and_checked(tiny_synth, tmp_path):
    from conftest import tiny_module

    module, dm = tiny_module(tiny_synth, tmp_path)
    n = dm.num_train_pairs
    clean = dm.records["train"]
    perm = np.arange(n)
    chosen = np.random.default_rng(0).permutation(n)[: n // 5]
    perm[chosen] = np.roll(chosen, 1)
    good = tmp_path / "CUHK-PEDES_0.2.npy"
    np.save(good, perm)
    _, noisy_dm = tiny_module(tiny_synth, tmp_path / "n", "synthetic", f"data.noise_file={good}")
    rec = noisy_dm.records["train"]
    assert rec.captions == [clean.captions[j] for j in perm]
    assert rec.caption_noisy == [bool(j != i) for i, j in enumerate(perm)]
    assert sum(rec.caption_noisy) == n // 5
    bad = {"short.npy": np.arange(n - 1), "repeats.npy": np.zeros(n, dtype=int),
           "floats.npy": np.arange(n, dtype=float)}
    for name, array in bad.items():
        np.save(tmp_path / name, array)
    for name, words in (("short.npy", f"{n - 1} entries"), ("repeats.npy", "not a permutation"),
                        ("floats.npy", "float64"), ("missing.npy", "no such file")):
        with pytest.raises(ConfigError, match=words) as err:
            tiny_module(tiny_synth, tmp_path / name, "synthetic",
                        f"data.noise_file={tmp_path / name}")
        assert "data.noise_file" in str(err.value)
    with pytest.raises(ConfigError, match="noise_rate=0"):
        tiny_module(tiny_synth, tmp_path / "both", "synthetic", f"data.noise_file={good}",
                    "data.noise_rate=0.2")


def test_rde_experiments_carry_the_codes_hyper_parameters():
    from tbps.config import compose_experiment

    os.environ["TBPS_EXPERIMENTS"] = str(EXPERIMENTS)
    for name in ("rde_cuhk", "rde_icfg", "rde_rstp"):
        cfg = compose_experiment(name, ["data.root=/nowhere"])
        rde = cfg.heads.rde
        assert list(cfg.heads) == ["rde"]
        assert (rde.tau, rde.margin, rde.select_ratio, rde.tse_lr) == (0.015, 0.1, 0.3, 1e-3)
        assert cfg.trainer.max_epochs == 60 and cfg.data.batch_size == 64
        assert cfg.optim.lr == 1e-5 and cfg.optim.param_rule == "irra"
        assert cfg.data.augment.flip == 0.5 and cfg.data.augment.erase == 0.5  # img_aug
        assert math.isclose(cfg.text_augment.mask + cfg.text_augment.delete
                            + cfg.text_augment.replace, 0.2)  # txt_aug
        assert rde.gmm_max_iter == (100 if name == "rde_rstp" else 10)


def test_the_division_analysis_measures_the_losses_and_both_fits(rde_run, capsys):
    """`python -m tbps.analysis.division CKPT`: AUC and the lowest-70% share against a
    count by hand on separable losses, and on a trained run the numbers of its pairs."""
    from tbps.analysis.division import main, measure

    noisy = np.array([False] * 70 + [True] * 30)
    losses = torch.tensor(np.r_[np.linspace(0, 1, 70), np.linspace(2, 3, 30)])
    out = measure({"bge": losses, "tse": -losses}, noisy)
    assert out["views"]["bge"]["auc"] == 1.0 and out["views"]["tse"]["auc"] == 0.0
    assert out["views"]["bge"]["clean_share_of_lowest_70pct"] == 1.0
    assert out["views"]["tse"]["clean_share_of_lowest_70pct"] == pytest.approx(40 / 70)
    assert main([str(rde_run / "checkpoints" / "last.ckpt")]) == 0
    text = capsys.readouterr().out
    got = json.loads(text[text.index("{\n"):])
    assert got["pairs"] == 150 and got["noisy_share"] == pytest.approx(0.3, abs=0.02)
    for fit in ("default_fit", "long_fit"):
        assert set(got[fit]) == {"precision", "recall", "clean_share", "separation"}
        assert 0 < got[fit]["clean_share"] < 1
    assert set(got["default_fit_threshold"]) == {"0.9", "0.95"}
    assert set(got["default_fit_threshold"]["0.9"]) == {"precision", "recall", "clean_share",
                                                       "separation"}


def test_loss_history_divides_by_losses_averaged_over_divisions_and_is_off_by_default():
    """``loss_history`` m: before each division h ← m·h + (1 − m)·minmax(losses), per view,
    and the division is made from h (a loop reference); m = 0 is the code's division of this
    epoch's losses; the averages travel in the checkpoint."""
    n = 300
    ctx = HeadContext(embed_dim=8, num_classes=3, vocab_size=20, mask_id=4, pad_id=0,
                      special_ids=(0, 1, 2, 3, 4), eos_id=3, num_train_pairs=n)
    rng = np.random.default_rng(1)
    noisy = torch.from_numpy(rng.random(n) < 0.3)
    epochs = [{v: torch.from_numpy(np.where(noisy, rng.normal(2.0, 0.7, n),
                                            rng.normal(1.0, 0.7, n)) * scale)
               for v in ("bge", "tse")} for scale in (3.0, 2.0, 1.0)]
    head = RDEHead(ctx, tse_dim=8, loss_history=0.6)
    plain = RDEHead(ctx, tse_dim=8)
    assert "history" not in plain.state_dict()
    want = {}
    for epoch, scores in enumerate(epochs):
        for view in ("bge", "tse"):
            x = scores[view].double().numpy()
            now = (x - x.min()) / (x.max() - x.min())
            want[view] = now if epoch == 0 else 0.6 * want[view] + 0.4 * now
        head.prepare(scores, noisy, epoch, 0)
        plain.prepare(scores, noisy, epoch, 0)
        labels, _ = consensus_division(torch.from_numpy(want["bge"]),
                                       torch.from_numpy(want["tse"]), MixtureFit(), epoch)
        assert torch.equal(head.clean, labels.to(head.clean))
        code, _ = consensus_division(scores["bge"], scores["tse"], MixtureFit(), epoch)
        assert torch.equal(plain.clean, code.to(plain.clean))
    assert not torch.equal(head.clean, plain.clean)  # the average is not this epoch's losses
    restored = RDEHead(ctx, tse_dim=8, loss_history=0.6)
    restored.load_state_dict(head.state_dict())
    assert torch.allclose(restored.history[0], torch.from_numpy(want["bge"]))
