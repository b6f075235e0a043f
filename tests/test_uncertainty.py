"""Uncertainty that can be measured: PCME++'s matching in DCL against loops and Monte Carlo,
gradients that reach the shift and σ, the module's one uncertainty path, and
`tbps uncertainty` against independent computations (scikit-learn, SciPy, hand binning)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tbps.components.distributions import Distributions
from tbps.heads.base import HeadContext
from tbps.heads.dcl import DCLHead
from tbps.types import Gaussian

CTX = HeadContext(embed_dim=6, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                  special_ids=(0, 1))


def _dists(b=5, d=6, seed=0, logvar=-2.0):
    g = torch.Generator().manual_seed(seed)
    return Distributions(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) + logvar,
                         torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) + logvar)


def test_pcme_matching_loss_matches_a_loop_reference():
    dist, pid = _dists(), torch.tensor([0, 1, 1, 2, 3])
    head = DCLHead(CTX, distance="csd", init_scale=3.0, init_shift=1.0, objective="pcme")
    got = head(None, {"distributions": dist, "pid": pid})["loss_dcl"]
    mv, mt = F.normalize(dist.image_mean, dim=-1), F.normalize(dist.text_mean, dim=-1)
    total = 0.0
    for i in range(5):
        for j in range(5):
            d = sum(float(mv[i, c] - mt[j, c]) ** 2 + math.exp(float(dist.image_logvar[i, c]))
                    + math.exp(float(dist.text_logvar[j, c])) for c in range(6))
            p = 1 / (1 + math.exp(-(-3.0 * d + 1.0)))
            y = float(pid[i] == pid[j])
            total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert abs(float(got) - 2 * total / 25) < 1e-4


def test_match_probability_is_the_sigmoid_of_the_monte_carlo_sampled_distance():
    """P(match) = sigmoid(−a·E‖z_t − z_i‖² + b), z ~ each Gaussian around its normalised
    mean: the closed form against 200,000 samples."""
    head = DCLHead(CTX, distance="csd", init_scale=2.0, init_shift=3.0)
    g = torch.Generator().manual_seed(3)
    text = Gaussian(torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g) - 3)
    image = Gaussian(torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g) - 3)
    prob = head.match_probability(text, image)
    assert prob.shape == (2, 3)
    n = 200_000
    for t in range(2):
        for i in range(3):
            zt = F.normalize(text.mean[t], dim=0) + text.logvar[t].mul(0.5).exp() * torch.randn(n, 6, generator=g)
            zi = F.normalize(image.mean[i], dim=0) + image.logvar[i].mul(0.5).exp() * torch.randn(n, 6, generator=g)
            d = ((zt - zi) ** 2).sum(1).mean()
            want = torch.sigmoid(-2.0 * d + 3.0)
            assert abs(float(prob[t, i]) - float(want)) < 0.01 * float(want) + 1e-4


def _grads(objective):
    dist, pid = _dists(b=8, d=32, logvar=-4.0), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    lv_t = dist.text_logvar.clone().requires_grad_()
    dist = Distributions(dist.image_mean, dist.image_logvar, dist.text_mean, lv_t)
    head = DCLHead(HeadContext(embed_dim=32, num_classes=4, vocab_size=10, mask_id=1, pad_id=0,
                               special_ids=(0, 1)), objective=objective)
    head(None, {"distributions": dist, "pid": pid})["loss_dcl"].backward()
    return float(head.match.shift.grad.abs()), float(lv_t.grad.abs().max())


def test_under_pcme_the_shift_and_sigma_learn_and_under_a_softmax_the_shift_cannot():
    """The issue's finding on the earlier objective, kept as a fact: a row-wise softmax
    ignores a constant shift (gradient 0 up to rounding); PCME++'s binary matching gives the
    shift and the caption's log σ² real gradients from the first step."""
    shift, sigma = _grads("pcme")
    assert shift > 1e-2 and sigma > 1e-4, (shift, sigma)
    shift_sdm, _ = _grads("sdm")
    assert shift_sdm < 1e-6, shift_sdm


