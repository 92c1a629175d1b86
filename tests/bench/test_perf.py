"""`peftbench perf`: the table's shape and that every ratio uses the same process's baselines (no timings asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.perf import harness_overhead, run_perf, write_table


def test_perf_table_shape_and_ratios(tmp_path: Path) -> None:
    table = run_perf("tiny-roberta", ["ssl", "goat"], rank=8, batch_size=2, seq=8, steps=2, warmup=1, device="cpu")
    assert list(table["method"]) == ["frozen_base", "lora", "ssl", "goat"]
    assert list(table.columns[:4]) == ["method", "step_ms", "vs_frozen_base", "vs_peft_lora"]
    by_method = table.set_index("method")
    floor, lora = by_method.at["frozen_base", "step_ms"], by_method.at["lora", "step_ms"]
    assert by_method.at["lora", "vs_peft_lora"] == 1.0 and by_method.at["frozen_base", "vs_frozen_base"] == 1.0
    for _, row in table.iterrows():
        assert row["vs_frozen_base"] == pytest.approx(row["step_ms"] / floor)
        assert row["vs_peft_lora"] == pytest.approx(row["step_ms"] / lora)
        assert row["step_ms_p10"] <= row["step_ms"] <= row["step_ms_p90"]
    assert by_method.at["frozen_base", "trainable_params"] < by_method.at["lora", "trainable_params"]
    path = write_table(table, tmp_path, "cpu_tiny")
    text = path.read_text()
    assert "Device: CPU" in text and "| goat" in text
    assert (tmp_path / "cpu_tiny.csv").read_text().splitlines()[0].startswith("method,step_ms,vs_frozen_base")


def test_harness_overhead_reports_both_loops() -> None:
    result = harness_overhead("tiny-roberta", batch_size=2, seq=8, steps=3, rounds=1)
    assert set(result) == {"bare_trainer_ms", "peftbench_ms", "overhead_pct"}
    assert result["overhead_pct"] == pytest.approx(100 * (result["peftbench_ms"] / result["bare_trainer_ms"] - 1))
