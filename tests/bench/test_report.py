"""The report on fixed records: golden tables, best-lr selection, spread, diverged and offline handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from peftbench.bench.cli import main as cli_main
from peftbench.bench.plots import pareto_front
from peftbench.bench.report import build_tables, write_report
from peftbench.bench.results import Results
from peftbench.core.store import RunStore

from tests.bench.records import write_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STORE = FIXTURES / "records"
GOLDEN = FIXTURES / "golden"


@pytest.fixture(scope="module")
def results() -> Results:
    return Results.load(STORE, "golden")


def test_golden_tables(tmp_path: Path) -> None:
    written = write_report(STORE, "golden", tmp_path)
    for name in (
        "main.md",
        "main.tex",
        "main.csv",
        "lr_sensitivity.md",
        "lr_sensitivity.tex",
        "lr_sensitivity.csv",
        "vs_baseline.md",
        "vs_baseline.tex",
    ):
        assert written[name].read_text() == (GOLDEN / name).read_text(), name
    plots = sorted(p.name for p in (tmp_path / "golden" / "plots").iterdir())
    assert plots == [
        "cost_by_method.pdf", "cost_by_method.png", "intervals.pdf", "intervals.png", "lr_sensitivity.pdf",
        "lr_sensitivity.png",
        "metric_vs_lr_glue_rte.png", "metric_vs_lr_glue_sst2.png", "metric_vs_lr_glue_sst2__offline.png",
        "pareto.pdf", "pareto.png", "pareto_offline.pdf", "pareto_offline.png",
    ]  # fmt: skip


def test_best_lr_skips_a_learning_rate_where_a_seed_diverged(results: Results) -> None:
    best = results.best.set_index(["method", "task"])
    lora_sst2 = best.loc[("lora", "glue_sst2")]
    assert lora_sst2["lr"] == 5e-4  # 1e-3 has one seed at 0.96 but the other diverged
    assert lora_sst2["mean"] == pytest.approx(0.94)
    assert lora_sst2["std"] == pytest.approx(0.0141421, abs=1e-6)
    assert best.loc[("full", "glue_sst2")]["lr"] == 1e-5


def test_sensitivity_spread_and_diverged(results: Results) -> None:
    table = build_tables(results).sensitivity.frame().set_index(["method", "task"])
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


def test_offline_runs_are_labelled_and_failed_runs_ignored(results: Results) -> None:
    main = build_tables(results).main.frame()
    assert "glue_sst2 (offline)" in main.columns and "Avg (offline)" in main.columns
    full = main.set_index("method").loc["full"]
    assert full["glue_rte"] == "" and full["Avg"] == ""  # only a failed RTE run: blank, not zero
    assert full["rank"] == "–"


def test_cli_report_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["report", "golden", "--store", str(STORE), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| lora     | roberta-base | 8      | **76.00 ± 1.41 [68.0, 83.0]** |" in out
    assert "| full     | roberta-base | –      | lora r8    |            | +0.00 [-2.0, +2.0] |" in out  # vs_baseline
    assert cli_main(["report", "nothing", "--store", str(STORE), "--out", str(tmp_path)]) == 2


def test_cli_status_counts(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["status", "golden", "--store", str(STORE)]) == 0
    out = capsys.readouterr().out
    assert "13 ok, 1 diverged, 1 failed" in out
    assert "failed r014 full glue_rte" in out


def test_pareto_front_on_hand_made_points() -> None:
    # (params, score): (1, 50) front; (2, 40) dominated; (3, 60) front; (3, 55) dominated; (10, 60) not better
    assert pareto_front([1, 2, 3, 3, 10], [50, 40, 60, 55, 60]) == [0, 2]


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lora 90% right, pissa 89% (the same answers, two fewer), dora 60%, on 200 examples and two seeds."""
    root = tmp_path_factory.mktemp("marked")
    store = RunStore(root / "runs")
    ids = range(200)
    for seed in (0, 1):
        write_run(store, "m", "lora", seed, [i % 10 != 0 for i in ids])
        write_run(store, "m", "pissa", seed, [i % 10 != 0 and i not in (1, 2) for i in ids])
        write_run(store, "m", "dora", seed, [1 <= i % 10 <= 6 for i in ids])
    return root


