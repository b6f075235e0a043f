"""ACSA's parts against slow references written from the official code (mul-hjh/ACSA,
utils/metric.py: ``func_attention_MxN`` per caption, ``compute_weiTexts``' loop, the
contrastive loss), the fused ranking against the dense fusion, phrase pooling and phrase
token sequences against loops, and a short run end to end with its fusion weight."""

import json

import pytest
import torch
import torch.nn.functional as F

from tbps.heads.acsa_attention import pairwise
from tbps.heads.acsa_tokens import phrase_token_ids, span_pool, stripe_tokens
from tbps.metrics.retrieval import fused_metrics, ranked_metrics
import spawned


def _l2(x, dim):
    return x / (torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + 1e-8)


def _func_attention(query, key, value, lam):
    """The official func_attention_MxN on one batch of (query set, key set) pairs."""
    q, k = _l2(query, -1), _l2(key, -1)
    attn = torch.bmm(k, q.transpose(1, 2))                       # (b, keys, queries)
    attn = F.leaky_relu(attn, 0.1)
    attn = _l2(attn, 2)
    attn = attn.transpose(1, 2)                                  # (b, queries, keys)
    attn = torch.softmax(attn * lam, dim=2)
    return torch.bmm(value.transpose(1, 2), attn.transpose(1, 2)).transpose(1, 2)


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-8)


def _wei_texts(img_q, img_v, txt_k, txt_v, n_phrases, lam):
    """compute_weiTexts: a loop over captions, each with its own number of phrases."""
    i2t, t2i = [], []
    for i in range(txt_k.shape[0]):
        n = n_phrases[i]
        k = txt_k[i, :n][None].repeat(img_q.shape[0], 1, 1)
        v = txt_v[i, :n][None].repeat(img_q.shape[0], 1, 1)
        wei_text = _l2(_func_attention(img_q, k, v, lam), 2)
        i2t.append(_cos(img_v, wei_text).mean(1, keepdim=True))
        wei_image = _l2(_func_attention(k, img_q, img_v, lam), 2)
        t2i.append(_cos(v, wei_image).mean(1, keepdim=True))
    return torch.cat(i2t, 1), torch.cat(t2i, 1)


def _toy(b_img=5, b_txt=6, p=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([4, 2, 3, 1, 4, 2])[:b_txt]
    mask = torch.arange(p)[None] < n[:, None]
    k = torch.randn(b_txt, p, d, generator=g) * mask[..., None]       # padded slots zero
    v = torch.randn(b_txt, p, d, generator=g) * mask[..., None]
    return (torch.randn(b_img, 7, d, generator=g), torch.randn(b_img, 7, d, generator=g),
            k, v, mask, n.tolist())


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_pairwise_scores_equal_the_official_loop(chunk):
    q, v, k, tv, mask, n = _toy()
    want_i2t, want_t2i = _wei_texts(q, v, k, tv, n, 20.0)
    i2t, t2i = pairwise(q, v, k, tv, mask, 20.0, chunk)
    torch.testing.assert_close(i2t, want_i2t)
    torch.testing.assert_close(t2i, want_t2i)


def test_pairwise_gradients_equal_the_official_loop():
    """The products form (no attended vectors) backpropagates as the official loop does:
    gradients of a weighted sum of both score matrices, at the images and the real phrases
    (in float64, so that a difference is the formula's, not rounding's)."""
    *feats, mask, n = _toy()
    q, v, k, tv = (t.double() for t in feats)
    w_i2t, w_t2i = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(5)).double()
    grads = []
    for scores in (lambda *x: pairwise(*x, mask, 20.0, 2), lambda *x: _wei_texts(*x, n, 20.0)):
        inputs = [t.clone().requires_grad_() for t in (q, v, k, tv)]
        i2t, t2i = scores(*inputs)
        grads.append(torch.autograd.grad((w_i2t * i2t).sum() + (w_t2i * t2i).sum(), inputs))
    for got, want in zip(*grads):
        keep = mask[..., None] if got.shape[:2] == mask.shape else True
        torch.testing.assert_close(got * keep, want * keep, rtol=1e-9, atol=1e-12)


def test_padded_phrases_change_nothing():
    """Masked slots whatever they hold: the scores equal the captions cut to their phrases."""
    q, v, k, tv, mask, _ = _toy()
    noisy_k = torch.where(mask[..., None], k, torch.randn_like(k))
    got = pairwise(q, v, noisy_k, tv, mask, 20.0, 3)[0]
    torch.testing.assert_close(got, pairwise(q, v, k, tv, mask, 20.0, 3)[0])


