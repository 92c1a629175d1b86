"""The report on fixed records: golden tables, best-lr selection, spread, diverged and offline handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main as cli_main
from bench.plots import pareto_front
from bench.report import best_by_lr, build_tables, load_frame, lr_cells, write_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STORE = FIXTURES / "records"
GOLDEN = FIXTURES / "golden"


@pytest.fixture(scope="module")
def frame():
    return load_frame(STORE, "golden")


def test_golden_tables(tmp_path: Path) -> None:
    written = write_report(STORE, "golden", tmp_path)
    for name in (
        "main.md",
        "main.tex",
        "main.csv",
        "lr_sensitivity.md",
        "lr_sensitivity.tex",
        "lr_sensitivity.csv",
    ):
        assert written[name].read_text() == (GOLDEN / name).read_text(), name
    plots = sorted(p.name for p in (tmp_path / "golden" / "plots").iterdir())
    assert plots == [
        "cost_by_method.pdf", "cost_by_method.png", "lr_sensitivity.pdf", "lr_sensitivity.png",
        "metric_vs_lr_glue_rte.png", "metric_vs_lr_glue_sst2.png", "metric_vs_lr_glue_sst2__offline.png",
        "pareto.pdf", "pareto.png", "pareto_offline.pdf", "pareto_offline.png",
    ]  # fmt: skip


def test_best_lr_skips_a_learning_rate_where_a_seed_diverged(frame) -> None:
    best = best_by_lr(lr_cells(frame)).set_index(["method", "task"])
    lora_sst2 = best.loc[("lora", "glue_sst2")]
    assert lora_sst2["lr"] == 5e-4  # 1e-3 has one seed at 0.96 but the other diverged
    assert lora_sst2["mean"] == pytest.approx(0.94)
    assert lora_sst2["std"] == pytest.approx(0.0141421, abs=1e-6)
    assert best.loc[("full", "glue_sst2")]["lr"] == 1e-5


def test_sensitivity_spread_and_diverged(frame) -> None:
    table = build_tables(frame).sensitivity.set_index(["method", "task"])
    row = table.loc[("lora", "glue_sst2")]
    assert (row["best lr"], row["best"], row["worst"], row["spread (max − min)"]) == (
        "0.0005",
        "94.00",
        "91.00",
        "3.00",
    )
    assert row["diverged at lr"] == "0.001"
    assert row["lrs within 1 pt"] == "1/3"  # 94.00 at 5e-4; 91.00 is 3 points off; 1e-3 diverged
    assert table.loc[("lora", "glue_rte")]["lrs within 1 pt"] == "1/2"
    assert table.loc[("full", "glue_sst2")]["spread (max − min)"] == "44.00"


def test_offline_runs_are_labelled_and_failed_runs_ignored(frame) -> None:
    main = build_tables(frame).main
    assert "glue_sst2 (offline)" in main.columns and "Avg (offline)" in main.columns
    full = main.set_index("method").loc["full"]
    assert full["glue_rte"] == "" and full["Avg"] == ""  # only a failed RTE run: blank, not zero
    assert full["rank"] == "–"


def test_cli_report_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["report", "golden", "--store", str(STORE), "--out", str(tmp_path)]) == 0
    assert "| lora     | roberta-base | 8      | 76.00 ± 1.41 |" in capsys.readouterr().out
    assert cli_main(["report", "nothing", "--store", str(STORE), "--out", str(tmp_path)]) == 2


def test_cli_status_counts(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["status", "golden", "--store", str(STORE)]) == 0
    out = capsys.readouterr().out
    assert "13 ok, 1 diverged, 1 failed" in out
    assert "failed r014 full glue_rte" in out


def test_pareto_front_on_hand_made_points() -> None:
    # (params, score): (1, 50) front; (2, 40) dominated; (3, 60) front; (3, 55) dominated; (10, 60) not better
    assert pareto_front([1, 2, 3, 3, 10], [50, 40, 60, 55, 60]) == [0, 2]
