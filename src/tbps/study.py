"""`tbps study` / `make study`: every method on SynthPedes, clean and with noisy captions,
several seeds each, on the same per-run budget, then `tbps report` over them.

Runs go to ``<out>/<experiment>/noise<rate>-seed<seed>/``. A run that finished
(metrics.json) is skipped; one that was stopped continues from its last.ckpt; so the study
can be stopped and restarted. Two studies over one folder share it: each run folder is
claimed by the process that trains it (``study.lock``, holding that training's process id),
and a study skips a run another one is training or has finished meanwhile, instead of
training it a second time into the same checkpoints. Trainings run ``parallel`` at a time
with one thread each (the 2-core machine: two at a time), each in its own process.

The whole protocol (six methods, clean and noisy, three seeds, 12 epochs) takes about four
and a half hours on the 2-core machine, beyond the 150 minutes a study may take, so `make
study` trains seed 0 (90 minutes on 2026-12-02) and `make study-seeds` seeds 1 and 2;
``record`` copies what finished into the published record (docs/study), where seeds
trained on different days add up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .machine import processor_name, read as read_machine

# The methods of the study: IRRA's heads, CLIP's ITC baseline, CRUE, ACSA, UCFA, and RDE, the
# noise-robust anchor (a clean-sample selection to measure the distributions against)
METHODS = ("synthetic", "clip_synthetic", "crue_synthetic", "acsa_synthetic", "ucfa_synthetic",
           "rde_synthetic")


@dataclass(frozen=True)
class StudyRun:
    experiment: str
    noise: float
    seed: int
    folder: Path

    def command(self, epochs: int, extra: list[str]) -> list[str]:
        args = [sys.executable, "-m", "tbps.cli", "train", f"experiment={self.experiment}",
                f"seed={self.seed}", f"data.noise_rate={self.noise}",
                f"trainer.max_epochs={epochs}", f"run_dir={self.folder}",
                "eval.test_last=true", *extra]  # the report shows Best and Last, as RDE
        if (self.folder / "checkpoints" / "last.ckpt").is_file():
            args.append(f"resume={self.folder}")  # continue where a stopped study left it
        return args


LOCK = "study.lock"


def _holder(lock: Path) -> int | None:
    """The process id in ``lock`` if that process is still running, else None."""
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (OSError, ValueError):
        return None  # gone, or a lock left half-written: stale
    return pid


def claim(folder: Path) -> str | None:
    """Takes ``folder`` for this process (its id in ``study.lock``); returns why not when the
    run finished since the study was planned or another study is training it. A lock whose
    process has ended (a study that was stopped) is taken over."""
    if (folder / "metrics.json").is_file():
        return "finished meanwhile"
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                return f"another study is training it (process {holder}, {lock})"
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None
    return f"could not take {lock}"


def plan(out: Path, methods: list[str], noises: list[float], seeds: list[int]) -> list[StudyRun]:
    return [StudyRun(m, r, s, out / m / f"noise{r:g}-seed{s}")
            for r in noises for s in seeds for m in methods]


def other_processors(runs: list[StudyRun]) -> dict[str, int]:
    """Finished runs of the plan trained on a processor other than this one, by processor:
    the same seed trains several points apart on two kinds, so adding to such a study mixes
    machines in its table."""
    here, counts = processor_name(), {}
    for r in runs:
        if (r.folder / "metrics.json").is_file():
            for name in dict.fromkeys(str(e.get("processor")) for e in read_machine(r.folder)):
                if name != here:
                    counts[name] = counts.get(name, 0) + 1
    return counts


def run_study(out: str | Path = "runs/study", methods: list[str] | None = None,
              noises: list[float] = (0.0, 0.3), seeds: list[int] = (0, 1, 2),
              epochs: int = 12, parallel: int = 2, extra: list[str] = (),
              dry_run: bool = False) -> list[StudyRun]:
    """Trains what is missing, ``parallel`` at a time; returns the plan."""
    methods = list(methods or METHODS)
    if parallel < 1 or epochs < 1 or not seeds or not noises:
        raise ConfigError("tbps study: --parallel and --epochs must be at least 1, and "
                          "--seeds and --noise need at least one value each")
    runs = plan(Path(out), methods, list(noises), list(seeds))
    todo = [r for r in runs if not (r.folder / "metrics.json").is_file()]
    print(f"study: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to train "
          f"({parallel} at a time, {epochs} epochs each, one thread each on {processor_name()}) "
          f"under {out}", flush=True)
    for name, n in other_processors(runs).items():
        print(f"  note: {n} finished run{'s' if n != 1 else ''} here trained on {name}; the "
              "same seed trains several points apart on two processors, so the report will "
              "mix machines (it says which row ran where)", flush=True)
    if dry_run:
        for r in todo:
            print(" ".join(r.command(epochs, list(extra))[2:]))
        return runs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[StudyRun, subprocess.Popen, float, object]] = []
    failed: list[StudyRun] = []
    skipped = 0
    queue = list(todo)
    began = time.perf_counter()
    while queue or running:
        while queue and len(running) < parallel:
            r = queue.pop(0)
            why = claim(r.folder)
            if why is not None:
                skipped += 1
                print(f"  skipped {r.folder}: {why}", flush=True)
                continue
            log = open(r.folder / "study.log", "a")
            proc = subprocess.Popen(r.command(epochs, list(extra)), stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            # the training holds the run: a study stopped meanwhile leaves it claimed
            (r.folder / LOCK).write_text(str(proc.pid))
            running.append((r, proc, time.perf_counter(), log))
            print(f"  started {r.folder}", flush=True)
        if not running:
            break
        time.sleep(2)
        for item in list(running):
            r, proc, start, log = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                (r.folder / LOCK).unlink(missing_ok=True)
                took = time.perf_counter() - start
                print(f"  {'done' if proc.returncode == 0 else 'FAILED'} {r.folder} "
                      f"({took:.0f} s)", flush=True)
                if proc.returncode != 0:
                    failed.append(r)
    print(f"study: trained {len(todo) - len(failed) - skipped} runs in {(time.perf_counter() - began) / 60:.1f} "
          f"min of wall clock ({parallel} at a time)", flush=True)
    if failed:
        raise ConfigError(f"{len(failed)} study runs failed; see study.log in "
                          + ", ".join(str(r.folder) for r in failed))
    return runs


RECORD_FILES = ("config.yaml", "metrics.json")
# runs trained before machines were recorded lack machine.json; `tbps uncertainty --out
# RUN/uncertainty.json` writes the other beside a run that predicts uncertainty
OPTIONAL_RECORD_FILES = ("machine.json", "uncertainty.json")


def record(out: str | Path, dest: str | Path) -> list[Path]:
    """Copies each finished run's config.yaml, metrics.json and machine.json from ``out``
    into ``dest`` (same layout), keeping what ``dest`` already holds; returns the copied run folders.
    Checkpoints and logs stay behind: the record is what `tbps report` reads."""
    out, dest = Path(out), Path(dest)
    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder; run the study first (make study)")
    copied = []
    for metrics in sorted(out.rglob("metrics.json")):
        folder = metrics.parent
        if "wandb" in folder.relative_to(out).parts or not (folder / "config.yaml").is_file():
            continue
        target = dest / folder.relative_to(out)
        target.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            shutil.copy2(folder / name, target / name)
        for name in OPTIONAL_RECORD_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, target / name)
        copied.append(target)
    if not copied:
        raise ConfigError(f"{out} holds no finished run (no metrics.json beside a config.yaml)")
    return copied


if __name__ == "__main__":  # make docs-study: python -m tbps.study record runs/study docs/study
    parser = argparse.ArgumentParser(prog="python -m tbps.study")
    parser.add_argument("command", choices=["record"])
    parser.add_argument("out", help="the study's runs, e.g. runs/study")
    parser.add_argument("dest", help="the record to add them to, e.g. docs/study")
    a = parser.parse_args()
    try:
        done = record(a.out, a.dest)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"recorded {len(done)} runs under {a.dest}")
