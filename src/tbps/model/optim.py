"""IRRA's optimisation: parameter groups with learning-rate multipliers, warm-up then cosine.

Two rules give each parameter its learning rate and weight decay (``optim.param_rule``):

- ``by_module`` (``param_groups``): every parameter of a new module (the heads, the shared
  Gaussians) gets ``new_module_lr_factor`` × lr, every bias ``bias_lr_factor`` × that and no
  decay. Simple, and what the from-scratch recipes use.
- ``irra`` (``irra_param_groups``): IRRA's ``solver/build.py`` as it runs, decided by name
  in order: a parameter IRRA names with "cross" (its cross-attention and cross-modal
  transformer) gets ``lr_factor`` × lr; a bias then gets ``bias_lr_factor`` × lr instead,
  and no decay; a parameter IRRA names with "classifier" or "mlm_head" gets ``lr_factor``
  × lr, bias or not. Our parameter names are not IRRA's, so each head says which of IRRA's
  names its parameters answer to (``AlignmentHead.irra_role``).
- ``uniform``: every parameter at lr with the same decay, biases included: ACSA's code (one
  AdamW over all parameters) and its faithful recipe.

Under every rule a head may give a parameter a learning rate of its own
(``AlignmentHead.own_lr``: RDE's token selection at 1e-3); its weight decay stays the rule's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from torch import nn

IrraRole = Literal["plain", "cross", "classifier"]
OwnLr = Callable[[str], "float | None"] | None  # a parameter's own learning rate, if any


def param_groups(module: nn.Module, lr: float, weight_decay: float, new_prefixes: tuple[str, ...],
                 new_lr_factor: float, bias_lr_factor: float,
                 own_lr: OwnLr = None) -> list[dict]:
    """One group per learning rate and decay, as IRRA's solver builds them.

    Parameters whose name starts with one of ``new_prefixes`` (the heads, randomly
    initialised) get ``new_lr_factor`` x lr; biases get ``bias_lr_factor`` x lr and no decay;
    a parameter with a rate of its own (``own_lr(name)``) keeps it.
    """
    rates = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            new, bias = name.startswith(new_prefixes), name.endswith("bias")
            factor = (new_lr_factor if new else 1.0) * (bias_lr_factor if bias else 1.0)
            rates[name] = (lr * factor, 0.0 if bias else weight_decay)
    return _grouped(module, rates, own_lr)


def _grouped(module: nn.Module, rates: dict[str, tuple[float, float]], own_lr: OwnLr
             ) -> list[dict]:
    """Groups parameters by (lr, weight decay), after each one's own rate if it has one."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in module.named_parameters():
        if name not in rates:
            continue
        p_lr, decay = rates[name]
        mine = own_lr(name) if own_lr is not None else None
        groups.setdefault((p_lr if mine is None else mine, decay), []).append(p)
    return [{"params": params, "lr": g_lr, "weight_decay": decay}
            for (g_lr, decay), params in groups.items()]


def uniform_param_groups(module: nn.Module, lr: float, weight_decay: float,
                         own_lr: OwnLr = None) -> list[dict]:
    """Every trainable parameter at ``lr`` with ``weight_decay`` (or at its own rate)."""
    rates = {n: (lr, weight_decay) for n, p in module.named_parameters() if p.requires_grad}
    return _grouped(module, rates, own_lr)


def irra_param_groups(module: nn.Module, lr: float, weight_decay: float, lr_factor: float,
                      bias_lr_factor: float, role_of: Callable[[str], IrraRole],
                      own_lr: OwnLr = None) -> list[dict]:
    """IRRA's rule (see the module docstring); ``role_of(name)`` says which of IRRA's name
    tests the parameter ``name`` answers to: "cross", "classifier", or "plain" (neither).
    "bias" is IRRA's test too: the substring anywhere in our name (``in_proj_bias``). Last,
    as RDE's solver sets its token selection's rate, a parameter's own rate wins."""
    rates = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        role = role_of(name)
        p_lr, p_decay = lr, weight_decay
        if role == "cross":
            p_lr = lr * lr_factor
        if "bias" in name:
            p_lr, p_decay = lr * bias_lr_factor, 0.0
        if role == "classifier":
            p_lr = lr * lr_factor
        rates[name] = (p_lr, p_decay)
    return _grouped(module, rates, own_lr)


def warmup_cosine(total_steps: int, warmup_steps: int, warmup_factor: float = 0.1,
                  min_factor: float = 0.0):
    """LambdaLR factor: linear from ``warmup_factor`` to 1 over ``warmup_steps``, then a
    cosine from 1 to ``min_factor`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_factor + (1.0 - warmup_factor) * step / max(1, warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor
