"""`peftbench report <sweep> --paper <table>` on fixed records: the golden table, and the rules behind each cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main as cli_main
from bench.paper import paper_report, write_paper_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STORE, GOLDEN = FIXTURES / "records", FIXTURES / "golden"
TABLE = "goat_t4_roberta_large_glue"


@pytest.fixture(scope="module")
def shown():
    return paper_report(STORE, "paper", TABLE).set_index("Method")


def test_golden_paper_table(tmp_path: Path) -> None:
    paths = write_paper_report(STORE, "paper", TABLE, tmp_path)
    for kind, path in paths.items():
        assert path.read_text() == (GOLDEN / f"paper_{TABLE}.{kind}").read_text(), kind


def test_cells_follow_the_rules(shown) -> None:
    # best lr among eligible ones (5e-4 had a diverged seed), seed mean ± std, Δ against the paper
    assert shown.at["LoRA", "RTE"] == "85.50 ± 0.71 (84.47, Δ +1.03)"
    # the paper's metric for the column: GOAT reports CoLA accuracy, not Matthews corr.
    assert shown.at["LoRA", "CoLA"] == "84.00 (83.41, Δ +0.59)"
    # not run here: the paper's number alone, never a zero
    assert shown.at["DoRA", "RTE"] == "(84.48)"
    # offline protocol: labelled, no Δ
    assert shown.at["GOAT", "SST-2"] == "80.00 [offline] (96.21)"
    # full FT has no rank; a failed run is not a result
    assert shown.at["Full FT", "MRPC"] == "86.00 (85.29, Δ +0.71)" and shown.at["Full FT", "QNLI"] == "(94.49)"
    assert shown.at["Full FT MoE (not in peftbench)", "CoLA"] == "(86.02)"
    assert shown.at["LoRA", "Avg"] == "(88.46)"  # no Avg of ours until every column is run


def test_cli_paper_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["report", "paper", "--store", str(STORE), "--out", str(tmp_path), "--paper", TABLE]) == 0
    assert "| LoRA" in capsys.readouterr().out
    assert cli_main(["report", "paper", "--store", str(STORE), "--paper", "goat_t9"]) == 2
    assert "unknown paper table 'goat_t9'; valid choices: goat_t1_clip_vit" in capsys.readouterr().err
