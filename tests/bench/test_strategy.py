"""The two-stage sweep (`strategy=lr_then_seeds`): which runs each stage holds, by the report's best-lr rule; a real
tiny sweep killed at its stage 2 and re-launched; the records and `status --grid` saying which strategy ran."""

from __future__ import annotations

import itertools
import json
import runpy
import sys
from pathlib import Path

import peftbench.bench.run
import peftbench.bench.train
import pytest
from hydra.core.global_hydra import GlobalHydra
from peftbench.bench.cli import main as cli_main
from peftbench.bench.config import STAGE_KEY, sweep_strategy
from peftbench.bench.results import Results
from peftbench.bench.strategy import PointInfo, strategy_runs
from peftbench.core.errors import ConfigError
from peftbench.core.store import RunStore

from tests.conftest import compose_run

M, T = "m", "t"  # one model, one task: the cells differ by method and rank


def fake_identify(point: dict[str, str]) -> PointInfo:
    """A point's run as the harness would resolve it: full FT has no rank and one lr (a protocol rule)."""
    full = point["method"] == "full"
    rank, lr = (None, 1e-4) if full else (int(point["rank"]), float(point["lr"]))
    return PointInfo(f"{point['method']}-{rank}-{lr:g}-{point['seed']}", (point["method"], M, T, rank), lr)


def grid() -> list[dict[str, str]]:
    axes = {
        "method": ["lora", "full", "dora"],
        "rank": ["4", "8"],
        "lr": ["1e-4", "1e-3", "1e-2"],
        "seed": ["0", "1", "2"],
    }
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def write(store: RunStore, method: str, rank: int | None, lr: float, seed: int, status: str, primary: float) -> None:
    run_id = f"{method}-{rank}-{lr:g}-{seed}"
    store.write({"run_id": run_id, "sweep": "s", "status": status, "method": method, "model": M, "task": T,
                 "rank": rank, "lr": lr, "seed": seed, "data": "hub", "metrics": {"primary": primary}})  # fmt: skip


