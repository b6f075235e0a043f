"""The head contract as the module uses it: pretrained weights reach every copy of the
encoder, retrieval embeddings go through a head's projection when one claims it, and a head
that trains nothing is refused at the first step."""

from pathlib import Path

import pytest
import torch
from conftest import tiny_module
from fake_benchmarks import write_rstpreid
from omegaconf import OmegaConf

from tbps.cli import main
from tbps.errors import ConfigError
from tbps.heads.base import AlignmentHead
from tbps.metrics.retrieval import retrieval_metrics

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _tiny_hf_clip(folder: Path) -> Path:
    """A small randomly initialised CLIP saved as a Hugging Face folder (a supported format);
    widths of 64 are CLIP's head width, so one head each."""
    from test_clip_loading import save_hf_clip

    torch.manual_seed(5)
    save_hf_clip(folder, text_width=64, vision_width=64, layers=1, text_heads=1,
                 vision_heads=1, projection=32)
    return folder


def _crue_rstp(tmp_path, monkeypatch, run, *extra):
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(EXPERIMENTS))
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("TBPS_RUN_DIR", raising=False)
    return main(["train", "experiment=crue_rstp", "trainer=cpu", "trainer.max_epochs=1",
                 "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0",
                 "data.pin_memory=false", "logger.wandb=false", "memory.size=16",
                 "memory.momentum=0.9", f"run_dir={run}", *extra])


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_momentum_encoder_starts_from_the_pretrained_weights_and_resumes_from_its_own(
        tmp_path, monkeypatch):
    clip = _tiny_hf_clip(tmp_path / "clip")
    write_rstpreid(tmp_path / "data")
    monkeypatch.setenv("CLIP_WEIGHTS", str(clip))
    run = tmp_path / "run"
    assert _crue_rstp(tmp_path, monkeypatch, run, "trainer.max_steps=1") == 0
    from tbps.model.encoder import DualEncoder

    pretrained = DualEncoder.from_pretrained(clip, image_size=(384, 128)).state_dict()
    first = _state(run / "checkpoints" / "last.ckpt")
    # The EMA update of step 1 runs before its optimizer step: θ_m = lerp(θ_m, θ_0) stays
    # θ_0 exactly if and only if the momentum copy started from the pretrained weights.
    for name, value in pretrained.items():
        assert torch.equal(first[f"momentum.encoder.{name}"], value), name
    assert not torch.equal(first["encoder.text_proj.weight"], pretrained["text_proj.weight"])

    # Resume for one more step: the momentum encoder continues from the checkpoint's copy
    # (one EMA step towards the online weights), not from a fresh copy of the online ones.
    assert _crue_rstp(tmp_path, monkeypatch, run, "trainer.max_steps=2",
                      f"resume={run}") == 0
    second = _state(run / "checkpoints" / "last.ckpt")
    key = "text_proj.weight"
    expect = torch.lerp(first[f"momentum.encoder.{key}"], first[f"encoder.{key}"], 1 - 0.9)
    torch.testing.assert_close(second[f"momentum.encoder.{key}"], expect)
    assert not torch.equal(second[f"momentum.encoder.{key}"], first[f"encoder.{key}"])


def _module_and_data(tiny_synth, tmp_path, *extra):
    return tiny_module(tiny_synth, tmp_path, "crue_synthetic", "memory.size=32", *extra)


@torch.no_grad()
def _test_metrics(module, dm, raw: bool = False):
    """The module's own evaluation path, and the features it ranked on."""
    gallery_loader, query_loader = dm._eval_loaders("test")
    for b in gallery_loader:
        module._eval_step(module.test_metric, b, 0)
    for b in query_loader:
        module._eval_step(module.test_metric, b, 1)
    metrics = module.test_metric.compute()
    module.test_metric.reset()
    g = torch.cat([module.encoder.encode_image(b["image"]) for b in gallery_loader])
    q = torch.cat([module.encoder.encode_text(b["caption_ids"]) for b in query_loader])
    gp = torch.cat([b["pid"] for b in gallery_loader])
    qp = torch.cat([b["pid"] for b in query_loader])
    return metrics, (q, qp, g, gp)


def test_learned_mean_is_what_ranking_uses(tiny_synth, tmp_path):
    module, dm = _module_and_data(tiny_synth, tmp_path, "heads.ugm.learned_mean=true")
    ugm = module.heads["ugm"]
    with torch.no_grad():  # the means differ from the features: the test can tell them apart
        ugm.image_gauss.mean.weight.normal_(0, 0.3)
        ugm.text_gauss.mean.weight.normal_(0, 0.3)
    metrics, (q, qp, g, gp) = _test_metrics(module, dm)
    with torch.no_grad():
        means = retrieval_metrics(ugm.text_gauss.mean(q), qp, ugm.image_gauss.mean(g), gp)
        ids = next(iter(dm._eval_loaders("test")[1]))["caption_ids"]
        torch.testing.assert_close(module.embed_texts(ids),
                                   ugm.text_gauss(module.encoder.encode_text(ids))[0])
    raw = retrieval_metrics(q, qp, g, gp)
    for k, v in means.items():
        assert metrics[k] == pytest.approx(v, abs=1e-6), k
    assert metrics["mAP"] != pytest.approx(raw["mAP"], abs=1e-6)


def test_default_ranks_on_the_encoder_features_bit_for_bit(tiny_synth, tmp_path):
    module, dm = _module_and_data(tiny_synth, tmp_path)
    metrics, (q, qp, g, gp) = _test_metrics(module, dm)
    images = next(iter(dm._eval_loaders("test")[0]))["image"]
    with torch.no_grad():
        assert torch.equal(module.embed_images(images), module.encoder.encode_image(images))
    assert metrics == {
        k: pytest.approx(v, abs=0) for k, v in retrieval_metrics(q, qp, g, gp).items()}


class _SilentHead(AlignmentHead):
    """Returns only a diagnostic: trains nothing."""

    def forward(self, encoded, batch):
        return {"norm": encoded.image_global.norm()}


def test_a_head_without_loss_is_refused_by_name(tiny_synth, tmp_path):
    module, dm = _module_and_data(tiny_synth, tmp_path)
    module.heads["quiet"] = _SilentHead(module.heads["id"].ctx)
    batch = next(iter(dm.train_dataloader()))
    with pytest.raises(ConfigError, match="head 'quiet' .*no 'loss_\\*' term"):
        module.compute_losses(batch)


def test_two_heads_claiming_one_embedding_are_refused(tiny_synth, tmp_path):
    module, _ = _module_and_data(tiny_synth, tmp_path, "heads.ugm.learned_mean=true")
    module.heads["ugm2"] = module.heads["ugm"]
    with pytest.raises(ConfigError, match="at most one head"):
        module._claimed_retrieval("text")


def test_every_packaged_head_follows_the_contract():
    """Each head config names an ``AlignmentHead`` whose declarations have the base types."""
    from hydra.utils import get_class

    from tbps.config import known_heads

    folder = Path(__file__).parent.parent / "src" / "tbps" / "conf" / "heads"
    for name in known_heads():
        cls = get_class(OmegaConf.load(folder / f"{name}.yaml")["_target_"])
        assert issubclass(cls, AlignmentHead), name
        assert isinstance(cls.needs_memory, bool), name
        assert isinstance(cls.needs_attention, bool), name
