"""IRRA's optimisation: parameter groups with learning-rate multipliers, warm-up then cosine."""

from __future__ import annotations

import math

from torch import nn


def param_groups(module: nn.Module, lr: float, weight_decay: float, new_prefixes: tuple[str, ...],
                 new_lr_factor: float, bias_lr_factor: float) -> list[dict]:
    """One group per (new module?, bias?) combination, as IRRA's solver builds them.

    Parameters whose name starts with one of ``new_prefixes`` (the heads, randomly
    initialised) get ``new_lr_factor`` x lr; biases get ``bias_lr_factor`` x lr and no decay.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            key = (name.startswith(new_prefixes), name.endswith("bias"))
            groups.setdefault(key, []).append(p)
    out = []
    for (new, bias), params in sorted(groups.items()):
        factor = (new_lr_factor if new else 1.0) * (bias_lr_factor if bias else 1.0)
        out.append({"params": params, "lr": lr * factor, "weight_decay": 0.0 if bias else weight_decay})
    return out


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
