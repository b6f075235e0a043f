"""Every setting checked before anything runs: one schema per config group.

Groups that name a class (``data``, every head) take their schema from that class's
``__init__`` signature, whose annotations state types, ranges and choices
(``tbps.settings_types``, ``Literal``); a new head therefore declares its settings by
writing its signature, and they are checked like every other key. The other groups
(``optim``, ``tokenizer``, ``encoder``, ``memory``, ``text_augment``, ``logger``,
``eval``, ``trainer``) are the pydantic models below. Unknown keys are refused with the
closest known key; a bad value is named with what is allowed. ``validate_config`` runs on
the composed config before data or model are built, for ``tbps train``, ``eval``,
``bench`` and every sweep run (they all compose through ``compose_experiment``).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from functools import lru_cache
from typing import Annotated, Any, Literal

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import ConfigError
from .settings_types import (Momentum, NonNegativeFloat, NonNegativeInt, OpenRate, PositiveFloat,
                             PositiveInt, Rate)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Optimizer(BaseModel):
    model_config = ConfigDict(extra="allow")  # the optimizer's own keyword arguments
    target: str = Field(alias="_target_")


class Optim(_Strict):
    optimizer: _Optimizer
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    new_module_lr_factor: PositiveFloat
    bias_lr_factor: PositiveFloat
    warmup_epochs: NonNegativeFloat
    warmup_factor: OpenRate
    min_lr_factor: Rate
    interval: Literal["step", "epoch"]
    param_rule: Literal["by_module", "irra", "uniform"] = "by_module"


class Tokenizer(_Strict):
    vocab_size: PositiveInt
    context_length: Annotated[int, Field(ge=8)]


class Encoder(_Strict):
    embed_dim: PositiveInt
    vision: dict[str, Any]   # timm keyword arguments (timm checks them); patch size below
    text: dict[str, Any]     # CLIPTextConfig fields
    text_pool: Literal["eos", "mean", "cls"] = "eos"
    global_bottleneck: bool = False   # ACSA's code: BatchNorm1d on both global features
    pretrained: str | None = None
    swin_weights: str | None = None   # encoder=swin_bert: local Swin-T / BERT weights
    bert_weights: str | None = None
    pos_interpolation: Literal["nearest", "bilinear", "bicubic", "area"] = "bilinear"
    act: Literal["gelu", "quick_gelu"] | None = None
    # recompute each block's activations in the backward pass: much less memory for about
    # a third more compute (DualEncoder.set_grad_checkpointing; docs/speed.md)
    grad_checkpointing: bool = False


class Memory(_Strict):
    size: PositiveInt
    momentum: Momentum


class TextAugment(_Strict):
    mask: Rate = 0.05
    delete: Rate = 0.05
    replace: Rate = 0.05


class Distributions(_Strict):
    variance_from: Literal["tokens", "global", "global_and_tokens", "words",
                           "global_and_words"] = "tokens"
    init_logvar: float = -4.0
    kl_weight: NonNegativeFloat = 1e-4
    sigma_prior_weight: NonNegativeFloat = 0.0
    sigma_detached: bool = False
    sigma_hidden: NonNegativeInt = 0
    sigma_on_sphere: bool = False
    samples_train_sigma: bool = True


class PairWeights(_Strict):
    by: Literal["batch", "division"] = "batch"
    from_epoch: NonNegativeFloat = 1.0
    ratio: PositiveFloat = 0.5  # batch: relative to the batch's median P(match)
    ramp_epochs: NonNegativeFloat = 0.0  # batch: fade the weights in
    min_separation: NonNegativeFloat = 0.0  # division: the mixture's D below which all are clean
    min_clean_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5  # division: else all clean
    # batch: what the weights act on: the pairs' loss terms, which pairs enter the feature
    # memory (a doubted pair is queued as an empty slot, not as a key of its labelled
    # identity), or both
    apply_to: Literal["losses", "memory", "both"] = "losses"


class Logger(_Strict):
    wandb: bool
    project: str
    csv: bool


class Eval(_Strict):
    ckpt: str | None = None
    test_last: bool = False


def _trainer_model() -> type[BaseModel]:
    """Lightning's Trainer arguments: the known ones with their ranges; any other argument
    of ``Trainer.__init__`` passes through; anything else is unknown."""
    import lightning as L

    names = [n for n in inspect.signature(L.Trainer.__init__).parameters if n != "self"]
    fields: dict[str, Any] = {n: (Any, None) for n in names}
    fields.update(
        max_epochs=(Annotated[int, Field(ge=-1)] | None, None),
        max_steps=(Annotated[int, Field(ge=-1)], -1),
        log_every_n_steps=(PositiveInt | None, None),
        check_val_every_n_epoch=(PositiveInt | None, None),
        num_nodes=(PositiveInt, 1),
        num_sanity_val_steps=(Annotated[int, Field(ge=-1)] | None, None),
        gradient_clip_val=(NonNegativeFloat | None, None),
        accumulate_grad_batches=(PositiveInt, 1),
        precision=(Literal["32-true", "32", 32, "bf16-mixed", "16-mixed", "bf16-true",
                           "16-true", "64-true", "transformer-engine"] | None, None))
    return create_model("Trainer", __config__=ConfigDict(extra="forbid"), **fields)


@lru_cache(maxsize=None)
def signature_model(target: str) -> type[BaseModel]:
    """The schema of a group that instantiates ``target``: its ``__init__`` parameters with
    their annotated types (``ctx`` and other injected arguments excluded)."""
    cls = get_class(target)
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    fields: dict[str, Any] = {"target": (str, Field(alias="_target_"))}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "ctx") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(cls.__name__ + "Settings", __config__=ConfigDict(
        extra="forbid", arbitrary_types_allowed=True), **fields)


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def validation_message(exc: ValidationError, where: str, model: type[BaseModel] | None = None,
                       prefix: str = "") -> str:
    """One line per problem: the key, the value given, what is allowed (and for an unknown
    key the closest known one)."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "lax-"))]
        # pydantic names the branch of a union it tried (int, str, ...): keep the key path
        loc = [p for p in loc if not (p in {"int", "float", "str", "bool", "none", "tuple"}
                                      or p.startswith(("literal[", "constrained-")))]
        key = prefix + ".".join(loc)
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            known = _field_names(model) if model is not None else []
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6) if loc else []
            hint = (f"; did you mean {prefix}{'.'.join(loc[:-1] + [close[0]])}?" if close
                    else f"; known keys: {', '.join(sorted(known))}" if known else "")
            lines.append(f"unknown {where} {key}{hint}")
        else:
            lines.append(f"{where} {key}={err.get('input')!r}: {err['msg']}")
    return "\n".join(dict.fromkeys(lines))


