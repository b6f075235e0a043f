"""``distributions.samples_train_sigma: false``: UCFA's sampling heads (PCL, UAMLR) draw with σ
as given, so what their samples cost moves the means and never σ, while the match still
trains σ. Checked by autograd, term by term, on one training step of ``ucfa_synthetic`` as the
config builds it, against the default where every sampling term reaches σ."""

from __future__ import annotations

import pytest
import torch

from conftest import step_distributions, tiny_module


def _step(tiny_synth, run_dir, trains: str):
    """The module and one training batch, with the attribute words UAMLR masks."""
    module, dm = tiny_module(tiny_synth, run_dir, "ucfa_synthetic",
                             f"distributions.samples_train_sigma={trains}")
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    module.train()
    torch.manual_seed(0)
    return module, next(iter(dm.train_dataloader()))


def _sigma_gradients(module, batch) -> dict[str, tuple[float, float]]:
    """Per loss term: (|∂term/∂ caption log σ²| + |∂term/∂ image log σ²|, |∂term/∂ means|)."""
    _, terms, d = step_distributions(module, batch)
    out = {}
    for name, term in terms.items():
        if not name.startswith("loss_") or not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, [d.text_logvar, d.image_logvar, d.text_mean,
                                           d.image_mean], retain_graph=True, allow_unused=True)
        size = [0.0 if g is None else float(g.abs().sum()) for g in grads]
        out[name] = (size[0] + size[1], size[2] + size[3])
    return out


@pytest.mark.parametrize("trains", [True, False])
def test_the_sampling_terms_reach_sigma_only_when_they_train_it(tiny_synth, tmp_path, trains):
    grads = _sigma_gradients(*_step(tiny_synth, tmp_path, str(trains).lower()))
    for name in ("loss_pcl_inter", "loss_pcl_intra", "loss_uamlr"):
        sigma, means = grads[name]
        assert means > 0, name  # the samples still train the means (UAMLR: the image's)
        assert (sigma > 0) == trains, (name, sigma)
    # the match trains σ either way (match_trains_sigma, the head's own switch)
    assert grads["loss_dcl"][0] > 0


def test_detached_draws_change_no_value(tiny_synth, tmp_path):
    """The switch moves gradients only: the same step, the same draws, the same losses."""
    module, batch = _step(tiny_synth, tmp_path, "true")
    losses = []
    for trains in (True, False):
        module.distributions.samples_train_sigma = trains
        torch.manual_seed(1)
        losses.append(module.compute_losses(dict(batch), progress=1.0)[1])
    assert losses[0]["loss_pcl_inter"] > 0
    for name, value in losses[0].items():
        if name.startswith("loss_"):
            torch.testing.assert_close(losses[1][name], value, msg=name)
