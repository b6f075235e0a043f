"""``sigma_detached``: σ's layers read the features without passing gradient back, so what
trains σ trains those layers and never the encoder, while the means keep their gradient.
Checked by autograd on both Gaussian embeddings (the global feature and the token-pooled
variance), through UCFA's shared distributions and CRUE's UGM as the configs build them."""

from __future__ import annotations

import pytest
import torch

from tbps.components.distributions import ModalityDistributions
from tbps.components.gaussian import GaussianEmbedding
from tbps.types import EncoderOutput
from conftest import tiny_module


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 8, generator=g, requires_grad=True)
    tokens = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    return x, tokens


@pytest.mark.parametrize("variance_from", ["global", "tokens"])
@pytest.mark.parametrize("detached", [False, True])
def test_what_trains_sigma_reaches_the_features_only_when_not_detached(variance_from, detached):
    x, tokens = _inputs()
    emb = GaussianEmbedding(8, variance_from=variance_from, sigma_detached=detached)
    mean, logvar = emb(x, tokens if variance_from == "tokens" else None)
    logvar.sum().backward()
    # the σ layers learn either way
    assert emb.logvar.weight.grad.abs().sum() > 0
    if variance_from == "tokens":
        assert emb.pool.query.grad is not None
    reached = x.grad is not None and x.grad.abs().sum() > 0
    assert reached != detached
    if variance_from == "tokens":
        assert (tokens.grad is not None and tokens.grad.abs().sum() > 0) != detached


def test_detaching_changes_no_value_and_leaves_the_means_gradient():
    x, tokens = _inputs(1)
    plain = GaussianEmbedding(8, variance_from="tokens")
    detached = GaussianEmbedding(8, variance_from="tokens", sigma_detached=True)
    detached.load_state_dict(plain.state_dict())
    for a, b in zip(plain(x, tokens), detached(x, tokens)):
        torch.testing.assert_close(a, b)
    mean, _ = detached(x, tokens)
    mean.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_ucfa_distributions_pass_the_switch_to_both_modalities():
    x, tokens = _inputs(2)
    dist = ModalityDistributions(8, "tokens", sigma_detached=True)
    enc = EncoderOutput(image_tokens=tokens, text_tokens=tokens, image_global=x, text_global=x,
                        text_mask=torch.ones(3, 5, dtype=torch.bool))
    d = dist(enc)
    (d.image_logvar.sum() + d.text_logvar.sum()).backward()
    assert x.grad is None and tokens.grad is None
    assert dist.image.logvar.weight.grad is not None and dist.text.logvar.weight.grad is not None


@pytest.mark.parametrize("experiment,override,embeddings", [
    ("ucfa_synthetic", "distributions.sigma_detached=true",
     lambda m: (m.distributions.image, m.distributions.text)),
    ("crue_synthetic", "heads.ugm.sigma_detached=true",
     lambda m: (m.heads["ugm"].image_gauss, m.heads["ugm"].text_gauss)),
])
def test_the_configs_switch_it_on(tiny_synth, tmp_path, experiment, override, embeddings):
    on, _ = tiny_module(tiny_synth, tmp_path / "on", experiment, override)
    off, _ = tiny_module(tiny_synth, tmp_path / "off", experiment)
    assert all(e.sigma_detached for e in embeddings(on))
    assert not any(e.sigma_detached for e in embeddings(off))


def test_a_hidden_layer_before_log_sigma_starts_where_the_linear_one_does():
    """``sigma_hidden`` (PFE's uncertainty module has two layers): log σ² from a hidden layer,
    starting near ``init_logvar`` as the linear head does, and learning in both layers."""
    x, _ = _inputs(3)
    emb = GaussianEmbedding(8, init_logvar=-4.0, sigma_hidden=16, sigma_detached=True)
    assert emb.logvar.in_features == 16 and isinstance(emb.hidden[0], torch.nn.Linear)
    _, logvar = emb(x)
    assert logvar.shape == (3, 8) and (logvar + 4.0).abs().max() < 0.5
    logvar.sum().backward()
    assert emb.hidden[0].weight.grad.abs().sum() > 0 and x.grad is None
    # 0 keeps the linear head and its checkpoint keys
    assert set(GaussianEmbedding(8).state_dict()) == {"logvar.weight", "logvar.bias"}


def test_global_and_tokens_reads_both_side_by_side_with_their_own_weights():
    """``variance_from: global_and_tokens``: log σ² = W [x; pool(tokens)], against that
    formula by hand, where ``tokens`` adds the two under one W; both parts learn."""
    x, tokens = _inputs(4)
    emb = GaussianEmbedding(8, variance_from="global_and_tokens")
    with torch.no_grad():  # a weight on both halves, so that each half's part shows
        emb.logvar.weight.normal_(std=0.3)
    _, logvar = emb(x, tokens)
    pooled = emb.pool(tokens, None)
    expected = torch.cat([x, pooled], -1) @ emb.logvar.weight.t() + emb.logvar.bias
    torch.testing.assert_close(logvar, expected.clamp(*emb.logvar_range))
    # the token half has weights of its own: the global half alone gives another answer
    alone = x @ emb.logvar.weight[:, :8].t() + emb.logvar.bias
    assert (logvar - alone).abs().max() > 1e-3
    logvar.sum().backward()
    assert emb.pool.query.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pass tokens"):
        emb(x)


def test_inference_reads_the_side_by_side_variance_training_read():
    """What ranking and ``tbps uncertainty`` read (``distribution``) is the Gaussian the heads
    trained on, for both modalities (the image's class token left out of its pool)."""
    from tbps.types import RetrievalInput

    x, tokens = _inputs(5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    dist = ModalityDistributions(8, "global_and_tokens")
    with torch.no_grad():
        d = dist(EncoderOutput(image_tokens=tokens, text_tokens=tokens, image_global=x,
                               text_global=x, text_mask=mask))
        text = dist.distribution("text", RetrievalInput(tokens, x, None, None, mask))
        image = dist.distribution("image", RetrievalInput(tokens, x, None))
    torch.testing.assert_close(text.logvar, d.text_logvar)
    torch.testing.assert_close(image.logvar, d.image_logvar)
    assert not torch.allclose(d.text_logvar, d.image_logvar)  # each modality its own layers