_GROUPS: dict[str, type[BaseModel]] = {"optim": Optim, "tokenizer": Tokenizer,
                                        "encoder": Encoder, "logger": Logger, "eval": Eval}
_OPTIONAL: dict[str, type[BaseModel]] = {"memory": Memory, "text_augment": TextAugment,
                                          "distributions": Distributions,
                                          "pair_weights": PairWeights}
_TOP = {"experiment": str, "seed": Annotated[int, Field(ge=0)], "runs_dir": str,
        "run_dir": str | None, "resume": bool | str,
        "nonfinite_loss": Literal["stop", "skip"], "compile": bool,
        "preparation_augment": bool}


def _check(model: type[BaseModel], value: Any, key: str, problems: list[str]) -> None:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        problems.append(validation_message(exc, "setting", model, prefix=f"{key}."))


def validate_config(cfg: DictConfig, source: str = "") -> None:
    """Raises one ``ConfigError`` listing every bad or unknown key of a composed config."""
    c = OmegaConf.to_container(cfg, resolve=True)
    problems: list[str] = []
    groups = {"data", "heads", "trainer", *_GROUPS, *_OPTIONAL}
    top = create_model("Top", __config__=ConfigDict(extra="ignore"),
                       **{k: (t, ...) for k, t in _TOP.items()})
    try:
        top.model_validate(c)
    except ValidationError as exc:
        problems.append(validation_message(exc, "setting", top))
    for key in sorted(set(c) - groups - set(_TOP) - {"hydra"}):
        close = difflib.get_close_matches(key, sorted(groups | set(_TOP)), n=1, cutoff=0.6)
        problems.append(f"unknown setting {key}" + (f"; did you mean {close[0]}?" if close else ""))
    for key, model in _GROUPS.items():
        _check(model, c.get(key), key, problems)
    for key, model in _OPTIONAL.items():
        if c.get(key) is not None:
            _check(model, c[key], key, problems)
    _check(_trainer_model(), c.get("trainer"), "trainer", problems)
    _check_trainer_owned(c.get("trainer") or {}, problems)
    for key, group in [("data", c.get("data"))] + [(f"heads.{n}", h) for n, h in
                                                    (c.get("heads") or {}).items()]:
        if not isinstance(group, dict) or "_target_" not in group:
            problems.append(f"setting {key} has no _target_ (the class it builds)")
            continue
        try:
            model = signature_model(group["_target_"])
        except Exception as exc:  # noqa: BLE001 - an import error names the class
            problems.append(f"setting {key}._target_={group['_target_']!r} cannot be "
                            f"imported ({type(exc).__name__}: {exc})")
            continue
        _check(model, group, key, problems)
    _check_shared_parts(c, problems)
    _check_patch_size(c, problems)
    if problems:
        where = f" (experiment {source!r})" if source else ""
        raise ConfigError(f"invalid settings{where}; fix them on the command line or in the "
                          "experiment file:\n  " + "\n  ".join("\n".join(problems).splitlines()))