def test_bold_best_underline_tied_and_mark_against_the_baseline(marked: Path) -> None:
    written = write_report(marked / "runs", "m", marked / "out")
    rows = {line.split("|")[1].strip(): line for line in written["main.md"].read_text().splitlines()[4:]}
    assert "| **90.00 ± 0.00 [86.0, 94.0]**    |" in rows["lora"]  # the best: bold
    assert "| <u>89.00 ± 0.00 [84.5, 93.0]</u> |" in rows["pissa"]  # not significantly below it: underlined
    assert "| 60.00 ± 0.00 [53.0, 67.0]†       |" in rows["dora"]  # plain, and † against the baseline lora
    assert "| **90.00 [86.0, 94.0]**    |" in rows["lora"] and "| <u>89.00 [84.5, 93.0]</u> |" in rows["pissa"]  # Avg
    assert "significantly different from the baseline lora" in written["main.md"].read_text().splitlines()[0]
    tex = written["main.tex"].read_text()
    assert r"lora & roberta-base & 8 & \textbf{90.00 $\pm$ 0.00 [86.0, 94.0]}" in tex
    assert r"pissa & roberta-base & 8 & \underline{89.00 $\pm$ 0.00 [84.5, 93.0]}" in tex
    assert r"dora & roberta-base & 8 & 60.00 $\pm$ 0.00 [53.0, 67.0]$^\dagger$" in tex
    assert tex.startswith("% Mean ± std over seeds") and "1,000 resamples" in tex.splitlines()[0]
    vs = written["vs_baseline.md"].read_text()
    assert "| dora     | roberta-base | 8      | lora r8    | -30.00 [-36.5, -23.5]† |" in vs
    assert "| pissa    | roberta-base | 8      | lora r8    | -1.00 [-2.5, +0.0]     |" in vs  # never below lora


def test_csv_has_the_interval_and_the_difference(marked: Path) -> None:
    import pandas as pd

    written = write_report(marked / "runs", "m", marked / "out")
    table = pd.read_csv(written["main.csv"]).set_index("method")
    assert list(table.columns) == [
        "model", "rank", "glue_rte", "Avg", "Params %", "baseline", "glue_rte ci_low", "glue_rte ci_high",
        "glue_rte diff", "glue_rte diff_low", "glue_rte diff_high", "glue_rte significant", "Avg ci_low", "Avg ci_high",
        "Avg diff", "Avg diff_low", "Avg diff_high", "Avg significant",
    ]  # fmt: skip
    dora = table.loc["dora"]
    assert (dora["glue_rte"], dora["glue_rte ci_low"], dora["glue_rte ci_high"]) == pytest.approx(
        (60, 53.0, 67.0), abs=0.1
    )
    assert (dora["baseline"], dora["glue_rte diff"], dora["glue_rte significant"]) == ("lora r8", -30.0, True)
    assert (dora["glue_rte diff_low"], dora["glue_rte diff_high"]) == pytest.approx((-36.5, -23.5), abs=0.1)
    assert table.loc["pissa", "glue_rte significant"] == False  # noqa: E712 (numpy bool)
    assert pd.isna(table.loc["lora", "glue_rte diff"]) and pd.isna(table.loc["lora", "baseline"])


def test_baseline_from_the_command_line(marked: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["report", "m", "--store", str(marked / "runs"), "--out", str(marked / "cli")]
    assert cli_main([*args, "--baseline", "dora"]) == 0
    out = capsys.readouterr().out
    assert "| lora     | roberta-base | 8      | dora r8    | +30.00 [+23.5, +36.5]† |" in out
    assert "| **90.00 ± 0.00 [86.0, 94.0]†**    |" in out  # lora now differs from the baseline dora
    assert cli_main([*args, "--baseline", "goat"]) == 2
    assert (
        capsys.readouterr().err
        == "peftbench: error: unknown baseline method 'goat'; valid choices: dora, lora, pissa\n"
    )


def test_a_missing_sidecar_leaves_the_cell_without_an_interval(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    write_run(store, "s", "lora", 0, [True, False] * 50)
    store.predictions_path("s", "lora-roberta-base-glue_rte-0").unlink()  # the record still names it
    tables = build_tables(Results.load(tmp_path, "s"))
    assert tables.main.frame().at[0, "glue_rte"] == "50.00 [n/a]"
    assert tables.intervals.at[0, "ci_low"] != tables.intervals.at[0, "ci_low"]  # NaN


def test_a_sweep_of_failed_runs_only_reports_without_plots(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    store.write({"run_id": "f1", "sweep": "x", "status": "failed", "method": "lora", "model": "m", "task": "glue_rte",
                 "rank": 8, "lr": 1e-4, "seed": 0, "data": "hub", "metrics": {}, "error": "boom",
                 "primary_metric": "accuracy"})  # fmt: skip
    written = write_report(tmp_path / "runs", "x", tmp_path / "out")
    assert not [name for name in written if name.endswith((".png", ".pdf"))]  # nothing completed to plot
    assert "glue_rte" not in written["main.md"].read_text()  # a failed run is not a result


def test_the_interval_plot_takes_a_mean_outside_its_interval(tmp_path: Path) -> None:
    """A percentile interval of Matthews corr. or Pearson need not contain the seeds' mean (they are not means of
    the examples): the plot draws the interval and the point apart instead of failing on a negative error bar."""
    import pandas as pd
    from peftbench.bench.plots import plot_intervals

    intervals = pd.DataFrame([
        {"method": "lora", "model": "m", "rank": 8, "column": "glue_cola", "mean": 61.0, "ci_low": 55.0,
         "ci_high": 60.5, "significant": None},
        {"method": "goat", "model": "m", "rank": 8, "column": "glue_cola", "mean": 58.0, "ci_low": float("nan"),
         "ci_high": float("nan"), "significant": None},
    ])  # fmt: skip
    written = plot_intervals(intervals, tmp_path)
    assert {p.suffix for p in written} == {".png", ".pdf"} and all(p.stat().st_size > 0 for p in written)