def test_the_automatic_shift_starts_at_the_batch_share_of_true_pairs_once():
    """init_shift: auto sets b on the first training batch so that the mean logit of its
    pairs is logit(share of same-person pairs), once: a later batch, or a copy restored from
    the state dict (a resumed run), keeps the b it has."""
    from tbps.components.matching import ProbabilisticMatch

    dist, pid = _dists(b=8, logvar=-3.0), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    text = Gaussian(dist.text_mean, dist.text_logvar)
    image = Gaussian(dist.image_mean, dist.image_logvar)
    match = ProbabilisticMatch(init_scale=4.0).train()
    _, logits = match.loss(text, image, pid)
    share = 16 / 64
    assert float(logits.mean()) == pytest.approx(math.log(share / (1 - share)), abs=1e-4)
    assert not bool(match.shift_pending)
    b = float(match.shift)
    other = Gaussian(dist.text_mean * 3, dist.text_logvar - 1)
    match.loss(other, image, pid)
    assert float(match.shift) == b
    restored = ProbabilisticMatch(init_scale=4.0).train()
    restored.load_state_dict(match.state_dict())
    restored.loss(other, image, pid)
    assert float(restored.shift) == b
    fixed = ProbabilisticMatch(init_shift=5.0).train()
    fixed.loss(text, image, pid)
    assert float(fixed.shift) == 5.0


