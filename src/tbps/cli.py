"""The `tbps` console script: train, eval, synth, check-data, search, index, serve, bench, report.

`tbps train [experiment=<name>] [key=value ...]` takes Hydra overrides (also in W&B's
`--key=value` form); user mistakes print one clear paragraph and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import TBPSError


def _quiet_environment() -> None:
    # Nothing may wait on the network: no hub look-ups, no albumentations update check.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _number(kind, low, high=None, low_open=False, what=""):
    """An argparse type: a number of ``kind`` in [low, high] (or (low, high] with
    ``low_open``), refused with the allowed range otherwise (argparse exits 2)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what or kind.__name__}") from None
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: use a value {bound}")
        return value
    return parse


def _sentence(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty query ranks nothing: pass a sentence that "
                                         "describes the person")
    return text


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device only where one exists."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device; use "
                                             "--device cpu (or auto)")
    return text


POSITIVE_INT = _number(int, 1, what="a whole number")
NON_NEGATIVE_INT = _number(int, 0, what="a whole number")
RATE = _number(float, 0.0, 1.0, what="a number in [0, 1]")


def _jobs(args: argparse.Namespace):
    """(experiment name, overrides, composed config) per job: one, or with -m every
    combination of the comma-separated values; ``--cfg job`` prints each and runs none."""
    from omegaconf import OmegaConf

    from .config import compose_experiment, split_experiment
    from .hydra_args import expand_multirun, parse_hydra_args

    hydra = parse_hydra_args(args.overrides, args.command)
    jobs = expand_multirun(hydra.overrides) if hydra.multirun else [hydra.overrides]
    composed = []
    for n, overrides in enumerate(jobs):
        name, overrides = split_experiment(overrides)
        cfg = compose_experiment(name, overrides)  # all checked before the first job runs
        if hydra.cfg:
            if len(jobs) > 1:
                print(f"# job {n + 1} of {len(jobs)}: {' '.join(jobs[n])}")
            print(OmegaConf.to_yaml(cfg))
        composed.append((name, overrides, cfg))
    return [] if hydra.cfg else composed


def _train(args: argparse.Namespace) -> None:
    from .train import train

    jobs = _jobs(args)
    for n, (_, overrides, cfg) in enumerate(jobs):
        if len(jobs) > 1:
            print(f"multirun: job {n + 1} of {len(jobs)}: {' '.join(overrides)}", flush=True)
        train(cfg)


def _eval(args: argparse.Namespace) -> None:
    from .train import evaluate

    for _, overrides, cfg in _jobs(args):
        evaluate(cfg, overrides)


def _synth(args: argparse.Namespace) -> None:
    from .data.synthpedes.generate import SynthConfig, generate

    cfg = SynthConfig(identities=args.identities, images_per_identity=args.images_per_identity,
                      captions_per_image=args.captions_per_image, noise_rate=args.noise_rate,
                      omit_rate=args.omit_rate, brief_rate=args.brief_rate,
                      height=args.height, width=args.width, seed=args.seed)
    print(json.dumps(generate(args.out, cfg, workers=args.workers), indent=1))
    if args.grid:
        from .data.synthpedes.grid import sample_grid

        print(f"sample grid: {sample_grid(args.out, args.grid)}")


def _check_data(args: argparse.Namespace) -> int:
    from .data.check import check_dataset, format_report

    report = check_dataset(args.dataset, args.root, verify_images=not args.no_decode,
                           workers=args.workers)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["usable"] else 1


def _search(args: argparse.Namespace) -> None:
    from .search import draw_results, format_results, read_queries, search, to_json

    queries = list(args.query or []) + (read_queries(args.queries) if args.queries else [])
    result = search(args.ckpt, args.gallery, queries, args.topk, args.index, args.device,
                    args.batch_size, args.workers, args.kind, args.nprobe, not args.no_update)
    if args.out:
        result["picture"] = str(draw_results(result, args.out))
    print(to_json(result) if args.json else format_results(result))


