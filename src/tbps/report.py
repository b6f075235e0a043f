"""`tbps report`: one table (mean ± std over seeds) and a plot across run folders.

A run folder is what `tbps train` writes: ``config.yaml`` and, once it finished,
``metrics.json``. Runs are grouped by experiment and by the ``--by`` keys (for example
``data.noise_rate``); without ``--by``, runs whose configs differ only in the seed form a
group. Each group gives the number of seeds, every test metric as mean ± sample standard
deviation, the validation metric that chose the checkpoint, training time and samples/s.
Runs without ``metrics.json`` are listed apart and never averaged in. With ``--by
data.noise_rate`` a second table gives, per experiment, the share of its clean test R@1 each
noise rate keeps, with a standard error from both rows' seed spreads, so that a gap between
two methods can be read against what three seeds can tell apart.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .machine import labels as machine_labels

TEST_METRICS = ("R1", "R5", "R10", "mAP", "mINP", "rSum")
VAL_PREFIXES = ("val", "val_on_test", "val_holdout")
# Keys that differ between seeds of one setting, or that say where a run lives
NOT_SETTINGS = {"seed", "data.seed", "run_dir", "runs_dir", "resume", "eval.ckpt"}


@dataclass
class Run:
    path: Path
    config: dict[str, object]          # flattened, dotted keys
    metrics: dict[str, float] | None   # None: the run did not finish
    machines: list[str] = field(default_factory=list)  # machine.json's labels; [] unrecorded


@dataclass
class Group:
    experiment: str
    by: tuple[object, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [r.metrics[key] for r in self.runs if key in r.metrics]


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _read_run(folder: Path) -> Run:
    from omegaconf import OmegaConf

    try:
        config = _flatten(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")))
    except Exception as exc:  # noqa: BLE001 - YAML and OmegaConf raise several kinds
        raise ConfigError(f"{folder / 'config.yaml'} cannot be read ({exc}); is {folder} a "
                          "run folder written by `tbps train`?") from exc
    machines = machine_labels(folder)
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        return Run(folder, config, None, machines)
    try:
        metrics = json.loads(metrics_file.read_text())
    except ValueError as exc:
        raise ConfigError(f"{metrics_file} is not valid JSON ({exc}); delete it or rerun "
                          "`tbps eval` for that run") from exc
    return Run(folder, config, {k: float(v) for k, v in metrics.items()}, machines)


def find_runs(paths: list[str | Path], runs_dir: str | Path = "runs") -> list[Run]:
    """Run folders under the given paths (a run folder, or any folder holding run folders);
    by default every run under ``runs_dir``."""
    roots = [Path(p) for p in paths] or [Path(runs_dir)]
    folders: list[Path] = []
    for root in roots:
        if (root / "config.yaml").is_file():
            folders.append(root)
            continue
        if not root.is_dir():
            raise ConfigError(f"{root} is not a folder; pass run folders (with config.yaml) or "
                              "folders that hold them, such as runs/ or runs/<experiment>/")
        # (W&B keeps a config.yaml of its own inside each run's wandb/ folder)
        found = sorted(p.parent for p in root.rglob("config.yaml")
                       if "wandb" not in p.relative_to(root).parts)
        if not found:
            raise ConfigError(f"{root} holds no run folder (no config.yaml below it); train "
                              "first (make train) or pass the folder your runs are in")
        folders += found
    return [_read_run(f) for f in dict.fromkeys(folders)]


def group_runs(runs: list[Run], by: list[str]) -> list[Group]:
    for key in by:
        if not any(key in r.config for r in runs):
            known = sorted({k for r in runs for k in r.config if not k.startswith("hydra")})
            close = [k for k in known if key.split(".")[-1] in k][:5]
            raise ConfigError(f"--by {key}: no run has that setting"
                              + (f"; close ones: {', '.join(close)}" if close else ""))
    groups: dict[tuple, Group] = {}
    for run in runs:
        experiment = str(run.config.get("experiment", run.path.parent.name))
        values = tuple(run.config.get(k) for k in by)
        if by:
            key = (experiment, values)
        else:  # same settings but for the seed
            key = (experiment, tuple(sorted((k, repr(v)) for k, v in run.config.items()
                                            if k not in NOT_SETTINGS)))
        groups.setdefault(key, Group(experiment, values)).runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.experiment, [repr(v) for v in g.by]))


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def summarise(groups: list[Group], by: list[str]) -> list[dict]:
    """One row per group of finished runs."""
    rows = []
    for g in groups:
        done = [r for r in g.runs if r.metrics is not None]
        if not done:
            continue
        finished = Group(g.experiment, g.by, done)
        row: dict[str, object] = {"experiment": g.experiment}
        row.update(dict(zip(by, g.by)))
        row["seeds"] = len(done)
        row["seed_list"] = sorted(r.config.get("seed") for r in done)
        for m in TEST_METRICS:
            row[f"test/{m}"] = _mean_std(finished.values(f"test/{m}"))
        # the last epoch's model (`eval.test_last`, on in `tbps study`): RDE's "Last"
        last = finished.values("test_last/R1")
        row["test_last/R1"], row["test_last_runs"] = _mean_std(last), len(last)
        prefix = next((p for p in VAL_PREFIXES if finished.values(f"{p}/R1")), None)
        row["val_metric"] = f"{prefix}/R1" if prefix else None
        row["val"] = _mean_std(finished.values(f"{prefix}/R1")) if prefix else (None, None)
        row["train/seconds"] = _mean_std(finished.values("train/seconds"))
        row["train/samples_per_s"] = _mean_std(finished.values("train/samples_per_s"))
        row["machine"] = _machines(done)
        rows.append(row)
    return rows


NOISE_KEY = "data.noise_rate"


def _kept(noisy: tuple, n_noisy: int, clean: tuple, n_clean: int) -> tuple[float | None, float | None]:
    """100 * mean(noisy) / mean(clean), and its standard error by the delta method: the
    relative variances of the two means add (seeds trained apart, so independent)."""
    (mn, sn), (mc, sc) = noisy, clean
    if mn is None or mc is None or mc == 0:
        return None, None
    kept = 100.0 * mn / mc
    if sn is None or sc is None or mn == 0:  # one seed on a side: no spread to read
        return kept, None
    return kept, kept * math.sqrt((sn / mn) ** 2 / n_noisy + (sc / mc) ** 2 / n_clean)


def robustness(rows: list[dict], by: list[str]) -> list[dict]:
    """For ``--by data.noise_rate``: each noisy row against the clean row (noise rate 0) of
    the same experiment and other --by values: clean and noisy R@1, the share kept (± its
    standard error), the points lost, and the same share for the last epoch's model."""
    if NOISE_KEY not in by:
        return []
    others = [k for k in by if k != NOISE_KEY]

    def setting(r: dict) -> tuple:
        return (r["experiment"], *(repr(r[k]) for k in others))

    clean = {setting(r): r for r in rows if r[NOISE_KEY] in (0, 0.0)}
    out = []
    for r in rows:
        c = clean.get(setting(r))
        if c is None or r is c or r[NOISE_KEY] is None:
            continue
        last_both = (r["test_last_runs"] == r["seeds"] and c["test_last_runs"] == c["seeds"])
        out.append({"experiment": r["experiment"], **{k: r[k] for k in others},
                    NOISE_KEY: r[NOISE_KEY], "clean_seeds": c["seeds"], "seeds": r["seeds"],
                    "clean R1": c["test/R1"], "R1": r["test/R1"],
                    "kept": _kept(r["test/R1"], r["seeds"], c["test/R1"], c["seeds"]),
                    "lost": c["test/R1"][0] - r["test/R1"][0],
                    "kept_last": (_kept(r["test_last/R1"], r["seeds"], c["test_last/R1"],
                                        c["seeds"]) if last_both else (None, None))})
    return out


