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


def test_a_kernel_started_in_notebooks_finds_the_runs_and_data_of_the_project(tmp_path,
                                                                             monkeypatch):
    """Jupyter starts the kernel in notebooks/: the newest run and the run's relative data
    root are found in the folder above, not regenerated beside the notebook."""
    from tbps.analysis.features import newest_checkpoint, project_path

    for stamp in ("20260101-000000", "20260102-000000"):
        ckpt = tmp_path / "runs" / "synthetic" / stamp / "checkpoints" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
    (tmp_path / "data" / "synthpedes").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert newest_checkpoint().parts[-3] == "20260102-000000"
    assert project_path("data/synthpedes") == tmp_path / "data" / "synthpedes"
    assert project_path("/abs/path") == Path("/abs/path")
    monkeypatch.chdir(tmp_path / "data")  # no runs above: the error says what to do
    with pytest.raises(FileNotFoundError, match="make train"):
        newest_checkpoint(experiment="acsa_synthetic")