def _index(args: argparse.Namespace) -> None:
    import shutil

    from .search import checked_inputs, format_update, index_root, open_index

    if args.action == "build":  # afresh: whatever was there goes, with its checkpoint's claim
        root = index_root(args.ckpt, args.gallery, args.index)
        if root.exists() and not (root / "index.sqlite").is_file():
            raise TBPSError(f"{root} exists and is not a tbps index; `index build` starts an "
                            "index afresh there, so pass an empty or new --index folder")
        checked_inputs(args.ckpt, args.gallery)  # nothing is deleted for a mistyped path
        shutil.rmtree(root, ignore_errors=True)
    index, model = open_index(args.ckpt, args.gallery, args.index, args.device,
                              create=args.action != "info")
    out = {}
    if args.action in ("build", "update"):
        report = index.update(model, args.batch_size, args.workers, args.flush_every)
        print(format_update(report.summary()), file=sys.stderr)
        out["update"] = dict(report.summary(), added_files=report.added[:20],
                             removed_files=report.removed[:20],
                             reencoded_files=report.reencoded[:20],
                             new_unreadable_files=[f"{p}: {w}" for p, w in report.unreadable[:20]])
        if len(index):
            index.vector_index(args.kind)
    out.update(index.info())
    out["first_unreadable"] = [f"{p}: {w}" for p, w in index.unreadable(limit=5)]
    print(json.dumps(out, indent=1))


def _serve(args: argparse.Namespace) -> None:
    from .serve import serve

    serve(args.ckpt, args.gallery, args.host, args.port, args.index, args.device, args.kind,
          args.batch_size, args.workers)


def _bench(args: argparse.Namespace) -> None:
    from .bench.run import run_benchmarks

    result = run_benchmarks(args.device, args.batch_size, args.steps, args.compile,
                            args.peak_tflops, args.loader_images, args.workers,
                            args.experiment, args.only, args.search_sizes, args.fit,
                            args.ckpt, args.serve_images, args.grad_checkpointing, args.profile)
    text = json.dumps(result, indent=1)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text)
    print(text)


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    return run_sweep(args.file, args.project, args.count)


def _study(args: argparse.Namespace) -> None:
    from .report import report
    from .study import run_study

    run_study(args.out, args.methods, args.noise, args.seeds, args.epochs, args.parallel,
              args.overrides, args.dry_run)
    if not args.dry_run:
        print(report([args.out], ["data.noise_rate"], os.path.join(args.out, "report")))


def _report(args: argparse.Namespace) -> None:
    from .report import report

    print(report(args.runs, args.by or [], args.out, args.format))


def _uncertainty(args: argparse.Namespace) -> None:
    from .analysis.uncertainty import main

    main(args.ckpt, args.out, args.batch_size)