# What a head class may declare it reads -> the config key of the shared part that makes it
_SHARED_PARTS = {"needs_memory": ("memory", "set memory.size and memory.momentum (see "
                                  "experiments/crue_*.yaml)"),
                 "needs_distributions": ("distributions", "set distributions (variance_from, "
                                         "init_logvar, kl_weight; see experiments/ucfa_*.yaml)")}


def _head_class(group: Any) -> type | None:
    try:
        return get_class(group["_target_"])
    except Exception:  # noqa: BLE001 - an unimportable head is reported elsewhere
        return None


def _check_shared_parts(c: dict, problems: list[str]) -> None:
    """Heads that read a shared part (the memory, the distributions) need it switched on."""
    for flag, (key, fix) in _SHARED_PARTS.items():
        needing = []
        for name, group in (c.get("heads") or {}).items():
            if getattr(_head_class(group), flag, False):
                needing.append(name)
        if needing and not c.get(key):
            problems.append(f"heads {needing} need {key}, which is off (null): {fix}")
    # token annotations are aligned with the clean caption; deleting tokens shifts them
    if (c.get("text_augment") or {}).get("delete", 0) > 0:
        annotated = [n for n, g in (c.get("heads") or {}).items()
                     if getattr(_head_class(g), "caption_annotations", ())]
        if annotated:
            problems.append(f"heads {annotated} read token annotations of the caption, which "
                            "text_augment.delete would misalign: set text_augment.delete=0")


# Trainer arguments that tbps sets itself, and what a user sets instead
_TRAINER_OWNED = {
    "callbacks": "tbps adds its own (checkpoints best/last, throughput, random states, the "
                 "progress display); turn the progress display off with "
                 "trainer.enable_progress_bar=false",
    "logger": "set logger.wandb=true|false and logger.csv=true|false",
    "default_root_dir": "set run_dir=<folder> (or runs_dir=<folder> for runs/<exp>/<time>/)",
    "plugins": "tbps writes checkpoints atomically through its own plugin",
    "enable_checkpointing": "every run keeps checkpoints/best.ckpt and last.ckpt (the run "
                            "folder's contract); delete them afterwards if unwanted",
}


def _check_trainer_owned(trainer: dict, problems: list[str]) -> None:
    for key, instead in _TRAINER_OWNED.items():
        if key in trainer:
            problems.append(f"setting trainer.{key} is set by tbps, not from the config: "
                            f"{instead}")
    if trainer.get("max_epochs") == 0:
        problems.append("setting trainer.max_epochs=0 trains nothing, and the test of random "
                        "weights would land in metrics.json beside real runs: use "
                        "`tbps eval` (make eval) to test a checkpoint, or max_epochs >= 1")


def _check_patch_size(c: dict, problems: list[str]) -> None:
    """Image height and width must be multiples of the vision tower's patch size."""
    size = (c.get("data") or {}).get("image_size")
    patch = ((c.get("encoder") or {}).get("vision") or {}).get("patch_size")
    if (isinstance(size, (list, tuple)) and len(size) == 2 and isinstance(patch, int)
            and patch > 0 and all(isinstance(s, int) for s in size)
            and any(s % patch for s in size)):
        problems.append(f"setting data.image_size={list(size)}: height and width must be "
                        f"multiples of encoder.vision.patch_size={patch}")
