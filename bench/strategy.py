"""How a sweep spends its runs: `strategy=grid` (every point of the grid, the default) or `strategy=lr_then_seeds`.

`lr_then_seeds` runs in two stages, as most papers did: stage 1 is the first seed (as the sweep lists its seeds) over
the whole lr grid; stage 2 is every other seed, only at each (method, model, task, rank)'s best lr on that first seed —
for subspace_t3 4 + 4 runs per cell instead of 4 × 5. "Best" is the report's own rule, called here, not restated
(`bench.report.lr_cells` and `best_by_lr`: the best seed-mean of the task's primary metric; an lr whose run diverged is
not eligible), so the lr that stage 2 runs is the lr the report will pick from stage 1.

Stage 2 is computed from the store when it is reached, so a sweep killed at any point is finished by launching it
again: runs already recorded are skipped, and a cell whose stage 1 is not complete (a run missing, or failed and so run
again) gets its stage 2 once a launch completes it. `strategy_runs` lists both stages of a grid from the store;
the sweeper (hydra_plugins/peftbench_sweeper) launches them, `peftbench status --grid` shows them, and a future
`peftbench plan` can count them. Each run's record says which strategy and stage ran it (`bench.config.sweep_strategy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.config import STRATEGIES
from peftbench.core.validation import check_choice

Point = dict[str, str]  # one grid point: override key -> value, as `peftbench.bench.grid.grid_points` gives them


def check_strategy(name: Any) -> str:
    """A sweep strategy's name, or a one-line ConfigError naming the valid ones."""
    check_choice("sweep strategy", name, STRATEGIES)
    return name


@dataclass(frozen=True)
class PointInfo:
    """What a grid point runs: its run_id, the report's cell (method, model, task label, rank) and its lr after the
    sweep's protocol rules."""

    run_id: str
    cell: tuple[Any, ...]
    lr: float


@dataclass(frozen=True)
class StageRun:
    """One run of a strategy: the point that launches it, its run_id and its stage (1, or 2 under lr_then_seeds)."""

    point: Point
    run_id: str
    stage: int


@dataclass
class StrategyRuns:
    """A grid's runs under a strategy, as far as the store tells (one StageRun per run_id)."""

    name: str
    first: list[StageRun] = field(default_factory=list)  # stage 1 (every run under grid)
    second: list[StageRun] = field(default_factory=list)  # stage 2 of the cells whose stage 1 is complete
    second_total: int = 0  # stage-2 runs once every cell's stage 1 is complete (known before any run)
    waiting: list[tuple[Any, ...]] = field(default_factory=list)  # cells whose stage 1 is not complete
    no_eligible: list[tuple[Any, ...]] = field(default_factory=list)  # cells whose every lr diverged: no stage 2
    first_seed: str | None = None
    other_seeds: list[str] = field(default_factory=list)


def point_info(cfg: DictConfig) -> PointInfo:
    """A composed grid point's run_id, cell and lr, from `peftbench.bench.run.identify` (which validates it too)."""
    from peftbench.bench.results import task_label  # the report's cell: the offline protocol is its own column
    from peftbench.bench.run import identify

    method, _, axes, task, _, run_id = identify(cfg)
    return PointInfo(
        run_id, (method.name, cfg.model.name, task_label(task.name, axes["data"]), axes["rank"]), axes["lr"]
    )


def sweep_identify(sweep: str) -> Callable[[Point], PointInfo]:
    """`point_info` of a point of a sweep composed from conf/ (what `status` and a plan use; the sweeper composes
    through Hydra's own loader instead)."""
    from peftbench.bench.grid import sweep_config

    return lambda point: point_info(sweep_config(sweep, [f"{k}={v}" for k, v in point.items()]))


def expand(overrides: list[Override]) -> list[Point]:
    """The points of a launch, in order: Hydra's basic sweeper's cartesian product of its parsed overrides (the sweep
    file's `hydra.sweeper.params`, then the command line's, which win), each point holding every override."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return [dict(item.split("=", 1) for item in job) for job in BasicSweeper.split_arguments(overrides, None)[0]]


def launch_points(sweep: str, overrides: list[str]) -> list[Point]:
    """The points `python -m bench.run sweep=<sweep> <overrides>` runs, as its sweeper expands them."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from peftbench.bench.grid import sweep_config
    from peftbench.core.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # a loader, for glob(...) values
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    node = sweep_config(sweep, fixed).hydra.sweeper.params
    params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        return expand(parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides]))


def _seeds(points: Iterable[Point]) -> list[str]:
    return list(dict.fromkeys(p["seed"] for p in points if "seed" in p))


