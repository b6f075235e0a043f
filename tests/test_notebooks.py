"""The notebooks run headless on a tiny checkpoint, every cell, and draw their figures; the
committed files carry no outputs."""

from pathlib import Path

import nbformat
import pytest

from tbps.analysis.notebooks import NOTEBOOKS, run_notebook

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    nb = run_notebook(FOLDER / name, {"TBPS_CKPT": str(ckpt), "TBPS_FIGURES": str(tmp_path)},
                      cwd=tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    expected = {"attention.ipynb": ["attention_masked_words.png", "attention_rollout.png",
                                        "attention_words.png"],
                "retrieval.ipynb": ["retrieval_distribution.png", "retrieval_topk.png"]}[name]
    assert figures == expected


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_stripped(name):
    nb = nbformat.read(str(FOLDER / name), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in source and "class " not in source  # library code lives in tbps
