"""The paper-table sweeps: they compose, their grids have the papers' sizes, and grid-wide method settings
reach the methods that have them (and only those)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from peftbench.bench.cli import main as cli_main
from peftbench.bench.grid import grid_axes, grid_points, sweep_config
from peftbench.bench.run import identify


@pytest.mark.parametrize(
    ("sweep", "points"),
    [("glue", 2 * 8 * 3 * 3), ("goat_t4", 11 * 7), ("subspace_t2", 19 * 8 * 4 * 4 * 5), ("subspace_t3", 12160),
     ("subspace_t4", 12160), ("singlora_t1", 2 * 4 * 3), ("gsm8k", 8), ("commonsense", 10), ("vit", 10 * 7),
     ("goat_t1", 10 * 7), ("goat_t2", 8), ("goat_t3", 10), ("goat_t6", 3 * 3), ("singlora_t2", 4 * 3 * 2),
     ("subspace_fair", 10 * 2), ("subspace_fair_llama3", 8 * 2),
     ("demo", 2 * 3 * 2), ("demo_methods", 9 * 2), ("demo_llm", 2), ("demo_llm_gsm8k", 2)],
)  # fmt: skip
def test_paper_sweeps_compose_with_their_grid(sweep: str, points: int) -> None:
    assert len(grid_points(grid_axes(sweep_config(sweep)))) == points


def method_of(sweep: str, *overrides: str) -> dict:
    cfg = sweep_config(sweep, list(overrides))
    identify(cfg)  # every point of the grid must pass validation: unknown keys would fail here
    return OmegaConf.to_container(cfg.method, resolve=True)


def test_grid_wide_alpha_and_dropout_reach_only_the_methods_that_have_them() -> None:
    lora = method_of("goat_t4", "method=lora", "rank=32")
    assert (lora["lora_alpha"], lora["lora_dropout"]) == (64, 0.05)
    assert method_of("goat_t4", "method=goat", "rank=32")["lora_alpha"] == 64
    assert method_of("goat_t4", "method=full") == {"name": "full"}
    assert method_of("glue", "method=lora")["lora_alpha"] == 16  # the default where a sweep sets none
    assert method_of("singlora_t1", "method=singlora")["alpha"] == 8
    assert method_of("singlora_t1", "method=loraplus")["loraplus_lr_ratio"] == 20


@pytest.mark.parametrize("sweep", ["goat_t4", "goat_t1", "goat_t2", "goat_t3", "goat_t6", "singlora_t2"])
def test_every_point_of_a_paper_grid_validates(sweep: str) -> None:
    for point in grid_points(grid_axes(sweep_config(sweep))):
        identify(sweep_config(sweep, [f"{k}={v}" for k, v in point.items()]))


def test_track_sweeps_carry_the_papers_settings() -> None:
    vit = sweep_config("goat_t1", ["task=img_dtd", "method=goat"])
    assert (vit.trainer.num_train_epochs, vit.trainer.per_device_train_batch_size) == (76, 512)  # per-set epochs
    assert sweep_config("goat_t1", ["task=img_svhn"]).trainer.num_train_epochs == 4
    commonsense = sweep_config("goat_t3", ["method=lora"])
    assert (commonsense.model.name, commonsense.task.name, commonsense.task.generation.num_beams) == (
        "llama2-7b", "commonsense", 4
    )  # fmt: skip
    assert method_of("goat_t3", "method=lora", "rank=32")["lora_alpha"] == 64
    gsm8k = sweep_config("goat_t2", ["method=goat"])
    assert (gsm8k.sweep, gsm8k.task.train_on, gsm8k.task.max_train_samples, gsm8k.trainer.num_train_epochs) == (
        "goat_t2", "metamathqa", 100000, 5
    )  # fmt: skip


def test_grid_leaves_time_to_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One question, one answer: `grid` states no GPU-hours of its own (a store's recorded GPU runs included), it
    names `plan`, whose figure comes from each run's FLOPs and is checked against recorded runs by `plan --check`."""
    folder = tmp_path / "goat_t4"
    folder.mkdir()
    record = {"run_id": "r0", "sweep": "goat_t4", "status": "ok", "device": "NVIDIA H100", "run_seconds": 36.0}
    (folder / "r0.json").write_text(json.dumps(record))
    assert cli_main(["grid", "goat_t4", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "  time: `peftbench plan goat_t4` (each run's GPU-hours;" in out
    assert not re.search(r"GPU-hours for|\d GPU-hours|median", out), out


def test_status_lists_the_missing_points_once_per_run_id(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["status", "demo", "--store", str(tmp_path), "--grid"]) == 0
    out = capsys.readouterr().out
    assert "missing: 8 of 8 runs without a complete record (12 grid points)" in out  # full FT: one lr (a rule)
    assert "python -m bench.run sweep=demo method=full task=glue_sst2 rank=8 lr=0.0005 seed=1" in out
    assert "method=full task=glue_sst2 rank=8 lr=0.002" not in out