def test_stage_two_runs_each_cells_best_first_seed_lr_by_the_reports_rule(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    write(store, "lora", 4, 1e-4, 0, "ok", 0.70)
    write(store, "lora", 4, 1e-3, 0, "ok", 0.80)  # the best: 1e-2 scores higher but diverged, so is not eligible
    write(store, "lora", 4, 1e-2, 0, "diverged", 0.99)
    write(store, "lora", 4, 1e-4, 1, "ok", 1.00)  # another seed's run (an earlier full grid) does not choose
    write(store, "lora", 8, 1e-4, 0, "ok", 0.90)  # the best is the grid's first lr here
    write(store, "lora", 8, 1e-3, 0, "ok", 0.60)
    write(store, "lora", 8, 1e-2, 0, "ok", 0.50)
    write(store, "full", None, 1e-4, 0, "ok", 0.75)  # one run for every rank and lr point of full FT
    write(store, "dora", 4, 1e-4, 0, "ok", 0.95)
    write(store, "dora", 4, 1e-3, 0, "failed", 0.0)  # stage 1 not complete: stage 2 waits (a re-launch re-runs it)
    write(store, "dora", 4, 1e-2, 0, "ok", 0.10)
    for lr in (1e-4, 1e-3, 1e-2):
        write(store, "dora", 8, lr, 0, "diverged", 0.5)  # no eligible lr: no stage 2

    runs = strategy_runs("lr_then_seeds", grid(), fake_identify, tmp_path, "s")
    assert (runs.first_seed, runs.other_seeds) == ("0", ["1", "2"])
    assert len(runs.first) == 3 + 3 + 1 + 3 + 3 and {r.stage for r in runs.first} == {1}
    assert {r.point["seed"] for r in runs.first} == {"0"}
    assert runs.second_total == 5 * 2  # five cells, two more seeds each: known before any run
    assert [(r.point["method"], r.point["rank"], r.point["lr"], r.point["seed"], r.stage) for r in runs.second] == [
        ("lora", "4", "1e-3", "1", 2), ("lora", "4", "1e-3", "2", 2),
        ("lora", "8", "1e-4", "1", 2), ("lora", "8", "1e-4", "2", 2),
        ("full", "4", "1e-4", "1", 2), ("full", "4", "1e-4", "2", 2),
    ]  # fmt: skip
    assert [r.run_id for r in runs.second][:2] == ["lora-4-0.001-1", "lora-4-0.001-2"]
    assert runs.waiting == [("dora", M, T, 4)]
    assert runs.no_eligible == [("dora", M, T, 8)]


def test_grid_strategy_is_every_run_once_and_a_bad_name_is_one_line(tmp_path: Path) -> None:
    runs = strategy_runs("grid", grid(), fake_identify, tmp_path, "s")
    assert (len(runs.first), runs.second, runs.second_total) == (2 * 2 * 3 * 3 + 3, [], 0)
    with pytest.raises(ConfigError, match=r"^unknown sweep strategy 'lr_first'; valid choices: grid, lr_then_seeds$"):
        strategy_runs("lr_first", grid(), fake_identify, tmp_path, "s")


def test_the_record_field_names_the_strategy_and_the_stage_the_sweeper_gave(tmp_path: Path) -> None:
    assert sweep_strategy(compose_run(tmp_path)) == {"name": "grid", "stage": None}
    cfg = compose_run(tmp_path, "strategy=lr_then_seeds", f"++{STAGE_KEY}=2")
    assert sweep_strategy(cfg) == {"name": "lr_then_seeds", "stage": 2}
    with pytest.raises(ConfigError, match=r"^unknown sweep strategy 'x'; valid choices: grid, lr_then_seeds$"):
        peftbench.bench.run.check_config(compose_run(tmp_path, "strategy=x"))


# runpy's note that peftbench.bench.run is already imported (by this file): the launch runs a fresh copy, as `-m` does
RUNPY_NOTE = "ignore:'peftbench.bench.run' found in sys.modules:RuntimeWarning"


def launch(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """`python -m bench.run args...`, in this process (the libraries imported once, not per launch)."""
    monkeypatch.setattr(sys, "argv", [peftbench.bench.run.__file__, *args])
    GlobalHydra.instance().clear()
    try:
        runpy.run_module("peftbench.bench.run", run_name="__main__")  # as `-m` does: Hydra finds conf/ beside the file
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.filterwarnings(RUNPY_NOTE)
@pytest.mark.parametrize("mode", [["-m"], []])
def test_an_unknown_strategy_stops_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, mode: list[str]
) -> None:
    store = tmp_path / "runs"
    with pytest.raises(SystemExit) as stop:
        launch(monkeypatch, *mode, "model=tiny-roberta", "trainer=smoke", "data=offline", "task=glue_rte",
               "lr=1e-3,2e-3" if mode else "lr=1e-3", "strategy=lr_first", f"store.root={store}",
               f"hydra.sweep.dir={tmp_path}/hydra", f"hydra.run.dir={tmp_path}/hydra")  # fmt: skip
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["peftbench: error: unknown sweep strategy 'lr_first'; valid choices: grid, lr_then_seeds"]
    assert not store.exists()


# MiniLM's demo sweep narrowed to a tiny model: LoRA, 2 lrs x 2 seeds, 4 steps a run
TINY = ["model=tiny-roberta", "trainer=smoke", "method=lora", "task.max_eval_samples=64", "lr=1e-4,3e-2", "seed=0,1",
        "strategy=lr_then_seeds"]  # fmt: skip


@pytest.mark.filterwarnings(RUNPY_NOTE)
def test_a_killed_two_stage_sweep_is_finished_by_a_relaunch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "runs"
    args = ["sweep=demo", *TINY, f"store.root={store}", f"hydra.sweep.dir={tmp_path}/hydra"]
    train = peftbench.bench.train.train_and_evaluate

    def killed_at_stage_two(*a, **k):  # noqa: ANN002, ANN003
        if a[6].seed == 1:  # the first run of stage 2: the process dies (Ctrl-C, a kill) mid-run, no record
            raise KeyboardInterrupt
        return train(*a, **k)

    monkeypatch.setattr(peftbench.bench.train, "train_and_evaluate", killed_at_stage_two)  # what the launch imports
    with pytest.raises(KeyboardInterrupt):
        launch(monkeypatch, *args)
    first = {r["run_id"]: r for r in RunStore(store).iter_records("demo")}
    assert sorted((r["lr"], r["seed"]) for r in first.values()) == [(1e-4, 0), (3e-2, 0)]
    assert all(r["strategy"] == {"name": "lr_then_seeds", "stage": 1} for r in first.values())
    scores = {r["lr"]: r["metrics"]["primary"] for r in first.values()}
    assert scores[1e-4] != scores[3e-2]  # a real choice: the stage-1 runs differ
    best = max(scores, key=scores.get)

    capsys.readouterr()
    assert cli_main(["status", "demo", "--store", str(store), "--grid", *TINY]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:4] == [
        "strategy lr_then_seeds: at stage 2",
        "  stage 1 (seed 0 over the lr grid): 2 runs, 2 done",
        "  stage 2 (seeds 1 at each cell's best lr): 1 runs, 0 done",
    ]
    assert out[-1].startswith("  stage 2: ") and out[-1].endswith(f" lr={best:g} seed=1")

    monkeypatch.setattr(peftbench.bench.train, "train_and_evaluate", train)
    launch(monkeypatch, *args)
    after = {r["run_id"]: r for r in RunStore(store).iter_records("demo")}
    assert {i: after[i]["finished_at"] for i in first} == {i: r["finished_at"] for i, r in first.items()}  # not re-run
    (second,) = [r for i, r in after.items() if i not in first]
    assert (second["lr"], second["seed"], second["status"]) == (best, 1, "ok")  # only the chosen lr
    assert second["strategy"] == {"name": "lr_then_seeds", "stage": 2}
    assert json.loads((store / "demo" / f"{second['run_id']}.json").read_text())["strategy"]["stage"] == 2

    assert cli_main(["status", "demo", "--store", str(store), "--grid", *TINY]) == 0
    assert "strategy lr_then_seeds: finished" in capsys.readouterr().out
    results = Results.load(store, "demo")  # the report reads these records: it states the strategy, picks the same lr
    assert results.strategies == ["lr_then_seeds"] and results.best["lr"].tolist() == [best]