def _index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", help="the index folder (default: checkpoints/search_index/"
                   "<gallery>-<hash> beside the checkpoint)")
    p.add_argument("--kind", choices=["auto", "flat", "ivf"], default="auto",
                   help="exact (flat) or approximate (ivf) vector search; auto: ivf from "
                   "200,000 images")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64)
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=2, help="image decoding processes")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tbps", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an experiment, test it, write runs/<exp>/<time>/")
    t.add_argument("overrides", nargs=argparse.REMAINDER, help="experiment=<name> and key=value")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="test a checkpoint (eval.ckpt=<path>, default: newest best)")
    e.add_argument("overrides", nargs=argparse.REMAINDER)
    e.set_defaults(func=_eval)
    s = sub.add_parser("synth", help="generate a SynthPedes data set in the CUHK-PEDES layout")
    s.add_argument("--out", required=True, help="folder that receives CUHK-PEDES/")
    s.add_argument("--identities", type=_number(int, 12, what="a whole number"), default=800,
                   help="at least 12, so that train, val and test get whole families")
    s.add_argument("--images-per-identity", type=POSITIVE_INT, default=4)
    s.add_argument("--captions-per-image", type=POSITIVE_INT, default=2)
    s.add_argument("--noise-rate", type=_number(float, 0.0, 0.99), default=0.0,
                   help="share of training captions swapped to another identity (RDE protocol)")
    s.add_argument("--omit-rate", type=RATE, default=0.12,
                   help="chance that a caption leaves out each optional detail")
    s.add_argument("--brief-rate", type=RATE, default=0.0,
                   help="share of brief captions (\"A man in a jacket.\"), which fit many people")
    s.add_argument("--height", type=_number(int, 16), default=192)
    s.add_argument("--width", type=_number(int, 8), default=64)
    s.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    s.add_argument("--workers", type=POSITIVE_INT, default=1)
    s.add_argument("--grid", help="also draw a picture of test samples with captions to this PNG")
    s.set_defaults(func=_synth)
    c = sub.add_parser("check-data", help="check a benchmark's files: layout, sizes, images, "
                       "captions; exit 0 when usable")
    c.add_argument("--dataset", required=True, choices=["cuhk-pedes", "icfg-pedes", "rstpreid"])
    c.add_argument("--root", required=True, help="the folder that holds CUHK-PEDES/, "
                   "ICFG-PEDES/ or RSTPReid/ (what DATA_ROOT points at)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--no-decode", action="store_true",
                   help="only check that images exist, do not decode them (faster)")
    c.add_argument("--workers", type=POSITIVE_INT, default=8, help="threads that decode images")
    c.set_defaults(func=_check_data)
    q = sub.add_parser("search", help="rank the images of a folder for one or more sentences")
    q.add_argument("--ckpt", required=True, help="a checkpoints/best.ckpt from tbps train")
    q.add_argument("--gallery", required=True, help="folder of images (searched recursively)")
    q.add_argument("--query", action="append", type=_sentence, help="a sentence; repeat for several")
    q.add_argument("--queries", help="a text file with one sentence per line")
    q.add_argument("--topk", type=POSITIVE_INT, default=10)
    q.add_argument("--out", help="draw the top-k of every query into this PNG")
    q.add_argument("--json", action="store_true", help="print the results as JSON")
    _index_options(q)
    q.add_argument("--nprobe", type=POSITIVE_INT, help="cells an approximate (ivf) index "
                   "scans per query (default 32: more is slower and finds more)")
    q.add_argument("--no-update", action="store_true", help="search the index as it is, "
                   "without looking for new, changed or removed images")
    q.set_defaults(func=_search)
    ix = sub.add_parser("index", help="the on-disk index of a gallery folder that search and "
                        "serve use: build (afresh), update (encode only what changed), info")
    ix.add_argument("action", choices=["build", "update", "info"])
    ix.add_argument("gallery", help="folder of images (searched recursively)")
    ix.add_argument("--ckpt", required=True, help="a checkpoints/best.ckpt from tbps train")
    _index_options(ix)
    ix.add_argument("--flush-every", type=POSITIVE_INT, default=2048, help="images encoded "
                    "between two writes to disk (a killed run loses at most these)")
    ix.set_defaults(func=_index)
    sv = sub.add_parser("serve", help="a page on localhost to search a gallery by description "
                        "and see why each image ranks where it does, with a JSON API")
    sv.add_argument("--ckpt", help="a checkpoints/best.ckpt (default: the newest "
                    "runs/synthetic/*/checkpoints/best.ckpt)")
    sv.add_argument("--gallery", help="folder of images, searched recursively (default: the "
                    "test images of the default checkpoint's data set)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this "
                    "machine only; 0.0.0.0 for every network interface)")
    sv.add_argument("--port", type=_number(int, 1, 65535, what="a port number"), default=7860)
    _index_options(sv)
    sv.set_defaults(func=_serve)
    b = sub.add_parser("bench", help="training throughput, MFU, memory, loader, encoding and "
                       "evaluation timings as JSON (small CPU version without a GPU)")
    b.add_argument("--device", type=_device, default="auto", help="auto, cpu or cuda[:N]")
    b.add_argument("--batch-size", type=POSITIVE_INT, help="default 128 on a GPU, 8 on the CPU")
    b.add_argument("--steps", type=POSITIVE_INT, help="timed training steps")
    b.add_argument("--compile", action="store_true", help="torch.compile the training step")
    b.add_argument("--grad-checkpointing", action="store_true", help="the training step with encoder.grad_checkpointing")
    b.add_argument("--profile", action="store_true", help="where the training step's time goes (torch.profiler, 3 steps)")
    b.add_argument("--peak-tflops", type=_number(float, 0.0, low_open=True), help="bf16 peak for MFU if the GPU is not known")
    b.add_argument("--loader-images", type=POSITIVE_INT, help="JPEG files for the loader benchmark")
    b.add_argument("--workers", type=NON_NEGATIVE_INT, help="loader worker processes (default: all cores)")
    b.add_argument("--experiment", default="synthetic", help="whose heads the training step "
                   "runs (the encoder is IRRA's ViT-B/16 on a GPU, the tiny one on the CPU)")
    b.add_argument("--only", choices=["train", "eval", "search", "serve", "data"], help="only "
                   "the training-step benchmark; the evaluation at CUHK-PEDES and ICFG-PEDES "
                   "size (with IRRA's rank() beside it); vector search over 10k, 100k and 1M "
                   "images (exact, approximate, torch); `tbps serve` over 10k indexed images "
                   "(query and explanation latency); or SynthPedes generation and reading "
                   "a CUHK-PEDES-sized annotation")
    b.add_argument("--search-sizes", nargs="+", type=POSITIVE_INT, metavar="N",
                   help="gallery sizes for --only search (default 10000 100000 1000000)")
    b.add_argument("--fit", metavar="CKPT", help="with --only search: shape the galleries "
                   "after this checkpoint's test features instead of the stored shape")
    b.add_argument("--ckpt", help="with --only serve: the checkpoint to serve (default: the "
                   "newest runs/synthetic/*/checkpoints/best.ckpt)")
    b.add_argument("--serve-images", type=POSITIVE_INT, default=10_000,
                   help="with --only serve: the gallery's size")
    b.add_argument("--out", help="also write the JSON to this file")
    b.set_defaults(func=_bench)
    w = sub.add_parser("sweep", help="create a W&B sweep from a sweep file and run an agent "
                       "on it (needs `wandb login`)")
    w.add_argument("file", help="a W&B sweep file, e.g. experiments/sweeps/synthetic_lr_heads.yaml")
    w.add_argument("--project", default="tbps")
    w.add_argument("--count", type=POSITIVE_INT, help="runs this agent does (default: until "
                   "the sweep ends)")
    w.set_defaults(func=_sweep)
    r = sub.add_parser("report", help="one table (mean ± std over seeds) and a plot across "
                       "run folders")
    r.add_argument("runs", nargs="*", help="run folders or folders holding them (default: "
                   "every run under runs/)")
    r.add_argument("--by", nargs="+", metavar="KEY", help="group by these settings too, e.g. "
                   "data.noise_rate (the plot's x axis is the first)")
    r.add_argument("--out", default="runs/report", help="where report.{md,csv,json,png} go")
    r.add_argument("--format", choices=["md", "csv", "json"], default="md",
                   help="what to print (all three are written)")
    r.set_defaults(func=_report)
    u = sub.add_parser("uncertainty", help="for a model that predicts uncertainty: how well "
                       "it flags noisy training pairs and vague captions, and how calibrated "
                       "its match probability is (JSON)")
    u.add_argument("ckpt", help="a checkpoint, e.g. runs/ucfa_synthetic/<time>/checkpoints/best.ckpt")
    u.add_argument("--out", help="also write the JSON to this file")
    u.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="pairs per batch of the "
                   "pass over the training pairs (the loss-based detector scores within it)")
    u.set_defaults(func=_uncertainty)
    st = sub.add_parser("study", help="every method on SynthPedes, clean and noisy, several "
                        "seeds, the same budget each, then the report")
    st.add_argument("--out", default="runs/study", help="where the runs and the report go")
    st.add_argument("--methods", nargs="+", metavar="EXPERIMENT", help="default: "
                    "synthetic clip_synthetic crue_synthetic acsa_synthetic ucfa_synthetic "
                    "rde_synthetic")
    st.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.3],
                    help="caption-noise rates (data.noise_rate)")
    st.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    st.add_argument("--epochs", type=int, default=12, help="the budget of every run (12: "
                    "where the methods stop improving on validation, docs/results.md)")
    st.add_argument("--parallel", type=int, default=2, help="trainings at a time, one "
                    "thread each")
    st.add_argument("--dry-run", action="store_true", help="list what would be trained")
    st.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    st.set_defaults(func=_study)
    return p


def _in_order(argv: list[str], command: str, unknown: list[str], rest: list[str]) -> list[str]:
    """The train/eval arguments as typed (``--cfg job`` keeps its value beside it)."""
    after = argv[argv.index(command) + 1:] if command in argv else unknown + rest
    return after if sorted(after) == sorted(unknown + rest) else unknown + rest


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    p = parser()
    args, unknown = p.parse_known_args(argv)
    if unknown:  # Hydra's flags and W&B's --key=value, which argparse leaves out of REMAINDER
        if args.command not in ("train", "eval"):
            p.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = _in_order(argv if argv is not None else sys.argv[1:], args.command,
                                   unknown, list(args.overrides))
    try:
        status = args.func(args)
        sys.stdout.flush()
    except TBPSError as exc:
        print(f"tbps {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tbps report | head`: the reader has what it wanted
        # Python's documented way out: no second error while flushing at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
