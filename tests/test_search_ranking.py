"""Search ranks as the evaluation ranks: the same top 10 for every test caption of a
SynthPedes split laid out as a folder, for IRRA's heads (global cosine), for ACSA
(re-scored candidates fused at the weight chosen on validation) and for RDE (the mean of
its BGE and TSE cosines, one embedding made from tokens and attention rows), and for UCFA,
whose every hit also carries P(match), equal to the module's own for that pair."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tbps.metrics import TextToImageRetrieval
from tbps.model.checkpoint import load_checkpoint
from tbps.search import search
from tbps.train import build_data


@pytest.fixture(scope="module")
def acsa_run(tiny_synth, tmp_path_factory):
    from pathlib import Path

    from conftest import tiny_overrides

    from tbps.cli import main

    run = tmp_path_factory.mktemp("acsa_run")
    import os

    os.environ["TBPS_EXPERIMENTS"] = str(Path(__file__).resolve().parent.parent / "experiments")
    args = [a for a in tiny_overrides(tiny_synth, run) if not a.startswith("heads.mlm")]
    # 5 candidates re-scored: the top 10 holds fused candidates and globally ranked rest
    assert main(["train", "experiment=acsa_synthetic", *args, "trainer.max_epochs=1",
                 "heads.acsa.top_k=5"]) == 0
    return run


def evaluation_top10(module, root):
    """Each test caption's first 10 gallery images in the evaluation's ranking, written
    out from the evaluation's own parts: the features and kept extras its test step
    accumulates, then the global cosine, or the first k re-scored and fused (ties: lower
    gallery index), ahead of the rest in global order."""
    data = dict(module.cfg["data"], num_workers=0, pin_memory=False, root=str(root))
    dm = build_data(OmegaConf.create({"data": data}))
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    rescorer = module._rescorer
    metric = TextToImageRetrieval(extra_keys=rescorer.rescoring_keys if rescorer else None)
    with torch.inference_mode():
        for idx, loader in enumerate(dm._eval_loaders("test")):
            for batch in loader:
                module._eval_step(metric, batch, idx)
    g = F.normalize(torch.cat(metric.gallery_feats), dim=-1)
    q = F.normalize(torch.cat(metric.query_feats), dim=-1)
    sims = q @ g.t()
    order = sims.argsort(dim=1, descending=True, stable=True)
    if rescorer is not None:
        k = min(rescorer.top_k, len(g))
        cand = order[:, :k]
        extra = {s: {n: torch.cat(getattr(metric, f"{s}_extra_{n}")) for n in keys}
                 for s, keys in rescorer.rescoring_keys.items()}
        local = rescorer.rescore(extra["query"], extra["gallery"], cand)
        w = module.fusion_weight
        fused = w * sims.gather(1, cand) + (1 - w) * local
        head = cand.gather(1, fused.argsort(dim=1, descending=True, stable=True))
        fused_order = torch.cat([head, order[:, k:]], 1)
        # the re-scoring moves something, or this comparison would not test it
        assert (fused_order[:, :10] != order[:, :10]).any()
        order = fused_order
    return dm.records["test"], order[:, :10]


def lay_out(records, folder):
    """The test images as a folder, named so that the index's order is the gallery's."""
    folder.mkdir()
    for i, p in enumerate(records.image_paths):
        shutil.copy(p, folder / f"{i:04d}_{p.name}")
    return {f"{i:04d}_{p.name}": i for i, p in enumerate(records.image_paths)}


@pytest.mark.parametrize("which", ["irra", "acsa", "rde", "ucfa"])
def test_search_gives_the_evaluations_top10(which, tiny_run, tiny_synth, tmp_path, request):
    run = tiny_run if which == "irra" else request.getfixturevalue(f"{which}_run")
    ckpt = run / "checkpoints" / "best.ckpt"
    module = load_checkpoint(ckpt).eval()
    assert (module.candidates_to_rescore > 0) == (which == "acsa")
    records, top10 = evaluation_top10(module, tiny_synth)
    position = lay_out(records, tmp_path / "test_split")
    res = search(ckpt, tmp_path / "test_split", records.captions, topk=10,
                 index_dir=tmp_path / "index", device="cpu", workers=0)
    assert res["indexed"] == len(records.image_paths)
    found = torch.tensor([[position[h["path"].rsplit("/", 1)[1]] for h in q["results"]]
                          for q in res["queries"]])
    same = (found == top10).all(1)
    print(f"\n{which}: {int(same.sum())} of {len(same)} test captions with the same top 10")
    assert same.all(), f"captions {(~same).nonzero().squeeze(1).tolist()[:5]} rank differently"
    has = ["match_probability" in h for q in res["queries"] for h in q["results"]]
    assert all(has) if which == "ucfa" else not any(has)
    if which == "ucfa":  # P(match) of every hit, against the module's on the split's loader
        data = dict(module.cfg["data"], num_workers=0, pin_memory=False, root=str(tiny_synth))
        dm = build_data(OmegaConf.create({"data": data}))
        dm.set_tokenizer(module.tokenizer)
        images = torch.cat([b["image"] for b in dm._eval_loaders("test")[0]])
        prob = module.uncertainty(images, dm._caption_ids["test"]).match_probability
        got = torch.tensor([[h["match_probability"] for h in q["results"]] for q in res["queries"]])
        assert torch.allclose(got, prob.gather(1, found).float(), atol=2e-4)
