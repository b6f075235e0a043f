import math

import pytest
from torch import nn

from tbps.model.optim import irra_param_groups, param_groups, warmup_cosine


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


# Our parameter names -> IRRA's (anosorae/IRRA model/build.py): the correspondence the rule
# rests on, written out here independently of the heads' ``irra_role``.
IRRA_NAMES = {"encoder.": "base_model.", "heads.id.classifier.": "classifier.",
              "heads.mlm.cross_attn.": "cross_attn.",
              "heads.mlm.transformer.": "cross_modal_transformer.",
              "heads.mlm.ln_text.": "ln_pre_t.", "heads.mlm.ln_image.": "ln_pre_i.",
              "heads.mlm.ln_post.": "ln_post.", "heads.mlm.mlm_head.": "mlm_head."}


def _irra_solver(key: str, lr=1e-5, lr_factor=5.0, bias_lr_factor=2.0, weight_decay=4e-5,
                 weight_decay_bias=0.0) -> tuple[float, float]:
    """IRRA's solver/build.py loop body for one parameter, as it reads."""
    p_lr, decay = lr, weight_decay
    if "cross" in key:
        p_lr = lr * lr_factor
    if "bias" in key:
        p_lr, decay = lr * bias_lr_factor, weight_decay_bias
    if "classifier" in key or "mlm_head" in key:
        p_lr = lr * lr_factor
    return p_lr, decay


def test_irra_rule_gives_every_parameter_irras_learning_rate_and_decay(tiny_synth, tmp_path):
    from conftest import tiny_module

    module, _ = tiny_module(tiny_synth, tmp_path, "synthetic", "optim.param_rule=irra",
                        "optim.lr=1e-5", "optim.weight_decay=4e-5",
                        "optim.new_module_lr_factor=5.0", "optim.bias_lr_factor=2.0")
    assert set(module.heads) == {"sdm", "id", "mlm"}
    groups = irra_param_groups(module, 1e-5, 4e-5, 5.0, 2.0, module.irra_role)
    ours = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    seen = set()
    for name, p in module.named_parameters():
        prefix = next(k for k in IRRA_NAMES if name.startswith(k))
        irra_name = IRRA_NAMES[prefix] + name[len(prefix):]
        if prefix == "encoder.":  # our encoder's names pass none of IRRA's tests but "bias"
            assert not any(w in name for w in ("cross", "classifier", "mlm_head")), name
        want = _irra_solver(irra_name)
        assert ours[id(p)] == pytest.approx(want), (name, irra_name)
        seen.add(want)
    # the rule's cases all occur: 1x, 5x weights, 2x biases, 5x classifier / mlm_head biases
    assert seen == {(1e-5, 4e-5), (5e-5, 4e-5), (2e-5, 0.0), (5e-5, 0.0)}
    # the MLM branch's LayerNorms run at 1x (their biases 2x), its cross-attention at 5x
    assert ours[id(module.heads["mlm"].ln_text.weight)] == pytest.approx((1e-5, 4e-5))
    assert ours[id(module.heads["mlm"].cross_attn.in_proj_bias)] == pytest.approx((2e-5, 0.0))
    assert ours[id(module.heads["mlm"].mlm_head[0].bias)] == pytest.approx((5e-5, 0.0))


def _irra_scheduler_lr(epoch: int, base=1.0, warmup_epochs=5, warmup_factor=0.1,
                       total_epochs=60, target_lr=0.0) -> float:
    """IRRA's LRSchedulerWithWarmup.get_lr (linear warm-up, cosine) at ``last_epoch``."""
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        return base * (warmup_factor * (1 - alpha) + alpha)
    ratio = (epoch - warmup_epochs) / (total_epochs - warmup_epochs)
    return target_lr + (base - target_lr) * 0.5 * (1 + math.cos(math.pi * ratio))


def test_per_epoch_schedule_equals_irras_for_60_epochs():
    factor = warmup_cosine(total_steps=60, warmup_steps=5, warmup_factor=0.1, min_factor=0.0)
    for epoch in range(60):  # IRRA trains epoch e+1 at last_epoch e (scheduler.step at its end)
        assert factor(epoch) == pytest.approx(_irra_scheduler_lr(epoch), abs=1e-12), epoch


def test_every_recipe_claiming_irras_optimisation_uses_its_rule_and_schedule(monkeypatch):
    from pathlib import Path

    from tbps.config import compose_experiment

    experiments = Path(__file__).resolve().parent.parent / "experiments"
    monkeypatch.setenv("TBPS_EXPERIMENTS", str(experiments))
    claim = [p.stem for p in experiments.glob("*.yaml")
             if "recipe: irra" in p.read_text() or "recipe: clip" in p.read_text()]
    assert {"irra_cuhk", "clip_rstp", "crue_icfg", "ucfa_cuhk"} <= set(claim)
    for name in claim:
        o = compose_experiment(name, []).optim
        assert (o.param_rule, o.interval, o.warmup_epochs, o.new_module_lr_factor,
                o.bias_lr_factor) == ("irra", "epoch", 5, 5.0, 2.0), name
