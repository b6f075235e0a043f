"""`encoder.grad_checkpointing`: the same losses and gradients, with far fewer activations
kept for the backward pass (the memory it is for), in both towers and the MLM's second
text pass, and in RDE's pass that reads the last layers' attention rows."""

import pytest
import torch

from tbps.bench.profile import kept_for_backward
from tbps.bench.train_step import TINY_CPU, build_module, synthetic_batch


def _module(experiment: str, checkpointing: bool, state=None):
    torch.manual_seed(0)
    module = build_module([*TINY_CPU, "encoder.vision.depth=3", "encoder.text.num_hidden_layers=2",
                           f"encoder.grad_checkpointing={str(checkpointing).lower()}"],
                          20, torch.device("cpu"), experiment)
    if state is not None:
        module.load_state_dict(state)
    return module


def _step(module, batch):
    """Loss, gradients and the bytes of activations kept for backward (tensors saved
    outside checkpointed blocks, parameters aside; inside a block checkpointing's own hooks
    take the saved tensors, which is the point)."""
    torch.manual_seed(1)   # the MLM's masking and share draw the same
    with kept_for_backward(module) as kept:
        loss = module.compute_losses(dict(batch), progress=1.0)[0]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(kept.values())


@pytest.mark.parametrize("experiment", ["synthetic", "rde_synthetic"])
def test_same_gradients_fewer_kept_activations(experiment):
    plain = _module(experiment, False)
    ckpt = _module(experiment, True, plain.state_dict())
    assert ckpt.encoder.vision.grad_checkpointing and not plain.encoder.vision.grad_checkpointing
    assert _text_checkpointing(ckpt) and not _text_checkpointing(plain)
    batch = synthetic_batch(6, (96, 32), plain.tokenizer, 20, torch.device("cpu"),
                            torch.Generator().manual_seed(0), plain.caption_annotations)
    loss_a, grads_a, kept_a = _step(plain, batch)
    loss_b, grads_b, kept_b = _step(ckpt, batch)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 40
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-5, atol=1e-6, msg=name)
    print(f"activations kept for backward: {kept_a / 2**20:.1f} MiB plain, "
          f"{kept_b / 2**20:.1f} MiB checkpointed")
    assert kept_b < 0.45 * kept_a   # both towers: without the vision side, RDE keeps 0.57
    # and off again: the plain step's activations
    ckpt.encoder.set_grad_checkpointing(False)
    assert not ckpt.encoder.vision.grad_checkpointing and not _text_checkpointing(ckpt)
    ckpt.zero_grad(set_to_none=True)
    # (to a few bytes: a small storage can reuse a freed one's address, so the count by
    # address is not exact from run to run)
    assert abs(_step(ckpt, batch)[2] - kept_a) < 0.01 * kept_a


def _text_checkpointing(module) -> bool:
    text = module.encoder.text   # transformers >= 5.24 names it activation checkpointing
    flag = getattr(type(text), "is_activation_checkpointing", None)
    return bool(text.is_activation_checkpointing if flag is not None
                else text.is_gradient_checkpointing)
