"""UCFA's parts against independent computations: the distances between Gaussians (closed
forms on full covariances and Monte Carlo), DCL and PCL against plain-Python loops, both
over two processes, attribute-word masking on SynthPedes and on real-style captions,
gradients into the variance branch from every head, and a short run end to end."""

import math
import re
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tbps.components.distributions import Distributions
from tbps.components.gaussian import csd_distance, w2_distance
from tbps.heads.base import HeadContext
from tbps.heads.dcl import DCLHead
from tbps.heads.pcl import PCLHead, inter_modal_loss, intra_modal_loss
from tbps.heads.uamlr import select_attribute_words
import spawned

CTX = HeadContext(embed_dim=6, num_classes=5, vocab_size=50, mask_id=4, pad_id=0,
                  special_ids=(0, 1, 2, 3, 4))


def _gaussians(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 - 1.0)


def _sqrtm(m):
    vals, vecs = torch.linalg.eigh(m)
    return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def test_w2_equals_the_general_gaussian_formula_on_rotated_covariances():
    """W2² = ‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2(Σ2^½ Σ1 Σ2^½)^½), computed on full covariances after
    a random rotation of both Gaussians (W2 is invariant to it)."""
    mu_a, lv_a = _gaussians(3, seed=1)
    mu_b, lv_b = _gaussians(4, seed=2)
    got = w2_distance(mu_a, lv_a, mu_b, lv_b)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3),
                                       dtype=torch.float64))
    for i in range(3):
        for j in range(4):
            s1 = q @ torch.diag(lv_a[i].exp()) @ q.T
            s2 = q @ torch.diag(lv_b[j].exp()) @ q.T
            r = _sqrtm(s2)
            want = ((q @ mu_a[i] - q @ mu_b[j]) ** 2).sum() + torch.trace(
                s1 + s2 - 2 * _sqrtm(r @ s1 @ r))
            assert abs(float(got[i, j]) - float(want)) < 1e-8


def test_w2_and_csd_match_monte_carlo_estimates():
    mu, lv = _gaussians(2, d=4, seed=5)
    g = torch.Generator().manual_seed(6)
    n = 400_000
    za = mu[0] + lv[0].mul(0.5).exp() * torch.randn(n, 4, generator=g, dtype=torch.float64)
    zb = mu[1] + lv[1].mul(0.5).exp() * torch.randn(n, 4, generator=g, dtype=torch.float64)
    # CSD = E‖z_a − z_b‖² over independent samples
    csd_mc = ((za - zb) ** 2).sum(1).mean()
    assert abs(float(csd_distance(mu[:1], lv[:1], mu[1:], lv[1:])) - float(csd_mc)) < 0.02 * float(csd_mc)
    # W2 of product measures: per dimension, the optimal coupling pairs sorted samples
    w2_mc = ((za.sort(0).values - zb.sort(0).values) ** 2).mean(0).sum()
    assert abs(float(w2_distance(mu[:1], lv[:1], mu[1:], lv[1:])) - float(w2_mc)) < 0.02 * float(w2_mc)


def _kl_sdm_reference(logits, pid):
    """SDM by hand: rows and columns of a list-of-lists score matrix."""
    n = len(pid)
    total = 0.0
    for rows in (logits, [list(c) for c in zip(*logits)]):
        for i in range(n):
            m = max(rows[i])
            z = sum(math.exp(x - m) for x in rows[i])
            p = [math.exp(x - m) / z for x in rows[i]]
            pos = sum(1 for j in range(n) if pid[j] == pid[i])
            q = [(1 / pos if pid[j] == pid[i] else 0.0) for j in range(n)]
            total += sum(p[j] * (math.log(p[j]) - math.log(q[j] + 1e-8)) for j in range(n)) / n
    return total


def _dists(b=5, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Distributions(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) - 2,
                         torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) - 2)


@pytest.mark.parametrize("distance", ["w2", "csd"])
def test_dcl_matches_a_loop_reference(distance):
    dist, pid = _dists(), torch.tensor([0, 1, 1, 2, 3])
    head = DCLHead(CTX, weight=1.0, distance=distance, init_scale=3.0, init_shift=1.0,
                   objective="sdm")
    got = head(None, {"distributions": dist, "pid": pid})["loss_dcl"]
    mv, mt = F.normalize(dist.image_mean, dim=-1), F.normalize(dist.text_mean, dim=-1)
    sv, st = dist.image_logvar.exp(), dist.text_logvar.exp()
    logits = []
    for i in range(5):
        row = []
        for j in range(5):
            d = sum(float(mv[i, c] - mt[j, c]) ** 2 for c in range(6))
            if distance == "w2":
                d += sum((math.sqrt(sv[i, c]) - math.sqrt(st[j, c])) ** 2 for c in range(6))
            else:
                d += sum(float(sv[i, c] + st[j, c]) for c in range(6))
            row.append(-3.0 * d + 1.0)
        logits.append(row)
    assert abs(float(got) - _kl_sdm_reference(logits, pid.tolist())) < 1e-4


