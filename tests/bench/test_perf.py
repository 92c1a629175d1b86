"""`peftbench perf`: the table's shape and that every ratio uses the same process's baselines (no timings asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from peftbench.bench.perf import harness_overhead, run_perf, write_table


def test_perf_table_shape_and_ratios(tmp_path: Path) -> None:
    table = run_perf(
        "tiny-roberta", ["ssl", "goat", "pissa"], rank=8, batch_size=2, seq=8, steps=2, warmup=1, device="cpu", rounds=2
    )
    assert list(table["method"]) == ["floor", "head_only", "lora", "ssl", "goat", "pissa"]
    assert list(table.columns[:4]) == ["method", "step_ms", "vs_floor", "vs_peft_lora"]
    by_method = table.set_index("method")
    floor, lora = by_method.at["floor", "step_ms"], by_method.at["lora", "step_ms"]
    assert by_method.at["lora", "vs_peft_lora"] == 1.0 and by_method.at["floor", "vs_floor"] == 1.0
    for _, row in table.iterrows():
        assert row["vs_floor"] == pytest.approx(row["step_ms"] / floor)
        assert row["vs_peft_lora"] == pytest.approx(row["step_ms"] / lora)
        assert row["spread_pct"] >= 0
    # the floor trains no weight; the head-only row its head; LoRA its adapters and head
    assert by_method.at["floor", "trainable_params"] == 0
    assert 0 < by_method.at["head_only", "trainable_params"] < by_method.at["lora", "trainable_params"]
    assert table.attrs["lora_identical_max_dev"] == pytest.approx(abs(by_method.at["pissa", "vs_peft_lora"] - 1))
    path = write_table(table, tmp_path, "cpu_tiny")
    text = path.read_text()
    assert "Device: CPU" in text and "| goat" in text and "Resolution" in text
    assert (tmp_path / "cpu_tiny.csv").read_text().splitlines()[0].startswith("method,step_ms,vs_floor")


def test_cpu_clock_times_the_process_and_is_refused_on_a_gpu(tmp_path: Path) -> None:
    import torch
    from peftbench.bench.perf import check_clock
    from peftbench.core.errors import ConfigError

    table = run_perf("tiny-roberta", ["pissa"], 8, 2, 8, steps=2, warmup=1, device="cpu", rounds=1, clock="cpu")
    assert table.attrs["clock"] == "cpu" and (table["step_ms"] > 0).all()
    assert "CPU time per step, `--clock cpu`" in write_table(table, tmp_path, "cpu_clock").read_text()
    with pytest.raises(ConfigError, match="--clock='cpu' is not valid on cuda; valid: wall, or cpu on a CPU"):
        check_clock("cpu", torch.device("cuda"))


def test_the_floor_backpropagates_through_every_layer_without_weight_gradients() -> None:
    import torch
    from peftbench.bench.perf import load_base, perf_context, prepare, synthetic_batch

    spec, base = load_base("tiny-roberta")
    batch = synthetic_batch(base.config.vocab_size, 2, 8, torch.device("cpu"))
    model, _, _ = prepare("floor", base, spec, perf_context(spec, 8, 1, batch))
    seen = []
    model.roberta.encoder.layer[0].register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(1))
    model(**batch).loss.backward()
    assert seen and all(p.grad is None for p in model.parameters())  # through layer 0, and no weight gradient


def test_harness_overhead_reports_both_loops() -> None:
    result = harness_overhead("tiny-roberta", batch_size=2, seq=8, steps=3, rounds=1)
    assert set(result) == {"bare_trainer_ms", "peftbench_ms", "overhead_pct"}
    assert result["overhead_pct"] == pytest.approx(100 * (result["peftbench_ms"] / result["bare_trainer_ms"] - 1))


def test_a_spent_budget_stops_after_the_reference_rows(tmp_path: Path) -> None:
    """--budget 0: floor, head-only and LoRA are measured (the ratios need them), no other row starts, and the
    table says where it stopped."""
    table = run_perf(
        "tiny-roberta", ["ssl", "goat"], rank=8, batch_size=2, seq=8, steps=1, warmup=0, device="cpu", rounds=2,
        budget_s=0.0,
    )  # fmt: skip
    assert list(table["method"]) == ["floor", "head_only", "lora"]
    assert table.attrs["stopped"] == "the 0 s budget ran out in round 1 of 2, before ssl"
    assert table.attrs["rounds_done"] == {"floor": 1, "head_only": 1, "lora": 1}
    text = write_table(table, tmp_path, "cpu_budget").read_text()
    assert "- stopped early: the 0 s budget ran out in round 1 of 2, before ssl" in text
