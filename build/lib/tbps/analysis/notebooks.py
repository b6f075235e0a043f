"""Executing the notebooks headless (`make notebooks`, and the test suite): every cell runs
in a fresh kernel, outputs stay in memory, and a failing cell raises with its traceback."""

from __future__ import annotations

import os
from pathlib import Path

NOTEBOOKS = ("attention.ipynb", "retrieval.ipynb")


def run_notebook(path: str | Path, env: dict[str, str] | None = None, cwd: str | Path = ".",
                 timeout: int = 600):
    """Runs ``path`` top to bottom; ``env`` is added to the kernel's environment (e.g.
    TBPS_CKPT, TBPS_FIGURES). Returns the executed notebook (not written anywhere)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    saved = dict(os.environ)
    os.environ.update(env or {})
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def main(argv: list[str] | None = None) -> None:
    """`python -m tbps.analysis.notebooks [--figures DIR]` (`make notebooks`): runs both
    notebooks on TBPS_CKPT or the newest synthetic run and saves their figures into that
    run's folder (``<run>/figures/``), or DIR; `make docs-figures` passes docs/."""
    import argparse

    from .features import newest_checkpoint

    p = argparse.ArgumentParser(prog="python -m tbps.analysis.notebooks")
    p.add_argument("--figures", help="where the figures go (default: <run>/figures/)")
    args = p.parse_args(argv)
    ckpt = Path(os.environ.get("TBPS_CKPT") or newest_checkpoint()).resolve()
    figures = Path(args.figures) if args.figures else ckpt.parent.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        run_notebook(Path("notebooks") / name, {"TBPS_CKPT": str(ckpt),
                                                "TBPS_FIGURES": str(figures.resolve())})
        print(f"ran notebooks/{name} on {ckpt}; figures in {figures}/")


if __name__ == "__main__":
    main()