def test_cont_is_the_official_contrastive_loss():
    from tbps.heads.cmpm import cmpm_from_logits

    q, v, k, tv, mask, n = _toy(b_img=6)
    pid = torch.tensor([0, 1, 1, 2, 0, 3])
    i2t, t2i = _wei_texts(q, v, k, tv, n, 20.0)
    labels = (pid[:, None] == pid[None]).float()
    norm = labels / labels.norm(dim=1)
    want = 0.0
    for s in (i2t, t2i):  # the code: a row softmax over captions in both
        pred = torch.softmax(s * 20, 1)
        want = want + (pred * (torch.log_softmax(s * 20, 1) - torch.log(norm + 1e-8))).sum(1).mean()
    torch.testing.assert_close(cmpm_from_logits(20 * i2t, 20 * t2i, pid), want)


def _fused_reference(sims, local_dense, qp, gp, w, k):
    """Each query's order written out: its first k images in the stable global order,
    sorted by (-fused, index), then the rest by (-cosine, index); metrics from that order."""
    r1 = ap = 0.0
    for i in range(len(qp)):
        glob = sorted(range(len(gp)), key=lambda j: (-sims[i, j].item(), j))
        head = sorted(glob[:k], key=lambda j: (-(w * sims[i, j] + (1 - w) * local_dense[i, j]).item(), j))
        order = head + glob[k:]
        match = [gp[j].item() == qp[i].item() for j in order]
        r1 += match[0]
        hits = [n for n, m in enumerate(match, 1) if m]
        ap += sum((h + 1) / rank for h, rank in enumerate(hits)) / len(hits)
    return 100 * r1 / len(qp), 100 * ap / len(qp)


def test_fusion_over_the_whole_gallery_equals_the_dense_fusion():
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randn(30, 16, generator=g), torch.randn(40, 16, generator=g)
    qp, gp = torch.randint(0, 8, (30,), generator=g), torch.randint(0, 8, (40,), generator=g)
    local_dense = torch.rand(30, 40, generator=g) * 2 - 1
    rescore = lambda extra, gallery, cand: local_dense[extra["row"]].gather(1, cand)  # noqa: E731
    rows = {"row": torch.arange(30)}
    sims = F.normalize(q, dim=-1) @ F.normalize(gal, dim=-1).t()
    plain, fused = fused_metrics(q, qp, gal, gp, rescore, rows, {}, [1.0, 0.9, 0.5, 0.0],
                                 top_k=40, chunk=7)
    assert plain == ranked_metrics(lambda s, e: sims[s:e], qp, gp)
    for w in (1.0, 0.9, 0.5, 0.0):
        dense = ranked_metrics(lambda s, e: w * sims[s:e] + (1 - w) * local_dense[s:e], qp, gp)
        assert fused[w] == dense


def test_fusion_of_the_top_k_against_the_written_out_order_with_ties():
    """Ties everywhere (scores on a coarse grid): at the k-th global score, among the fused
    scores, and between candidates and the rest."""
    g = torch.Generator().manual_seed(3)
    n_q, n_g = 25, 30
    sims = (torch.randint(-4, 5, (n_q, n_g), generator=g) / 4).float()
    local_dense = (torch.randint(-2, 3, (n_q, n_g), generator=g) / 2).float()
    qp, gp = torch.randint(0, 5, (n_q,), generator=g), torch.randint(0, 5, (n_g,), generator=g)
    gp[:5] = torch.arange(5)  # every query has a match
    sims[:, 0] = 1.0  # no zero row
    # queries = the rows of the grid, gallery = one-hot: the cosines are each row of the grid
    # scaled by one factor, so its ties stay ties; every product is exact
    q, gal = sims, torch.eye(n_g)
    sims = F.normalize(q, dim=-1) @ gal.t()
    rescore = lambda extra, gallery, cand: local_dense[extra["row"]].gather(1, cand)  # noqa: E731
    rows = {"row": torch.arange(n_q)}
    for k in (1, 4, 7, 30):
        for w in (0.5, 0.0):
            _, fused = fused_metrics(q, qp, gal, gp, rescore, rows, {}, [w], top_k=k, chunk=6)
            r1, ap = _fused_reference(sims, local_dense, qp, gp, w, k)
            assert fused[w]["R1"] == pytest.approx(r1)
            assert fused[w]["mAP"] == pytest.approx(ap)