def robustness_markdown(table: list[dict], by: list[str]) -> str:
    others = [k for k in by if k != NOISE_KEY]
    head = ["experiment", *others, NOISE_KEY, "seeds (clean, noisy)", "clean R1", "R1",
            "kept (% of clean R1, ± s.e.)", "points lost", "kept, last epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in table:
        cells = [t["experiment"], *(str(t[k]) for k in others), str(t[NOISE_KEY]),
                 f"{t['clean_seeds']}, {t['seeds']}", _pm(t["clean R1"]), _pm(t["R1"]),
                 _pm(t["kept"], 1), f"{t['lost']:.2f}", _pm(t["kept_last"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


UNRECORDED = "unrecorded"


def _machines(runs: list[Run]) -> str:
    """The machines a group's runs trained on, with how many runs each where they differ:
    "AMD EPYC, 1 thread" or "AMD EPYC, 1 thread (2) + Intel Xeon, 1 thread (1)"."""
    counts: dict[str, int] = {}
    for run in runs:
        key = " → ".join(run.machines) or UNRECORDED  # a resumed run can change machine
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return " + ".join(f"{k} ({n})" for k, n in counts.items())


def machines_note(runs: list[Run]) -> str | None:
    """A warning when the finished runs come from more than one machine: the same seed can
    train several points apart on two processors, so rows are comparable only within one."""
    seen = list(dict.fromkeys(m for r in runs if r.metrics is not None for m in r.machines))
    unrecorded = sum(1 for r in runs if r.metrics is not None and not r.machines)
    if len(seen) + (unrecorded > 0) <= 1:
        return None
    parts = seen + ([f"{unrecorded} run{'s' if unrecorded != 1 else ''} unrecorded"]
                    if unrecorded else [])
    return ("machines differ: " + "; ".join(parts) + ". The same seed can train several "
            "points apart on two processors: compare rows trained on one machine")


def _pm(value: tuple[float | None, float | None], digits: int = 2) -> str:
    mean, std = value
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _last(row: dict) -> str:
    """The last-epoch R1, saying over how many runs where not every seed has it (runs
    recorded before `eval.test_last` existed)."""
    n = row["test_last_runs"]
    return _pm(row["test_last/R1"]) + (f" ({n} of {row['seeds']})" if 0 < n < row["seeds"] else "")


def to_markdown(rows: list[dict], by: list[str], unfinished: list[Run],
                note: str | None = None) -> str:
    last = any(r["test_last/R1"][0] is not None for r in rows)
    head = ["experiment", *by, "seeds", *TEST_METRICS, *(["R1 (last epoch)"] if last else []),
            "val (chose the checkpoint)", "train s", "samples/s", "machine"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["experiment"], *(str(r[k]) for k in by), str(r["seeds"]),
                 *(_pm(r[f"test/{m}"]) for m in TEST_METRICS),
                 *([_last(r)] if last else []),
                 f"{r['val_metric']} {_pm(r['val'])}" if r["val_metric"] else "–",
                 _pm(r["train/seconds"], 0), _pm(r["train/samples_per_s"], 0), r["machine"]]
        lines.append("| " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    if unfinished:
        lines.append("")
        lines.append("unfinished (no metrics.json, not averaged): "
                     + ", ".join(str(r.path) for r in unfinished))
    return "\n".join(lines)


def _flat_row(r: dict) -> dict:
    out = {}
    for k, v in r.items():
        if isinstance(v, tuple):
            out[f"{k} mean"], out[f"{k} std"] = v
        else:
            out[k] = v
    return out


def to_csv(rows: list[dict]) -> str:
    flat = [_flat_row(r) for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else [])
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def to_json(rows: list[dict], unfinished: list[Run], note: str | None = None,
            kept: list[dict] = ()) -> str:
    return json.dumps({"groups": [_flat_row(r) for r in rows],
                       "robustness": [_flat_row(t) for t in kept],
                       "unfinished": [str(r.path) for r in unfinished], "machines_note": note},
                      indent=1)


def plot(rows: list[dict], key: str, out: Path) -> Path:
    """Test R@1 against ``key``, one line per experiment, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for experiment in dict.fromkeys(r["experiment"] for r in rows):
        pts = sorted((r[key], *r["test/R1"]) for r in rows if r["experiment"] == experiment)
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] or 0.0 for p in pts], marker="o",
                    capsize=3, label=experiment)
    ax.set_xlabel(key)
    ax.set_ylabel("test R@1 (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def log_to_wandb(rows: list[dict], project: str = "tbps") -> None:
    """The table as a ``wandb.Table``, only when the user is logged in and W&B is online."""
    from .sweep import wandb_logged_in

    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_logged_in():
        return
    import wandb

    flat = [_flat_row(r) for r in rows]
    columns = list(flat[0])
    with wandb.init(project=project, job_type="report") as run:
        run.log({"report": wandb.Table(columns=columns,
                                       data=[[str(f[c]) for c in columns] for f in flat])})


def report(paths: list[str], by: list[str], out: str | Path = "runs/report",
           fmt: str = "md", runs_dir: str | Path = "runs") -> str:
    runs = find_runs(paths, runs_dir)
    unfinished = [r for r in runs if r.metrics is None]
    rows = summarise(group_runs(runs, by), by)
    if not rows:
        raise ConfigError(f"none of the {len(runs)} runs found has finished (no metrics.json "
                          "in any); wait for them, or resume them with resume=true")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    note = machines_note(runs)
    kept = robustness(rows, by)
    md = to_markdown(rows, by, unfinished, note)
    if kept:
        md += ("\n\nThe share of the clean test R@1 each noise rate keeps (ratio of the seeds' "
               "means; ± its standard error from both rows' spreads):\n\n"
               + robustness_markdown(kept, by))
    texts = {"md": md, "csv": to_csv(rows), "json": to_json(rows, unfinished, note, kept)}
    for name, text in texts.items():
        (out / f"report.{name}").write_text(text + "\n")
    if by:
        try:
            picture = plot(rows, by[0], out / "report.png")
            texts["md"] += f"\n\nplot: {picture}"
        except ImportError:
            texts["md"] += ("\n\nno plot: matplotlib is not installed "
                            "(pip install 'tbps[notebooks]')")
        except TypeError:
            texts["md"] += f"\n\nno plot: {by[0]} is not numeric in every run"
    log_to_wandb(rows)
    return texts[fmt] + (f"\n\nwritten to {out}/report.{{md,csv,json}}" if fmt == "md" else "")