def _supcon_reference(z, pid, tau):
    """Every sample an anchor; positives: other samples of its identity."""
    k, b, _ = z.shape
    items = [(s, i) for s in range(k) for i in range(b)]
    losses = []
    for a in items:
        others = [o for o in items if o != a]
        pos = [o for o in others if pid[o[1]] == pid[a[1]]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[a] @ z[o]) / tau) for o in others)
        losses.append(-sum(math.log(math.exp(float(z[a] @ z[p]) / tau) / denom)
                           for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_pcl_terms_match_loop_references():
    g = torch.Generator().manual_seed(1)
    zv = F.normalize(torch.randn(3, 4, 6, generator=g), dim=-1)
    zt = F.normalize(torch.randn(3, 4, 6, generator=g), dim=-1)
    pid = torch.tensor([0, 1, 1, 2])
    inter = sum(_kl_sdm_reference((zv[s] @ zt[s].T / 0.1).tolist(), pid.tolist())
                for s in range(3)) / 3
    assert abs(float(inter_modal_loss(zv, zt, pid, 0.1)) - inter) < 1e-4
    assert abs(float(intra_modal_loss(zv, pid, 0.1)) - _supcon_reference(zv, pid, 0.1)) < 1e-4
    # one sample each: identities alone in the batch have no positive and are left out
    assert abs(float(intra_modal_loss(zv[:1], pid, 0.1)) - _supcon_reference(zv[:1], pid, 0.1)) < 1e-4


@pytest.mark.parametrize("around", ["normalised", "raw"])
def test_pcl_head_samples_the_gaussians_and_combines_its_terms(around):
    dist, pid = _dists(b=4), torch.tensor([0, 1, 1, 2])
    head = PCLHead(CTX, weight=2.0, num_samples=3, temperature=0.1, intra_weight=0.5,
                   sample_around=around)
    torch.manual_seed(7)
    out = head(None, {"distributions": dist, "pid": pid})
    torch.manual_seed(7)  # the same draws, in the head's order: images, then captions
    centre = (lambda m: F.normalize(m, dim=-1)) if around == "normalised" else (lambda m: m)
    zv = F.normalize(centre(dist.image_mean) + dist.image_logvar.mul(0.5).exp() * torch.randn(3, 4, 6), dim=-1)
    zt = F.normalize(centre(dist.text_mean) + dist.text_logvar.mul(0.5).exp() * torch.randn(3, 4, 6), dim=-1)
    torch.testing.assert_close(out["loss_pcl_inter"], 2.0 * inter_modal_loss(zv, zt, pid, 0.1))
    intra = 0.5 * (intra_modal_loss(zv, pid, 0.1) + intra_modal_loss(zt, pid, 0.1))
    torch.testing.assert_close(out["loss_pcl_intra"], 2.0 * 0.5 * intra)


# --- two processes ----------------------------------------------------------------------
B = 8


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ucfa_losses(part):
    """Loss and gradients of DCL and PCL on the ``part`` of a fixed global batch. Each
    modality's mean and log-variance come from one feature, as in the model (so their
    gathers share an upstream node)."""
    pid = torch.tensor([0, 1, 1, 2, 3, 3, 4, 0])
    g = torch.Generator().manual_seed(3)
    w_mean, w_var = torch.randn(6, 6, generator=g), torch.randn(6, 6, generator=g) * 0.3
    feats = torch.randn(2, B, 6, generator=g)
    out = {}
    for name, head in (("dcl", DCLHead(CTX)), ("pcl", PCLHead(CTX, num_samples=3, temperature=0.1))):
        x = feats.clone().requires_grad_()
        local = x[:, part]
        dist = Distributions(local[0] @ w_mean, local[0] @ w_var - 2,
                             local[1] @ w_mean, local[1] @ w_var - 2)
        torch.manual_seed(11)  # every rank draws the same global samples
        terms = head(None, {"distributions": dist, "pid": pid[part]})
        loss = sum(v for k, v in terms.items() if k.startswith("loss_"))
        loss.backward()
        out[name] = (loss.detach(), [x.grad[0, part], x.grad[1, part]])
    return out


def _rank(rank, world, port, folder):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.save(_ucfa_losses(slice(rank * B // world, (rank + 1) * B // world)),
               f"{folder}/rank{rank}.pt")
    dist.barrier()  # neither rank leaves while the other still gathers
    spawned.leave()


def test_dcl_and_pcl_over_two_processes_equal_one_process(tmp_path):
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _ucfa_losses(slice(0, B))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, (loss, grads) in single.items():
        for got in ranks:
            torch.testing.assert_close(got[name][0], loss)
        for k, g in enumerate(grads):  # DDP averages the ranks' summed gathered gradients
            torch.testing.assert_close(torch.cat([ranks[0][name][1][k], ranks[1][name][1][k]]) / 2, g)


# --- attribute-word masking -------------------------------------------------------------
def _masked_words(words, real, prob=0.5, share=0.15, draws=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [select_attribute_words(words, real, prob, share, g) for _ in range(draws)]


def test_whole_words_at_least_one_and_within_the_budget():
    # caption 0: words 1 (2 pieces), 2, 3 (3 pieces); caption 1: none; caption 2: one word
    words = torch.tensor([[0, 1, 1, 0, 2, 0, 3, 3, 3, 0, 0, 0],
                          [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                          [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]])
    real = torch.zeros_like(words, dtype=torch.bool)
    real[:, 1:11] = True
    for sel, has in _masked_words(words, real, prob=0.5, share=0.3):
        assert has.tolist() == [True, False, True]
        assert not sel[1].any()
        for b in (0, 2):
            chosen = set(words[b][sel[b]].tolist())
            assert chosen and 0 not in chosen                                # ≥ 1 word
            for k in chosen:                                                  # whole words
                assert sel[b][words[b] == k].all()
            # within 30% of 10 real tokens, unless one word alone is longer
            assert int(sel[b].sum()) <= 3 or len(chosen) == 1
    # caption 2's only word has 4 pieces > the budget: it is still masked, alone
    assert all(sel[2].sum() == 4 for sel, _ in _masked_words(words, real, share=0.3, draws=5))


def _annotated_module(tokenizer_kind, captions, recorded=None):
    from tbps.data.annotations import attribute_word_index
    from tbps.data.tokenizer import CaptionTokenizer

    tok = (CaptionTokenizer.clip(context_length=77) if tokenizer_kind == "clip"
           else CaptionTokenizer.train(captions * 3, vocab_size=300, context_length=64))
    ids = tok.encode(captions)
    made = attribute_word_index(tok, captions, recorded or [None] * len(captions))
    return tok, ids, made


def _words_masked_over_draws(tok, ids, words, draws=300):
    from tbps.heads.mlm import real_tokens

    real = real_tokens(ids, tuple(tok.special_ids))
    seen = [set() for _ in range(len(ids))]
    for sel, _ in _masked_words(words.long(), real, draws=draws):
        for b in range(len(ids)):
            for k in set(words[b][sel[b]].tolist()):
                seen[b].add(tok.decode(ids[b][words[b] == k].tolist()).strip())
    return seen


REAL_STYLE = [
    # CUHK-PEDES: long, run-on, misspelt
    "The man is wearing a grey jacket over a white shirt, black trousers and brown sneackers. "
    "He is carrying a black backpack on his back and he has short black hair.",
    # ICFG-PEDES: "he/she is wearing", lists with commas and "and"
    "A woman with long blonde hair, she is wearing a red down jacket, blue jeans and white "
    "shoes, and she is holding a white handbag in her left hand.",
    # RSTPReid: British spelling, several sentences
    "This lady wears a dark grey jumper and beige trousers. She carries a brown leather bag "
    "and wears black boots. Her hair is tied in a ponytail.",
    # nothing to mask: falls back to random masking
    "Someone walks down the street next to a tree.",
]
NEVER = {"man", "woman", "lady", "she", "he", "her", "his", "this", "the", "a", "is", "and",
         "on", "in", "with", "of", "over", "wearing", "wears", "carrying", "holding", "has"}


@pytest.mark.parametrize("kind", ["clip", "bpe"])
def test_real_style_captions_never_mask_person_nouns_or_function_words(kind):
    tok, ids, made = _annotated_module(kind, REAL_STYLE)
    assert made.empty == 1 and not made.tensor[3].any()  # the last caption, counted
    seen = _words_masked_over_draws(tok, ids, made.tensor)
    for b in range(3):
        masked = set().union(*(w.split() for w in seen[b]))
        assert masked and not masked & NEVER, (b, masked & NEVER)
    assert {"grey", "jacket", "backpack", "black"} <= seen[0]
    assert {"red", "jeans", "handbag", "blonde"} <= seen[1]
    assert {"jumper", "leather", "boots", "ponytail"} <= seen[2]


def test_synthpedes_masks_exactly_its_recorded_attribute_words(tiny_synth):
    """On SynthPedes captions the maskable words are the recorded ones (person nouns
    excluded), every one of them masked at some draw, all its pieces together."""
    import json

    from tbps.data.phrases import PERSON

    recs = json.loads((tiny_synth / "CUHK-PEDES" / "reid_raw.json").read_text())[:6]
    captions = [c for r in recs for c in r["captions"]]
    recorded = [w for r in recs for w in r["attribute_words"]]
    tok, ids, made = _annotated_module("bpe", captions, recorded)
    assert made.empty == 0
    seen = _words_masked_over_draws(tok, ids, made.tensor, draws=400)
    for b, words in enumerate(recorded):
        want = {w.lower() for w in words} - PERSON
        present = {w for w in want if re.search(rf"\b{w}\b", captions[b].lower())}
        assert seen[b] == present, (captions[b], seen[b] ^ present)


def test_noisy_captions_carry_their_recorded_words(tiny_synth):
    from tbps.data.noise import inject_noisy_correspondence
    from tbps.data.records import read_cuhk_pedes

    train = read_cuhk_pedes(tiny_synth / "CUHK-PEDES")["train"]
    noisy = inject_noisy_correspondence(train, 0.5, seed=0)
    by_text = dict(zip(train.captions, map(tuple, train.caption_words)))
    moved = [k for k in range(len(train.captions)) if noisy.captions[k] != train.captions[k]]
    assert moved
    assert all(tuple(noisy.caption_words[k]) == by_text[noisy.captions[k]] for k in moved)


# --- the module: gradients into the variance branch, a short run, bad settings ----------
TINY = ["data.image_size=[96,32]", "encoder.embed_dim=32", "encoder.vision.embed_dim=32",
        "encoder.vision.depth=1", "encoder.vision.num_heads=2", "encoder.text.hidden_size=32",
        "encoder.text.intermediate_size=64", "encoder.text.num_hidden_layers=1",
        "encoder.text.num_attention_heads=2", "heads.uamlr.num_heads=2"]


@pytest.fixture
def _experiments(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("TBPS_EXPERIMENTS", str(Path(__file__).parent.parent / "experiments"))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)


def _variance_grads(head_name, overrides=()):
    from tbps.bench.train_step import build_module, synthetic_batch

    module = build_module([*TINY, *overrides], 50, torch.device("cpu"), "ucfa_synthetic")
    g = torch.Generator().manual_seed(0)
    batch = synthetic_batch(8, (96, 32), module.tokenizer, 50, torch.device("cpu"), g,
                            module.caption_annotations)
    head = module.heads[head_name]
    batch.update(head.extra_inputs(batch))
    extra = {k: v for k, v in batch.items() if k.endswith("_ids") and k != "caption_ids"}
    encoded = module.encoder(batch["image"], batch["caption_ids"], extra)
    batch["distributions"] = module.distributions(encoded)
    sum(v for k, v in head(encoded, batch).items() if k.startswith("loss_")).backward()
    d = module.distributions
    size = lambda p: 0.0 if p.grad is None else p.grad.abs().sum().item()  # noqa: E731
    return {m: (size(getattr(d, m).logvar.weight), size(getattr(d, m).pool.query))
            for m in ("image", "text")}


@pytest.mark.usefixtures("_experiments")
@pytest.mark.parametrize("head,overrides,reaches", [
    ("dcl", [], ("image", "text")), ("dcl", ["heads.dcl.distance=csd"], ("image", "text")),
    ("pcl", [], ("image", "text")),
    ("uamlr", [], ("image",)), ("uamlr", ["heads.uamlr.uncertainty=weight"], ("image",)),
    ("uamlr", ["heads.uamlr.uncertainty=none"], ()),  # the ablation: no path, no gradient
])
def test_gradients_reach_the_variance_branch(head, overrides, reaches):
    grads = _variance_grads(head, overrides)
    for modality, (linear, pool) in grads.items():
        if modality in reaches:
            assert linear > 0 and pool > 0, (modality, grads)  # through the attention pool too
        else:
            assert linear == 0 and pool == 0, (modality, grads)


def test_ucfa_synthetic_trains_end_to_end(ucfa_run):
    import json

    metrics = json.loads((ucfa_run / "metrics.json").read_text())
    assert metrics["test/R1"] > 0 and metrics["train/samples_per_s"] > 0
    logged = (ucfa_run / "logs").rglob("metrics.csv")
    header = next(iter(logged)).read_text().splitlines()[0]
    for key in ("train/loss_dcl", "train/loss_pcl_inter", "train/loss_pcl_intra",
                "train/loss_uamlr", "train/loss_kl", "train/uamlr_random_fallback",
                "train/dcl_shift", "train/dcl_nonmatch_prob"):
        assert key in header