def test_stable_topk_is_the_head_of_the_stable_order():
    from tbps.metrics.retrieval import stable_topk
    g = torch.Generator().manual_seed(4)
    sims = (torch.randint(0, 4, (50, 20), generator=g)).float()
    for k in (1, 3, 10, 20):
        values, idx = stable_topk(sims, k)
        want = sims.argsort(dim=1, descending=True, stable=True)[:, :k]
        assert torch.equal(idx.sort(1).values, want.sort(1).values)
        assert torch.equal(values, sims.gather(1, idx))


def test_span_pooling_and_phrase_sequences_match_loops():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 9, 4, generator=g)
    phrases = torch.tensor([[0, 1, 1, 0, 2, 2, 2, 3, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0]])
    pooled, mask = span_pool(tokens, phrases, num_phrases=2)   # phrase 3 is beyond the cap
    assert mask.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(pooled[0, 1], tokens[0, 4:7].mean(0))
    torch.testing.assert_close(pooled[1, 0], tokens[1, 1])
    assert (pooled[1, 1] == 0).all()
    ids = torch.tensor([[1, 10, 11, 12, 13, 14, 15, 16, 2], [1, 20, 2, 0, 0, 0, 0, 0, 0]])
    seq = phrase_token_ids(ids, phrases, num_phrases=2, length=5, sos_id=1, eos_id=2, pad_id=0)
    assert seq.tolist() == [[1, 10, 11, 2, 0], [1, 13, 14, 15, 2],   # cut to 5: fits
                            [1, 20, 2, 0, 0], [1, 2, 0, 0, 0]]       # an empty slot
    short = phrase_token_ids(ids, phrases, num_phrases=2, length=4, sos_id=1, eos_id=2, pad_id=0)
    assert short[1].tolist() == [1, 13, 14, 2]                       # cut to the length


def test_stripes_and_halves_are_row_means():
    tokens = torch.arange(1 + 8 * 2, dtype=torch.float32)[None, :, None].repeat(1, 1, 3)
    stripes, halves = stripe_tokens(tokens, (8, 2))
    rows = tokens[0, 1:, 0].reshape(8, 2).mean(1)
    assert stripes[0, :, 0].tolist() == [rows[i:i + 2].mean().item() for i in (0, 2, 4, 6)]
    assert halves[0, :, 0].tolist() == [rows[:4].mean().item(), rows[4:].mean().item()]


@pytest.mark.parametrize("part_mode,rows,kept", [
    ("stripes", 24, 5), ("stripes", 12, 5), ("stripes", 7, 5), ("stripes", 5, 5),
    ("stripes", 6, 7), ("stripes", 10, 7), ("channel_split", 6, 6)])
def test_the_kept_scale_tokens_give_all_seven(part_mode, rows, kept):
    """Evaluation keeps the tokens that span the 7 (a half is a weighted mean of its two
    stripes only where the rows split so; the channel split's first token is the mean of
    the rest): the mixing matrix gives the 7 back."""
    from tbps.heads.acsa import ACSAHead
    from tbps.heads.base import HeadContext

    head = ACSAHead(HeadContext(8, 2, 10, 4, 0, (0,), image_grid=(rows, 3)),
                    part_mode=part_mode).eval()
    tokens = torch.randn(4, 1 + rows * 3, 8)
    x = head.kept_image(tokens)["x"]
    assert x.shape[1] == kept
    torch.testing.assert_close(head.scale_mix @ x, head.image_scales(tokens))


def test_phrase_annotation_of_real_style_captions():
    from tbps.data.annotations import phrase_index
    from tbps.data.tokenizer import CaptionTokenizer

    caps = ["A man in a grey jacket, black trousers and brown shoes carries a black backpack.",
            "Someone walks down the street."]
    tok = CaptionTokenizer.clip(context_length=77)
    made = phrase_index(tok, caps)
    ids = tok.encode(caps)
    found = [tok.decode(ids[0][made.tensor[0] == p].tolist()).strip()
             for p in range(1, int(made.tensor[0].max()) + 1)]
    assert found == ["a grey jacket", "black trousers", "brown shoes", "a black backpack"]
    assert made.empty == 1 and made.tensor[1].max() == 1     # the fallback: one phrase, counted


@pytest.fixture
def _experiments(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("TBPS_EXPERIMENTS", str(Path(__file__).parent.parent / "experiments"))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)


@pytest.mark.usefixtures("_experiments")
@pytest.mark.parametrize("extra", [[], ["heads.acsa.phrase_mode=separate",
                                        "heads.acsa.part_mode=channel_split",
                                        "heads.acsa.top_k=3"]])
