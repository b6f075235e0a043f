import math

import pytest
from torch import nn

from tbps.model.optim import param_groups, warmup_cosine


def test_param_groups_follow_irra():
    model = nn.ModuleDict({"encoder": nn.Linear(4, 4), "heads": nn.ModuleDict({"id": nn.Linear(4, 2)})})
    groups = param_groups(model, lr=1e-5, weight_decay=4e-5, new_prefixes=("heads.",),
                          new_lr_factor=5.0, bias_lr_factor=2.0)
    by_lr = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert by_lr == {(1e-5, 4e-5): 16, (2e-5, 0.0): 4, (5e-5, 4e-5): 8, (1e-4, 0.0): 2}


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=100, warmup_steps=10, warmup_factor=0.1, min_factor=0.0)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))
