"""`tbps sweep FILE` (`make sweep SWEEP=FILE`): create a W&B sweep and run an agent on it.

A sweep lives on a W&B server (wandb.ai or a local one at ``WANDB_BASE_URL``): the agent
asks it for each run's parameters, so, unlike training, sweeps cannot run offline. Without
credentials this stops before anything is created, with one paragraph that says how to log
in, instead of W&B's error followed by a second one about a missing sweep id.
"""

from __future__ import annotations

import netrc
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from .errors import ConfigError


def wandb_logged_in() -> bool:
    """An API key in the environment, or a login (`wandb login`) for the W&B host in use."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def read_sweep(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the sweep file {path}: {exc}. Pass one of "
                          "experiments/sweeps/*.yaml") from None
    missing = [k for k in ("program", "method", "parameters") if not (isinstance(sweep, dict)
                                                                       and k in sweep)]
    if missing:
        raise ConfigError(f"{path} is not a W&B sweep file: it has no {', '.join(missing)}. "
                          "See experiments/sweeps/*.yaml for the form")
    return sweep


def run_sweep(path: str | Path, project: str = "tbps", count: int | None = None) -> int:
    sweep = read_sweep(path)
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise ConfigError(f"WANDB_MODE={mode}: a sweep needs a W&B server (it hands the agent "
                          "each run's parameters), so it cannot run offline. Unset WANDB_MODE, "
                          "or train single runs with `make train ARGS='key=value ...'` (or "
                          "several with `tbps train -m key=a,b`)")
    if not wandb_logged_in():
        where = os.environ.get("WANDB_BASE_URL", "wandb.ai")
        raise ConfigError(f"no W&B credentials for {where}: a sweep lives on a W&B server, "
                          "which hands the agent each run's parameters. Run `.venv/bin/wandb "
                          "login` (or set WANDB_API_KEY); for a local server set WANDB_BASE_URL "
                          "too (`wandb server start`, then log in to it). Nothing was created. "
                          "Without a server, `tbps train -m key=a,b` runs a grid one after "
                          "another")
    import wandb

    try:
        sweep_id = wandb.sweep(sweep, project=project)
    except Exception as exc:  # noqa: BLE001 - network and server errors come in many kinds
        raise ConfigError(f"W&B did not create the sweep ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); check the login and the connection to "
                          f"{os.environ.get('WANDB_BASE_URL', 'wandb.ai')}") from None
    agent = shutil.which("wandb", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))
    cmd = [agent or "wandb", "agent", f"{project}/{sweep_id}"] + (
        ["--count", str(count)] if count else [])
    print(f"sweep {sweep_id} created; running: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)
