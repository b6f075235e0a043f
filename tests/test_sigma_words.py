"""``distributions.variance_from: words / global_and_words``: a caption's σ reads the mean of its
input word embeddings (the text tower's table, before any layer mixes them), alone or beside
the global feature; an image's σ reads its global feature. Checked against the formula by
hand, on the encoder's words themselves, and through a ``ucfa_synthetic`` module as the config
builds it: training and inference read the same σ, and what trains σ reaches the word table."""

from __future__ import annotations

import pytest
import torch

from tbps.components.gaussian import GaussianEmbedding
from conftest import step_distributions, tiny_module


def _words(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 8, generator=g, requires_grad=True)
    words = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return x, words, mask


def _mean_of_real_words(words, mask):
    """One caption at a time: the plain mean of the rows before its padding."""
    return torch.stack([words[b, :int(mask[b].sum())].mean(0) for b in range(len(words))])


@pytest.mark.parametrize("variance_from", ["words", "global_and_words"])
def test_sigma_reads_the_mean_of_the_real_words(variance_from):
    x, words, mask = _words()
    emb = GaussianEmbedding(8, variance_from=variance_from)
    with torch.no_grad():  # weights that show each part
        emb.logvar.weight.normal_(std=0.3)
    mean, logvar = emb(x, words, mask)
    bag = _mean_of_real_words(words, mask)
    read = torch.cat([x, bag], -1) if variance_from == "global_and_words" else bag
    expected = read @ emb.logvar.weight.t() + emb.logvar.bias
    torch.testing.assert_close(logvar, expected.clamp(*emb.logvar_range))
    torch.testing.assert_close(mean, x)  # the mean is still the feature
    # the padding is not read: changing it changes nothing
    padded = words.detach().clone()
    padded[~mask] = 100.0
    torch.testing.assert_close(emb(x, padded, mask)[1], logvar)
    logvar.sum().backward()
    assert words.grad.abs().sum() > 0
    assert (x.grad is not None and x.grad.abs().sum() > 0) == (variance_from != "words")
    with pytest.raises(ValueError, match="words: pass them and their mask"):
        emb(x, words)


def test_the_encoders_words_are_its_input_table_before_any_layer(tiny_synth, tmp_path):
    module, _ = tiny_module(tiny_synth, tmp_path, "ucfa_synthetic",
                            "distributions.variance_from=global_and_words")
    enc = module.encoder
    ids = module.tokenizer.encode(["a man in a red jacket", "a woman in a red jacket"])
    with torch.no_grad():
        words = enc.encode_text_words(ids)
        table = enc.text.get_input_embeddings().weight
        torch.testing.assert_close(words, table[ids] @ enc.text_proj.weight.t())
        # a word reads the same whatever came before it: the captions differ in "man" /
        # "woman", and "jacket", later, is the same vector in both (the causal tokens are not)
        first = int((ids[0] != ids[1]).nonzero()[0, 0])
        later = int(enc.text_mask(ids)[0].nonzero()[-1]) - 1  # the last word before EOT
        assert later > first and ids[0, later] == ids[1, later]
        torch.testing.assert_close(words[0, later], words[1, later])
        tokens = enc.encode_text_tokens(ids)
        assert (tokens[0, later] - tokens[1, later]).abs().max() > 1e-4


def test_training_and_inference_read_the_same_sigma_and_train_the_words(tiny_synth, tmp_path):
    module, dm = tiny_module(tiny_synth, tmp_path, "ucfa_synthetic",
                             "distributions.variance_from=global_and_words")
    dm.set_tokenizer(module.tokenizer, module.caption_annotations)
    assert module.distributions.reads_words and module.distributions.image.pool is None
    batch = next(iter(dm.train_dataloader()))
    module.eval()  # no dropout: the training path and the inference path see the same features
    torch.manual_seed(0)
    loss, _, d = step_distributions(module, dict(batch))
    with torch.no_grad():
        text = module.uncertainty(ids=batch["caption_ids"])
    torch.testing.assert_close(text.text_sigma, d.text_logvar.detach().mul(0.5).exp().mean(-1))
    # what trains σ reaches the word table through the mean of the words
    table = module.encoder.text.get_input_embeddings().weight
    grad = torch.autograd.grad(d.text_logvar.sum(), table, retain_graph=True)[0]
    assert grad[batch["caption_ids"].unique()].abs().sum() > 0
    loss.backward()
    assert module.distributions.text.logvar.weight.grad.abs().sum() > 0
