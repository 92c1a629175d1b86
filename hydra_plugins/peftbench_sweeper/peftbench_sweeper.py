"""The sweeper of every peftbench sweep: Hydra's basic sweeper, plus the two stages of `strategy=lr_then_seeds`.

Under `strategy=grid` (the default) it is the basic sweeper. Under `lr_then_seeds` it launches stage 1 (the first seed
over the lr grid), then reads the store and launches stage 2 (the other seeds at each cell's best lr), both through the
sweep's own launcher (local, SLURM, Ray), each job told its stage by `++strategy_stage=N` (bench/strategy.py). Runs
already recorded are not launched again, so a re-launch after a kill goes on where the store stands. Hydra instantiates
sweepers only from the `hydra_plugins` package, hence this module; the logic is in bench/strategy.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf
from peftbench.core.errors import ConfigError

log = logging.getLogger("peftbench")


class StrategySweeper(BasicSweeper):
    """BasicSweeper with a sweep strategy (`strategy` in the sweep's config)."""

    def sweep(self, arguments: list[str]) -> Any:
        from peftbench.bench.strategy import check_strategy

        assert self.config is not None
        try:  # a bad strategy, or a point that does not compose, stops the sweep before any run, with one line
            name = check_strategy(self.config.get("strategy", "grid"))
            return super().sweep(arguments) if name == "grid" else self._two_stages(name, arguments)
        except ConfigError as exc:
            print(f"peftbench: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def _two_stages(self, name: str, arguments: list[str]) -> list[Sequence[JobReturn]]:
        from peftbench.bench.config import STAGE_KEY
        from peftbench.bench.strategy import expand, point_info, strategy_runs
        from peftbench.core.store import RunStore

        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        points = expand(parser.parse_overrides([*self._parse_config(), *arguments]))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        loader, master = self.hydra_context.config_loader, self.config
        known: dict[tuple[tuple[str, str], ...], Any] = {}  # each point composed once, across both stages

        def identify(point: dict[str, str]) -> Any:
            key = tuple(point.items())
            if key not in known:
                known[key] = point_info(loader.load_sweep_config(master, [f"{k}={v}" for k, v in point.items()]))
            return known[key]

        store, sweep = RunStore(self.config.store.root), str(self.config.sweep)
        returns: list[Sequence[JobReturn]] = []
        job_index = 0
        for stage in (1, 2):
            runs = strategy_runs(name, points, identify, store.root, sweep)  # stage 2: from the store as it is now
            todo = [run for run in (runs.first if stage == 1 else runs.second) if not store.is_done(sweep, run.run_id)]
            total = len(runs.first) if stage == 1 else runs.second_total
            what = f"seed {runs.first_seed} over the lr grid" if stage == 1 else "the other seeds at each best lr"
            log.info("%s stage %d (%s): %d runs, %d to run now", name, stage, what, total, len(todo))
            if stage == 2 and runs.waiting:
                log.warning("%d cells have an incomplete stage 1 (failed runs): re-launch to run them and their "
                            "stage 2", len(runs.waiting))  # fmt: skip
            jobs = [[*(f"{k}={v}" for k, v in run.point.items()), f"++{STAGE_KEY}={stage}"] for run in todo]
            for batch in self.split_overrides_to_chunks(jobs, self.max_batch_size) if jobs else []:
                assert self.launcher is not None
                results = self.launcher.launch(batch, initial_job_idx=job_index)
                for result in results:
                    _ = result.return_value  # as the basic sweeper: a job's exception ends the sweep
                job_index += len(batch)
                returns.append(results)
        return returns