def test_acsa_synthetic_trains_and_reports_fused_and_global(tiny_synth, tmp_path, extra):
    from conftest import tiny_overrides

    from tbps.cli import main
    from tbps.model.checkpoint import load_checkpoint

    args = [a for a in tiny_overrides(tiny_synth, tmp_path) if not a.startswith("heads.mlm")]
    assert main(["train", "experiment=acsa_synthetic", *args, "trainer.max_epochs=1", *extra]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    grid = [1.0, 0.95, 0.92, 0.9, 0.88, 0.85, 0.82]
    assert m["val/fusion_weight"] in grid and m["test/fusion_weight"] == m["val/fusion_weight"]
    for key in ("R1", "mAP", "mINP"):
        assert 0 <= m[f"test/{key}"] <= 100 and 0 <= m[f"test/global/{key}"] <= 100
    # the weight travels with the checkpoint; the global metrics are the plain ranking's
    module = load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    assert module.fusion_weight == m["val/fusion_weight"]
    assert not any(k.startswith("_rescorer") for k in module.state_dict())
    # the fusion table: at w = 1 the fused ranking is the global one, at the chosen w the run's
    from tbps.analysis.fusion import fusion_table

    table = fusion_table(str(tmp_path / "checkpoints" / "best.ckpt"))
    assert table["test"]["w=1"]["R1"] == round(m["test/global/R1"], 2)
    assert table["test"][f"w={m['test/fusion_weight']:g}"]["R1"] == round(m["test/R1"], 2)
    if extra:
        return
    # the attention notebook draws each phrase's attention over the 7 image tokens
    from pathlib import Path

    from tbps.analysis.notebooks import run_notebook

    figures = tmp_path / "figures"
    figures.mkdir()
    nb = run_notebook(Path(__file__).parent.parent / "notebooks" / "attention.ipynb",
                      {"TBPS_CKPT": str(tmp_path / "checkpoints" / "best.ckpt"),
                       "TBPS_FIGURES": str(figures)}, cwd=tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    assert (figures / "attention_acsa_phrases.png").is_file()
    assert not (figures / "attention_masked_words.png").exists()  # no MLM head: said, skipped


@pytest.mark.parametrize("part_mode", ["stripes", "channel_split"])
def test_candidate_scores_equal_the_pairwise_scores(part_mode):
    """What evaluation keeps (the projections folded into the caption side) gives the
    training-time i2t scores of each caption's candidates."""
    from tbps.heads.acsa import ACSAHead, candidate_i2t_scores
    from tbps.heads.base import HeadContext

    torch.manual_seed(0)
    d, p = 16, 4
    head = ACSAHead(HeadContext(d, 2, 10, 4, 0, (0,), image_grid=(4, 2)), num_phrases=p,
                    part_mode=part_mode).eval()
    _, _, k, tv, mask, _ = _toy(b_img=9, d=d)
    tokens = torch.randn(9, 1 + 8, d)
    q, v = head.image_side(tokens)
    dense = pairwise(q, v, k, tv, mask, 20.0, 4)[0].t()                    # [captions, images]
    cand = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(i))[:5]
                        for i in range(6)])
    kept_image = head.kept_image(tokens)
    assert kept_image["x"].shape[1] == (5 if part_mode == "stripes" else 6)
    kept_caption = head.kept_caption(k, tv, mask)
    got = candidate_i2t_scores(kept_image, kept_caption, cand, 20.0, head.scale_mix)
    torch.testing.assert_close(got, dense.gather(1, cand), rtol=1e-5, atol=1e-6)
    # gathered one caption at a time: the same scores
    small = candidate_i2t_scores(kept_image, kept_caption, cand, 20.0, head.scale_mix,
                                 gather_floats=5 * kept_image["x"][0].numel() * 2 - 1)
    torch.testing.assert_close(small, got)


def _acsa_rank(rank, world, port, folder):
    import torch.distributed as dist

    from tbps.heads.acsa import ACSAHead
    from tbps.heads.base import HeadContext
    from tbps.types import EncoderOutput

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.save(_acsa_loss(ACSAHead, HeadContext, EncoderOutput, slice(rank * 4, rank * 4 + 4)),
               f"{folder}/rank{rank}.pt")
    dist.barrier()
    spawned.leave()


