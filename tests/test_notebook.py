"""notebooks/explore.ipynb executes end to end (on fixed records, so CI needs no sweep of its own)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"


def test_notebook_pair_is_in_sync() -> None:
    script = jupytext.read(NOTEBOOKS / "explore.py")
    notebook = nbformat.read(NOTEBOOKS / "explore.ipynb", as_version=4)
    assert [c.source for c in script.cells] == [c.source for c in notebook.cells]


def test_explore_notebook_runs(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PEFTBENCH_STORE", str(FIXTURES))
    monkeypatch.setenv("PEFTBENCH_SWEEP", "golden")
    monkeypatch.setenv("PEFTBENCH_OUT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOKS.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(NOTEBOOKS / "explore.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = "".join(str(o.get("text", "")) for c in notebook.cells for o in c.get("outputs", []))
    assert "15 records in" in outputs
    assert (tmp_path / "golden" / "plots" / "lr_sensitivity.png").exists()
    assert (tmp_path / "golden" / "plots" / "intervals.png").exists()
    shown = [o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])]
    # the main table with its intervals and marks: the golden LoRA row on RTE, its two seeds' sidecars resampled
    assert any("| **76.00 ± 1.41 [68.0, 83.0]** |" in d.get("text/markdown", "") for d in shown)
    intervals = next(d["text/plain"] for d in shown if "ci_low" in d.get("text/plain", ""))
    assert re.search(r"lora +roberta-base +8 +glue_rte +76\.0 +68\.00 +83\.0 ", intervals), intervals
