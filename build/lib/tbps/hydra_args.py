"""Hydra's command-line habits for `tbps train` and `tbps eval`.

tbps composes experiments with Hydra's compose API (``tbps.config``) rather than running
as a ``@hydra.main`` application, so Hydra's own flags are read here: ``-m``/``--multirun``
(every combination of comma-separated values, ``seed=0,1,2``, run one after another, as
Hydra's basic launcher does), ``--cfg job``/``all`` (print the composed config and stop),
and W&B's ``--key=value`` form. What has no effect without Hydra's job runtime
(``hydra.*`` settings, another launcher) is refused with what to use instead, never
silently ignored.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .errors import ConfigError

_HYDRA_KEYS = {
    "hydra.run.dir": "set run_dir=<folder> (one run) or runs_dir=<folder> "
                     "(runs/<experiment>/<time>/ below it)",
    "hydra.sweep.dir": "set runs_dir=<folder>: every job of a multirun gets its own "
                       "<folder>/<experiment>/<time>/",
    "hydra/launcher": "tbps runs the jobs of -m one after another in this process; for "
                      "jobs in parallel use a W&B sweep (make sweep, several agents) or "
                      "`tbps study --parallel N`",
    "hydra/sweeper": "tbps sweeps the comma-separated values of -m (all combinations); for "
                     "search strategies use a W&B sweep (make sweep)",
}


@dataclass
class HydraArgs:
    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    cfg: str | None = None  # "job" or "all": print the composed config instead of running


def parse_hydra_args(tokens: list[str], command: str) -> HydraArgs:
    out = HydraArgs()
    tokens = list(tokens)
    while tokens:
        t = tokens.pop(0)
        if t in ("-m", "--multirun"):
            out.multirun = True
        elif t in ("-c", "--cfg") or t.startswith("--cfg="):
            value = t.split("=", 1)[1] if "=" in t else (tokens.pop(0) if tokens else "")
            if value not in ("job", "all", "hydra"):
                raise ConfigError(f"tbps {command} {t} takes job or all (print the composed "
                                  "config and stop)")
            if value == "hydra":
                raise ConfigError(f"tbps {command} --cfg hydra: tbps has no Hydra job "
                                  "runtime, so there is no hydra config to show; --cfg job "
                                  "prints the experiment's composed config")
            out.cfg = value
        elif t.startswith("--") and "=" in t:  # W&B's --key=value
            out.overrides.append(t[2:])
        elif t.startswith("-"):
            raise ConfigError(f"tbps {command}: unknown option {t}. It takes Hydra overrides "
                              "(key=value, +key=value, ~key), -m/--multirun and --cfg job")
        else:
            out.overrides.append(t)
    for o in out.overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            instead = next((v for k, v in _HYDRA_KEYS.items() if key.startswith(k)),
                           "tbps composes configs with Hydra's compose API and has no Hydra "
                           "job runtime, so hydra settings would have no effect")
            raise ConfigError(f"setting {key} is Hydra's own and tbps does not read it: "
                              f"{instead}")
    return out


def expand_multirun(overrides: list[str]) -> list[list[str]]:
    """Every combination of the sweep overrides (``a=1,2 b=x,y``: four jobs), the others
    kept in each, in Hydra's basic-sweeper order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"cannot read the overrides: {exc}") from None
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            prefix = o.get_key_element()
            choices.append([f"{prefix}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)]
