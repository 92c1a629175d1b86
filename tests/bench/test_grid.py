"""Grid points are not runs: `resolve_grid` gives every point the run_id `bench.run` computes for it (protocol rules
and targets applied), counts the distinct runs and says what each rule changed. (The sizes the docs and the Makefile
state are checked against the computed runs in tests/test_docs_facts.py.)"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from peftbench.bench.cli import main as cli_main
from peftbench.bench.grid import _compose_combinations, resolve_grid, sweep_config
from peftbench.bench.run import identify


def _run_id(sweep: str, point: dict[str, str]) -> str:
    """The run_id of a point composed on its own, as a multirun job composes it."""
    return identify(sweep_config(sweep, [f"{k}={v}" for k, v in point.items()]))[-1]


@pytest.mark.parametrize(("sweep", "sample"), [("demo", 4), ("glue", 4), ("subspace_fair", 4), ("goat_t4", 3),
                                               ("singlora_t1", 3)])  # fmt: skip
def test_each_point_has_the_run_id_of_composing_it_alone(sweep: str, sample: int) -> None:
    grid = resolve_grid(sweep)
    indices = random.Random(0).sample(range(len(grid.points)), min(sample, len(grid.points)))
    for i in indices:
        assert grid.run_ids[i] == _run_id(sweep, grid.points[i]), grid.points[i]


def test_composing_each_group_option_once_equals_composing_each_combination() -> None:
    axes = {"method": ["lora", "adalora", "full"], "task": ["glue_rte", "glue_mnli"]}
    for chosen, cfg in list(_compose_combinations("subspace_t2", [], axes)):
        whole = OmegaConf.to_container(sweep_config("subspace_t2", [f"{k}={v}" for k, v in chosen.items()]))
        del whole["hydra"]
        assert OmegaConf.to_container(cfg, resolve=False) == whole, chosen


def test_runs_are_counted_after_the_protocol_rules() -> None:
    glue = resolve_grid("glue")  # LoRA runs at its script's lr per task whatever the lr axis: 3 points, 1 run
    assert (len(glue.points), len(glue.runs)) == (2 * 8 * 3 * 3, 8 * 3 * 3 + 8 * 3)  # full FT 72 + LoRA 24
    demo = resolve_grid("demo")
    assert (len(demo.points), len(demo.runs)) == (12, 8)
    fair = resolve_grid("subspace_fair")  # methods without a rank: one run for both ranks
    assert (len(fair.points), len(fair.runs)) == (20, 16)


def test_each_rule_says_what_it_changed_on_how_many_points() -> None:
    text = {effect.index: effect.describe() for effect in resolve_grid("glue").rules}
    assert text[9].endswith("36 points; lr 1e-05/2e-05/3e-05 -> 0.0005 on 36")
    assert "trainer.num_train_epochs 10 -> 80 on 18" in text[3]
    assert "trainer.per_device_train_batch_size = 16 (already)" in text[1]
    goat = {effect.index: effect.describe() for effect in resolve_grid("goat_t4").rules}
    assert goat[1] == "  1. when method=['full', 'ft_moe']: 14 points; lr 0.0001 -> 1e-05 on 14"


def test_grid_prints_the_runs_and_the_values_they_train_with(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["grid", "goat_t4", "--store", str(tmp_path), "--points"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep 'goat_t4': 77 grid points, 77 runs\n")
    assert "  lr: 0.0001 (63), 1e-05 (14)\n" in out  # the axis says 1e-4 for all 77; 14 run at 1e-5
    assert "  trainer.num_train_epochs: 10 (66), 50 (11)\n" in out
    full_rte = next(line for line in out.splitlines() if "method=full task=glue_rte" in line)
    assert "lr=1e-05" in full_rte and "trainer.num_train_epochs=50" in full_rte


def test_status_counts_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["status", "glue", "--store", str(tmp_path), "--grid"]) == 0
    out = capsys.readouterr().out
    assert "missing: 96 of 96 runs without a complete record (144 grid points)" in out
    assert len([line for line in out.splitlines() if "python -m bench.run sweep=glue" in line]) == 96


@pytest.mark.slow  # 12,160 points each: ~35 s on 2 busy cores
@pytest.mark.parametrize("sweep", ["subspace_t2", "subspace_t3", "subspace_t4"])
def test_subspace_grids_are_fewer_runs_than_points(sweep: str) -> None:
    grid = resolve_grid(sweep)
    rankless = 6 * 8 * 4 * 5  # full FT, SAM-PARSER, (IA)3, SSL, SSB, BitFit: the 4 ranks are one run
    adalora = 2 * 8 * 4 * 5  # AdaLoRA (+ MPC-o) at the scripts' lr per task (a rule): the 4 lrs are one run
    assert (len(grid.points), len(grid.runs)) == (19 * 8 * 4 * 4 * 5, rankless + adalora + 11 * 8 * 4 * 4 * 5)