def strategy_runs(
    name: str, points: list[Point], identify: Callable[[Point], PointInfo], store_root: str | Path, sweep: str
) -> StrategyRuns:
    """The runs of a grid's `points` under strategy `name`, stage 2 as far as the records of `sweep` in the store at
    `store_root` decide it. `identify` gives a point's PointInfo (composing its config)."""
    from peftbench.core.store import COMPLETED, RunStore

    check_strategy(name)
    seeds = _seeds(points)
    two_stages = name == "lr_then_seeds" and len(seeds) > 1
    runs = StrategyRuns(name, first_seed=seeds[0] if two_stages else None, other_seeds=seeds[1:] if two_stages else [])
    cells: dict[tuple[Any, ...], list[tuple[Point, PointInfo]]] = {}
    seen: set[str] = set()
    for point in points:
        if two_stages and point["seed"] != runs.first_seed:
            continue
        info = identify(point)
        if info.run_id in seen:
            continue  # the same run reached from another point (full FT at every rank, an lr a protocol rule fixes)
        seen.add(info.run_id)
        runs.first.append(StageRun(point, info.run_id, 1))
        cells.setdefault(info.cell, []).append((point, info))
    if not two_stages:
        return runs
    for members in cells.values():  # per variant (another swept key) of a cell: one stage-2 run per other seed
        variants = len(members) // max(1, len({info.lr for _, info in members}))
        runs.second_total += max(1, variants) * len(runs.other_seeds)
    statuses = {r["run_id"]: r["status"] for r in RunStore(store_root).scan(sweep).records}
    ready = {cell for cell, members in cells.items() if all(statuses.get(i.run_id) in COMPLETED for _, i in members)}
    runs.waiting = [cell for cell in cells if cell not in ready]
    chosen = _best_lr_run_ids(store_root, sweep, {i.run_id for c in ready for _, i in cells[c]})
    for cell in [c for c in cells if c in ready]:
        picks = [point for point, info in cells[cell] if info.run_id in chosen]
        if not picks:
            runs.no_eligible.append(cell)
        for point in picks:
            for seed in runs.other_seeds:
                second = {**point, "seed": seed}
                runs.second.append(StageRun(second, identify(second).run_id, 2))
    return runs


def _best_lr_run_ids(store_root: str | Path, sweep: str, run_ids: set[str]) -> set[str]:
    """Of these (stage-1) runs, those at their cell's best lr by the report's rule (bench.results, not a second one)."""
    from peftbench.bench.results import CELL_KEYS, Results, best_by_lr, lr_cells

    frame = Results.load(store_root, sweep).runs
    if frame.empty:
        return set()
    frame = frame[frame["run_id"].isin(run_ids)]
    if frame.empty:
        return set()
    best = best_by_lr(lr_cells(frame.assign(value=frame["primary"], select_by=frame["primary"]), CELL_KEYS), CELL_KEYS)
    return set(frame.merge(best[[*CELL_KEYS, "lr"]], on=[*CELL_KEYS, "lr"])["run_id"])


def sweep_status(sweep: str, store_root: str | Path, overrides: list[str]) -> list[str] | None:
    """`peftbench status <sweep> --grid [overrides]` under a two-stage strategy: each stage's runs and how many are
    recorded, the runs known to be missing, and the one command that goes on; None under `grid`."""
    from peftbench.bench.grid import sweep_config
    from peftbench.core.store import COMPLETED, RunStore

    points = launch_points(sweep, overrides)
    cfg = sweep_config(sweep, [f"{k}={v}" for k, v in points[0].items()])
    name = check_strategy(cfg.get("strategy", "grid"))
    if name == "grid":
        return None
    runs = strategy_runs(name, points, sweep_identify(sweep), store_root, cfg.sweep)
    done = {r["run_id"] for r in RunStore(store_root).scan(cfg.sweep).records if r["status"] in COMPLETED}
    first_done = sum(run.run_id in done for run in runs.first)
    second_done = sum(run.run_id in done for run in runs.second)
    missing = [run for run in [*runs.first, *runs.second] if run.run_id not in done]
    stage = 1 if first_done < len(runs.first) else 2 if second_done < len(runs.second) else None
    lines = [
        f"strategy {name}: {'finished' if stage is None else f'at stage {stage}'}",
        f"  stage 1 (seed {runs.first_seed} over the lr grid): {len(runs.first)} runs, {first_done} done",
        f"  stage 2 (seeds {', '.join(runs.other_seeds)} at each cell's best lr): {runs.second_total} runs, "
        f"{second_done} done"
        + (f"; {len(runs.waiting)} cells wait for their stage 1" if runs.waiting else "")
        + (f"; {len(runs.no_eligible)} cells have no eligible lr (every lr diverged)" if runs.no_eligible else ""),
    ]
    if stage is not None:
        launch = " ".join(["python -m bench.run", f"sweep={sweep}", *overrides])
        lines.append(f"missing: {len(missing)} runs known without a complete record; `{launch}` goes on")
        given = {o.split("=", 1)[0] for o in overrides if "," not in o}  # the launch's own values: not repeated
        lines += [
            f"  stage {r.stage}: " + " ".join(f"{k}={v}" for k, v in r.point.items() if k not in given) for r in missing
        ]
    return lines