def _acsa_loss(ACSAHead, HeadContext, EncoderOutput, part):
    torch.manual_seed(0)
    head = ACSAHead(HeadContext(16, 4, 50, 4, 0, (0, 1, 2, 3, 4), image_grid=(4, 2)),
                    num_phrases=3, chunk=3)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(8, 9, 16, generator=g).requires_grad_()
    txt = torch.randn(8, 6, 16, generator=g).requires_grad_()
    phrases = torch.tensor([[0, 1, 1, 2, 0, 0]] * 4 + [[0, 1, 2, 2, 3, 0]] * 4)
    enc = EncoderOutput(img[part], txt[part], None, None, None, {})
    loss = head(enc, {"phrases": phrases[part], "pid": torch.tensor([0, 1, 1, 2, 3, 3, 0, 2])[part]})
    loss["loss_cont"].backward()
    return loss["loss_cont"].detach(), img.grad[part], txt.grad[part]


def test_cont_over_two_processes_equals_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from tbps.heads.acsa import ACSAHead
    from tbps.heads.base import HeadContext
    from tbps.types import EncoderOutput

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_acsa_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    loss, g_img, g_txt = _acsa_loss(ACSAHead, HeadContext, EncoderOutput, slice(0, 8))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for got in ranks:
        torch.testing.assert_close(got[0], loss)
    torch.testing.assert_close(torch.cat([ranks[0][1], ranks[1][1]]) / 2, g_img)
    torch.testing.assert_close(torch.cat([ranks[0][2], ranks[1][2]]) / 2, g_txt)


def test_rescore_keeps_only_real_phrases_and_equals_the_padded_scores():
    """Captions grouped by their number of phrases and cut to the real ones (padding at the
    end or anywhere) score their candidates as the padded computation does."""
    from tbps.heads.acsa import ACSAHead, candidate_i2t_scores
    from tbps.heads.base import HeadContext

    torch.manual_seed(0)
    d, p, g, c, k = 16, 5, 11, 9, 4
    head = ACSAHead(HeadContext(d, 2, 10, 4, 0, (0,), image_grid=(4, 2)), num_phrases=p).eval()
    mask = torch.rand(c, p) < 0.6
    mask[:, 0] |= ~mask.any(1)            # at least one phrase, as the data module makes
    mask[0], mask[1] = True, False        # a full caption, and one with a single phrase
    mask[1, 3] = True
    keep = mask[..., None].float()
    kept_q = head.kept_caption(torch.randn(c, p, d) * keep, torch.randn(c, p, d) * keep, mask)
    kept_g = head.kept_image(torch.randn(g, 1 + 8, d))
    cand = torch.stack([torch.randperm(g)[:k] for _ in range(c)])
    got = head.rescore(kept_q, kept_g, cand)
    ref = candidate_i2t_scores(kept_g, kept_q, cand, head.lam, head.scale_mix)
    assert len(mask.sum(1).unique()) >= 3
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    head.slab_values = 2 * k * 7 * 2 * p     # slabs of a few captions, gathered one by one
    head.gather_floats = 1
    torch.testing.assert_close(head.rescore(kept_q, kept_g, cand), got)
    # a GPU's blocks are larger, the scores the same
    assert head.block_sizes(torch.device("cuda")) == (
        head.slab_values * head.accelerator_block_scale,
        head.gather_floats * head.accelerator_block_scale)
    assert head.block_sizes(torch.device("cpu")) == (head.slab_values, head.gather_floats)
    head.slab_values, head.gather_floats = 2**30, 2**30   # every caption of a count at once
    torch.testing.assert_close(head.rescore(kept_q, kept_g, cand), got)


def test_rescoring_inputs_are_float32_under_autocast():
    """Evaluation may run in bf16 autocast; what the head keeps stays float32, so that the
    re-scoring's products never mix precisions."""
    from tbps.heads.acsa import ACSAHead
    from tbps.heads.base import HeadContext

    head = ACSAHead(HeadContext(16, 2, 10, 4, 0, (0,), image_grid=(4, 2)), num_phrases=3).eval()
    phrases = torch.tensor([[0, 1, 1, 2, 0, 0], [0, 1, 2, 2, 3, 0]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        kept_g = head.rescoring_inputs("image", torch.randn(5, 1 + 8, 16).bfloat16(), {}, None)
        kept_q = head.rescoring_inputs("text", torch.randn(2, 6, 16).bfloat16(),
                                       {"phrases": phrases}, None)
    for kept in (kept_g, kept_q):
        assert all(t.dtype in (torch.float32, torch.bool) for t in kept.values())
    scores = head.rescore(kept_q, kept_g, torch.tensor([[0, 3], [4, 1]]))
    assert scores.shape == (2, 2) and scores.isfinite().all()
