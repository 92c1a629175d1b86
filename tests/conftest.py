"""Shared helpers: compose a run config with Hydra (tiny model, few steps, offline data) and run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from peftbench.bench.method_defaults import install as install_method_defaults
from peftbench.core.paths import CONF_DIR

REPO = CONF_DIR.parent
install_method_defaults()  # every compose in the tests sees the methods' defaults, as a run does
# The tests never read the repository's hub lock (a filled one names real commits the fixtures do not have): an
# absent lock file is an empty lock. Tests of the lock point PEFTBENCH_HUB_LOCK at their own file.
os.environ["PEFTBENCH_HUB_LOCK"] = str(REPO / "tests" / "hub" / "no.lock.yaml")
# A tiny randomly initialised RoBERTa, 4 optimizer steps, the offline RTE rows capped small.
SMOKE = ["model=tiny-roberta", "trainer=smoke", "data=offline", "task=glue_rte", "task.max_eval_samples=16"]


def compose_run(store: Path, *overrides: str) -> DictConfig:
    """The run config a command line `python -m bench.run SMOKE... overrides...` would give."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*SMOKE, f"store.root={store}", *overrides])


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m bench.run args...` in the repo as a user would."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "peftbench.bench.run", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def records(store: Path, sweep: str = "adhoc") -> list[Path]:
    folder = store / sweep
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def sidecar(store: Path, record: dict, sweep: str = "adhoc") -> dict[str, list[dict]]:
    """A record's predictions sidecar, rows grouped by eval split; checks the record names it."""
    from peftbench.core.store import PREDICTIONS_SUFFIX, RunStore

    assert record["predictions_file"] == f"{record['run_id']}{PREDICTIONS_SUFFIX}"
    by_split: dict[str, list[dict]] = {}
    for row in RunStore(store).read_predictions(sweep, record["run_id"]):
        by_split.setdefault(row["split"], []).append(row)
    for rows in by_split.values():
        assert [row["id"] for row in rows] == list(range(len(rows)))  # each example once, in dataset order
    return by_split


def accuracy_of(rows: list[dict]) -> float:
    return sum(bool(row["correct"]) for row in rows) / len(rows)