def test_a_model_without_uncertainty_says_so_in_one_line(tiny_run, capsys):
    from tbps.cli import main

    assert main(["uncertainty", str(tiny_run / "checkpoints" / "best.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "predicts no uncertainty" in err, err
    assert main(["uncertainty", "no/such.ckpt"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def _hand_ece(prob, label, bins=15):
    total, n = 0.0, len(prob)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [k for k in range(n) if (lo < prob[k] <= hi) or (b == 0 and prob[k] == 0)]
        if inside:
            conf = sum(prob[k] for k in inside) / len(inside)
            acc = sum(label[k] for k in inside) / len(inside)
            total += abs(acc - conf) * len(inside) / n
    return total


def test_tbps_uncertainty_measures_what_it_says(ucfa_run, tmp_path, capsys):
    """Every figure of the command recomputed another way: σ per caption through the
    module's public path (one caption at a time, not the command's batches), AUC by
    scikit-learn, Spearman by SciPy, the partial by regressing ranks, the ECE by hand."""
    import numpy as np
    from scipy.stats import rankdata, spearmanr
    from sklearn.metrics import roc_auc_score

    from tbps.analysis.uncertainty import _data, identities_fitted
    from tbps.cli import main
    from tbps.model.checkpoint import load_checkpoint

    ckpt = str(ucfa_run / "checkpoints" / "best.ckpt")
    out = tmp_path / "u.json"
    assert main(["uncertainty", ckpt, "--out", str(out)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads(out.read_text())

    module = load_checkpoint(ckpt).eval()
    dm = _data(module)
    train_ids = dm._caption_ids["train"]
    pairs = dm._train_pairs()
    sigma = torch.cat([module.uncertainty(ids=train_ids[k:k + 1]).text_sigma
                       for k in range(len(train_ids))])
    noisy = np.array(dm.records["train"].caption_noisy)
    caption_of_pair = [c for _, c, _ in pairs.pairs]
    assert got["noise"]["noisy"] == int(noisy[caption_of_pair].sum()) > 0
    want = roc_auc_score(noisy[caption_of_pair], sigma[caption_of_pair].numpy())
    assert abs(got["noise"]["auc"]["text_sigma"] - want) < 2e-3
    assert set(got["noise"]["auc"]) == {"text_sigma", "pair_sigma", "loss_tal",
                                        "one_minus_match_probability"}

    # ambiguity: σ of the test captions against log(identities fitted), length held fixed
    test_ids = dm._caption_ids["test"]
    s = torch.cat([module.uncertainty(ids=test_ids[k:k + 1]).text_sigma
                   for k in range(len(test_ids))]).numpy()
    fitted = np.log(identities_fitted(dm.root / dm.benchmark.folder / dm.benchmark.annotation,
                                      "test"))
    length = module.encoder.text_mask(test_ids).sum(1).numpy()
    amb = got["ambiguity"]["sigma_vs_log_identities_fitted"]
    assert abs(amb["spearman"] - spearmanr(s, fitted).statistic) < 2e-3
    rs, rf, rl = rankdata(s), rankdata(fitted), rankdata(length)
    resid = lambda y: y - np.polyval(np.polyfit(rl, y, 1), rl)  # noqa: E731
    partial = np.corrcoef(resid(rs), resid(rf))[0, 1]
    assert abs(amb["partial_given_length"] - partial) < 2e-3
    # the reference beside it: scikit-learn's least squares on the training captions' stated
    # attribute keys and word counts, read against the same log(identities fitted) and length
    from sklearn.linear_model import LinearRegression

    recs = json.loads((dm.root / dm.benchmark.folder / dm.benchmark.annotation).read_text())
    rows = {split: [(said, n, len(words)) for r in recs if r["split"] == split
                    for said, n, words in zip(r["attribute_mentions"], r["identities_fitted"],
                                              r["processed_tokens"])]
            for split in ("train", "test")}
    keys = sorted({k for said, _, _ in rows["train"] for k in said})
    x = {split: np.array([[k in said for k in keys] + [words] for said, _, words in v], float)
         for split, v in rows.items()}
    fit = LinearRegression().fit(x["train"], np.log([n for _, n, _ in rows["train"]]))
    pred = fit.predict(x["test"])
    ref = got["ambiguity"]["stated_attributes_predictor"]
    assert abs(ref["spearman"] - spearmanr(pred, fitted).statistic) < 2e-3
    assert abs(ref["partial_given_length"]
               - np.corrcoef(resid(rankdata(pred)), resid(rf))[0, 1]) < 2e-3
    # what the caption embedding holds: scikit-learn's ridge (α 1) from the training captions'
    # retrieval embeddings, standardised, to their log(identities fitted), read on the test's
    from sklearn.linear_model import Ridge

    with torch.inference_mode():
        emb = {split: module.embed_texts(dm.tokenizer.encode(
            [c for r in recs if r["split"] == split for c in r["captions"]])).double().numpy()
            for split in ("train", "test")}
    mu, sd = emb["train"].mean(0), np.maximum(emb["train"].std(0, ddof=1), 1e-6)
    ridge = Ridge(alpha=1.0).fit((emb["train"] - mu) / sd, np.log([n for _, n, _ in rows["train"]]))
    probe = ridge.predict((emb["test"] - mu) / sd)
    cp = got["ambiguity"]["caption_embedding_probe"]
    assert abs(cp["spearman"] - spearmanr(probe, fitted).statistic) < 2e-3
    assert abs(cp["partial_given_length"]
               - np.corrcoef(resid(rankdata(probe)), resid(rf))[0, 1]) < 2e-3
    # and from the mean of each caption's input word embeddings (the tower's table through
    # the text projection), the padding left out, by the same ridge
    table = module.encoder.text.get_input_embeddings().weight.detach().double().numpy()
    proj = module.encoder.text_proj.weight.detach().double().numpy()

    def word_means(split):
        ids = dm.tokenizer.encode([c for r in recs if r["split"] == split for c in r["captions"]])
        mask = module.encoder.text_mask(ids).numpy()
        return np.stack([table[row[m]].mean(0) @ proj.T for row, m in zip(ids.numpy(), mask)])

    wm = {split: word_means(split) for split in ("train", "test")}
    wmu, wsd = wm["train"].mean(0), np.maximum(wm["train"].std(0, ddof=1), 1e-6)
    words = Ridge(alpha=1.0).fit((wm["train"] - wmu) / wsd, np.log([n for _, n, _ in rows["train"]]))
    wp = got["ambiguity"]["caption_words_probe"]
    assert abs(wp["partial_given_length"] - np.corrcoef(
        resid(rankdata(words.predict((wm["test"] - wmu) / wsd))), resid(rf))[0, 1]) < 2e-3
    # the same two on the training captions themselves: the ridge in-sample, and σ
    text_ids = dm.tokenizer.encode([c for r in recs if r["split"] == "train" for c in r["captions"]])
    rl_train = rankdata(module.encoder.text_mask(text_ids).sum(1).numpy())
    resid_train = lambda y: y - np.polyval(np.polyfit(rl_train, y, 1), rl_train)  # noqa: E731
    rf_train = resid_train(rankdata(np.log([n for _, n, _ in rows["train"]])))
    tc = got["ambiguity"]["training_captions"]
    inside = ridge.predict((emb["train"] - mu) / sd)
    assert abs(tc["caption_embedding_probe_in_sample"]["partial_given_length"]
               - np.corrcoef(resid_train(rankdata(inside)), rf_train)[0, 1]) < 2e-3
    s_train = torch.cat([module.uncertainty(ids=text_ids[k:k + 1]).text_sigma
                         for k in range(len(text_ids))]).numpy()
    assert abs(tc["sigma_vs_log_identities_fitted"]["partial_given_length"]
               - np.corrcoef(resid_train(rankdata(s_train)), rf_train)[0, 1]) < 2e-3

    # calibration: P(match) of every test caption with every test image, binned by hand
    rec = dm.records["test"]
    gallery, _ = dm._eval_loaders("test")
    images = torch.cat([b["image"] for b in gallery])
    prob = module.uncertainty(images, test_ids).match_probability
    same = torch.tensor(rec.caption_pids)[:, None] == torch.tensor(rec.image_pids)[None, :]
    ece = _hand_ece(prob.flatten().tolist(), same.flatten().float().tolist())
    assert abs(got["calibration"]["ece"] - ece) < 2e-3
    assert abs(got["calibration"]["match_probability_true_pairs"] - float(prob[same].mean())) < 1e-3
    # the false-match mass beside σ: each caption's P(match) summed over other people's images
    mass = (prob * ~same).sum(1)
    log_fitted = torch.from_numpy(fitted)
    vague = log_fitted > log_fitted.median()  # the lower middle value, as the command
    fm = got["ambiguity"]["false_match_mass"]
    assert abs(fm["vague"] - float(mass[vague].mean())) < 1e-3
    assert abs(fm["specific"] - float(mass[~vague].mean())) < 1e-3
    assert abs(fm["vs_log_identities_fitted"]["spearman"]
               - spearmanr(mass.numpy(), fitted).statistic) < 2e-3
    # the means' offset beside σ's: each caption's mean distance to its own person's images
    from tbps.model.uncertainty import gaussian
    with torch.inference_mode():
        text_mean = gaussian(module, "text", test_ids).mean.float()
        image_mean = gaussian(module, "image", images).mean.float()
    own = []
    for t in range(len(text_mean)):
        mine = [i for i in range(len(image_mean)) if same[t, i]]
        own.append(sum(float(((text_mean[t] / text_mean[t].norm())
                              - (image_mean[i] / image_mean[i].norm())).pow(2).sum())
                       for i in mine) / len(mine))
    od = got["ambiguity"]["own_image_distance_vs_log_identities_fitted"]
    assert abs(od["spearman"] - spearmanr(own, fitted).statistic) < 2e-3
    # σ over the mean's norm, caption by caption with Python's own arithmetic
    with torch.inference_mode():
        text_gauss = gaussian(module, "text", test_ids)
    relative = [sum(math.exp(0.5 * float(v)) for v in text_gauss.logvar[t]) / text_gauss.logvar.shape[1]
                / float(text_gauss.mean[t].norm()) for t in range(len(text_mean))]
    sn = got["ambiguity"]["sigma_over_mean_norm_vs_log_identities_fitted"]
    assert abs(sn["spearman"] - spearmanr(relative, fitted).statistic) < 2e-3
    # the entropy of each caption's softmax over the gallery by the means' cosine / 0.1
    entropy = []
    for t in range(len(text_mean)):
        cos = [float(text_mean[t] @ image_mean[i] / (text_mean[t].norm() * image_mean[i].norm()))
               for i in range(len(image_mean))]
        z = [math.exp(c / 0.1) for c in cos]
        entropy.append(-sum(v / sum(z) * math.log(v / sum(z)) for v in z))
    me = got["ambiguity"]["match_entropy_vs_log_identities_fitted"]
    assert abs(me["spearman"] - spearmanr(entropy, fitted).statistic) < 2e-3


def test_the_stated_attributes_predictor_recovers_a_count_that_the_stated_keys_decide():
    """When log(identities fitted) is a linear function of which keys a caption states, the
    reference predictor must give it back exactly, for captions it was not fitted on."""
    import itertools

    from tbps.analysis.uncertainty import text_only_prediction

    keys = ("bag", "hat", "shoe_colour", "upper_colour")
    effect = {"bag": -0.7, "hat": -0.2, "shoe_colour": -1.1, "upper_colour": -0.4}

    def caption(stated, words):
        said = {k: "x" for k in stated}
        return said, math.exp(1.5 + sum(effect[k] for k in stated) + 0.01 * words), words

    subsets = [c for r in range(len(keys) + 1) for c in itertools.combinations(keys, r)]
    train = [caption(c, w) for c in subsets for w in (8, 20)]
    test = [caption(c, 13) for c in subsets[::3]]
    want = torch.tensor([math.log(n) for _, n, _ in test])
    assert torch.allclose(text_only_prediction(train, test).double(), want.double(), atol=1e-5)


def test_the_expected_distance_embedding_ranks_every_gallery_by_the_expected_distance():
    """Its cosine is a fixed positive multiple of (cos − v_i/2) for every caption, so the
    order is −E‖z_t − z_i‖²'s: checked against the distance itself, with variances from
    tiny to large, and the first D entries alone rank by the means."""
    from tbps.components.gaussian import csd_distance
    from tbps.components.matching import expected_distance_embedding

    g = torch.Generator().manual_seed(5)
    d = 16
    text = Gaussian(torch.randn(4, d, generator=g), torch.randn(4, d, generator=g) - 3)
    image = Gaussian(torch.randn(50, d, generator=g) * 3,
                     torch.linspace(-12, 3, 50)[:, None] + 0.3 * torch.randn(50, d, generator=g))
    q = F.normalize(expected_distance_embedding("text", text), dim=-1)
    k = F.normalize(expected_distance_embedding("image", image), dim=-1)
    cos = q @ k.t()
    csd = csd_distance(F.normalize(text.mean, dim=-1), text.logvar,
                       F.normalize(image.mean, dim=-1), image.logvar)
    for row in range(4):
        assert cos[row].argsort(descending=True).tolist() == csd[row].argsort().tolist()
    # linear: cos' = c·(−d/2 + const) with one c > 0 for every row
    for row in range(4):
        fit = torch.linalg.lstsq(torch.stack([-csd[row] / 2, torch.ones(50)], 1).double(),
                                 cos[row].double()[:, None]).solution
        assert float(fit[0]) > 0
        resid = torch.stack([-csd[row] / 2, torch.ones(50)], 1).double() @ fit - cos[row, :, None]
        assert float(resid.abs().max()) < 1e-6 * float(cos[row].abs().max())
    means = F.normalize(q[:, :d], dim=-1) @ F.normalize(k[:, :d], dim=-1).t()
    want = F.normalize(text.mean, dim=-1) @ F.normalize(image.mean, dim=-1).t()
    assert torch.allclose(means, want, atol=1e-5)


@pytest.mark.parametrize("experiment,override", [
    ("ucfa_synthetic", "heads.dcl.rank_by=distribution"),
    ("crue_synthetic", "heads.ugm.rank_by=distribution")])
def test_ranking_by_the_distributions_is_the_order_of_the_match_probability(
        tiny_synth, tmp_path, experiment, override):
    """Through the module's one ranking path (embed_images / embed_texts, what evaluation,
    search and serve use), every caption's gallery order is that of P(match) from the
    module's uncertainty path; the "mean" part ranks by the plain features."""
    from conftest import tiny_module

    module, dm = tiny_module(tiny_synth, tmp_path, experiment, override,
                             "heads.uamlr.num_heads=2", "heads.uamlr.depth=1") \
        if experiment.startswith("ucfa") else tiny_module(tiny_synth, tmp_path, experiment, override)
    gallery, _ = dm._eval_loaders("test")
    images = next(iter(gallery))["image"][:40]
    ids = dm._caption_ids["test"][:6]
    with torch.no_grad():
        img, txt = module.embed_images(images), module.embed_texts(ids)
        prob = module.uncertainty(images, ids).match_probability
        scores = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).t()
        part = module.retrieval_parts["mean"]
        means = F.normalize(txt[:, part], dim=-1) @ F.normalize(img[:, part], dim=-1).t()
        side_t, side_i = module.text_side(ids), module.image_side(images)
        plain = F.normalize(side_t.global_feature, dim=-1) @ F.normalize(side_i.global_feature, dim=-1).t()
    for row in range(6):
        order = scores[row].argsort(descending=True)
        p = prob[row][order].double()
        assert bool((p[:-1] >= p[1:] * (1 - 1e-4)).all()), (row, p)  # relative: p may be tiny
        assert float(p[0] / p[-1]) > 1.01  # and the probabilities do differ
    assert torch.allclose(means, plain.float(), atol=1e-5)


def test_checkpoints_from_before_the_probabilistic_match_still_load():
    """DCL kept a and b on itself; UGM had none: the first load where they were, the second
    without a P(match) (not with an untrained one)."""
    from tbps.heads.ugm import UGMHead

    old = DCLHead(CTX, init_shift=2.0).state_dict()
    old = {k.replace("match.", ""): v for k, v in old.items() if k != "match.shift_pending"}
    old["scale"], old["shift"] = torch.tensor(3.5), torch.tensor(-1.25)
    new = DCLHead(CTX)
    new.load_state_dict(old)
    assert float(new.match.scale) == 3.5 and float(new.match.shift) == -1.25
    assert not bool(new.match.shift_pending)
    ugm_old = {k: v for k, v in UGMHead(CTX).state_dict().items() if not k.startswith("match.")}
    ugm = UGMHead(CTX)
    ugm.load_state_dict(ugm_old)
    g = Gaussian(torch.zeros(1, 6), torch.zeros(1, 6))
    assert ugm.match_probability(g, g) is None


def test_what_each_loss_term_teaches_sigma(ucfa_run, tiny_run):
    """The KL term's direction on each caption's log σ² is known in closed form
    (β · ½(1 − σ²) / (B·D) per element): the analysis must give it back caption by caption,
    its rows must be the captions' own identities-fitted counts, and a model without
    distributions gets a clear error."""
    from tbps.analysis.sigma_signal import caption_directions, sigma_signal
    from tbps.analysis.uncertainty import _captions_by_split, _data, partial_spearman
    from tbps.errors import TBPSError
    from tbps.model.checkpoint import load_checkpoint

    module = load_checkpoint(str(ucfa_run / "checkpoints" / "best.ckpt"))
    dm = _data(module)
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    directions, logvar, log_fitted, length = caption_directions(module, dm, batches=2)
    beta = module.distributions.kl_weight
    sizes = [min(len(logvar) - k, dm.batch_size) for k in range(0, len(logvar), dm.batch_size)]
    per_element = torch.cat([torch.full((n,), 1.0 / (n * logvar.shape[1])) for n in sizes])
    want = beta * 0.5 * (1 - logvar.exp()).mean(1) * per_element
    assert torch.allclose(directions["loss_kl"], want, rtol=1e-4, atol=1e-12)
    counts = {n for _, n, _ in _captions_by_split(
        dm.root / dm.benchmark.folder / dm.benchmark.annotation)["train"]}
    assert set(log_fitted.exp().round().int().tolist()) <= counts
    assert len(length) == len(log_fitted) and length.min() >= 1
    assert "loss_dcl" in directions and directions["loss_dcl"].abs().sum() > 0
    got = sigma_signal(module, dm, batches=2)
    assert set(got["terms"]) == set(directions) | {"all_terms"}
    # the partial given length, against partial_spearman on the same three columns
    kl = got["terms"]["loss_kl"]["partial_given_length"]
    assert kl == partial_spearman(directions["loss_kl"], log_fitted, length)["partial_given_length"]
    with pytest.raises(TBPSError, match="no distributions"):
        plain = load_checkpoint(str(tiny_run / "checkpoints" / "best.ckpt"))
        caption_directions(plain, _data(plain), batches=1)
