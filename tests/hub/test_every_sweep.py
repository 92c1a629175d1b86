"""Every `conf/sweep/*.yaml` through the path real users take, on hub-shaped fixtures: the unchanged sweep file,
Hydra's multirun, `load_dataset(hub id)` and `from_pretrained(hub id)` from an offline Hugging Face cache, at
smoke scale (one lr, seed and rank per method; 2 optimizer steps; 4 eval rows; 4 new tokens), then its
`peftbench report --paper` table. `make test-hub` (CI runs it); a sweep file added without being run here fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.cli import main as cli_main
from peftbench.bench.config import group_choices
from peftbench.bench.grid import grid_axes, sweep_config
from peftbench.bench.paper_tables import load_paper_table, paper_tables

from tests.conftest import REPO, sidecar
from tests.hub.fixtures import build_hub_cache, model_commit

pytestmark = pytest.mark.hub
SMOKE = [
    "trainer.max_steps=2", "trainer.per_device_train_batch_size=2", "trainer.per_device_eval_batch_size=4",
    "trainer.checkpoint_steps=0", "trainer.progress_bar=false", "task.max_eval_samples=4",
]  # fmt: skip
GENERATION = ["task.generation.max_new_tokens=4", "task.generation.batch_size=4"]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hub_cache(tmp_path_factory.mktemp("hf_home"))


def _paper_table(sweep: str) -> str | None:
    return next((t for t in paper_tables() if load_paper_table(t).get("sweep") == sweep), None)


def _override_value(value: Any) -> str:
    """A container as Hydra's override grammar writes it (keys bare, strings quoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_override_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_override_value(item) for item in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _smoke_schedules(cfg: DictConfig) -> list[str]:
    """AdaLoRA's step schedule at smoke scale. The Subspace sweeps' rules set each task's script schedule (tinit
    8000 / tfinal 50000 on MNLI), which `check_config` rightly refuses in 2 steps, and a rule wins over the command
    line; so the sweep's own rules are passed on with one rule after them (a later rule wins) that fits 2 steps."""
    rules = OmegaConf.to_container(cfg.protocol_rules, resolve=False) if cfg.get("protocol_rules") else []
    if not any("tinit" in (rule["set"].get("method") or {}) for rule in rules):
        return []
    smoke = {"when": {"method": ["adalora", "adalora_mpco"]}, "set": {"method": {"tinit": 0, "tfinal": 1, "deltaT": 1}}}
    return [f"protocol_rules={_override_value([*rules, smoke])}"]


def _one_of_each(sweep: str) -> list[str]:
    """The grid with one value on the lr, seed and rank axes: every method x task x model once."""
    axes = grid_axes(sweep_config(sweep))
    return [f"{key}={values[0]}" for key, values in axes.items() if key in ("lr", "seed", "rank")]


@pytest.mark.parametrize("sweep", [s for s in group_choices("sweep")])
def test_sweep_runs_through_the_hub_path(sweep: str, hf_home: Path, tmp_path: Path) -> None:
    cfg = sweep_config(sweep)
    tasks = grid_axes(cfg).get("task") or [cfg.task.name]
    generative = any(sweep_config(sweep, [f"task={t}"]).task.family in ("gsm8k", "commonsense") for t in tasks)
    # the fixtures have 8 rows a split: 2 held out, their loss after each of the 2 steps (where the sweep scores them)
    held_out = ["task.held_out.rows=2"] if cfg.task.get("held_out") else []
    held_out += ["trainer.val_loss_every=1"] if cfg.trainer.get("val_loss_every") else []
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip
    store = tmp_path / "runs"
    command = [
        sys.executable, "-m", "peftbench.bench.run", f"sweep={sweep}", *_one_of_each(sweep), *SMOKE,
        *(GENERATION if generative else []), *held_out, *_smoke_schedules(cfg), f"store.root={store}",
        f"hydra.sweep.dir={tmp_path}/hydra",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(p.read_text()) for p in (store / cfg.sweep).glob("*.json")]
    failed = [f"{r['method']} {r['task']} {r['model']}: {r['error']}" for r in records if r["status"] != "ok"]
    assert records and not failed, failed
    assert {r["data"] for r in records} == {cfg.data}
    for record in records:  # the hub assets read, at the fixtures' commits (no lock here: `locked` false)
        reads = record["revisions"]
        assert all(read["revision"] and read["locked"] is False for read in reads.values()), reads
        assert any(key.startswith("datasets/") for key in reads) == (record["data"] == "hub"), reads
        assert all(read["revision"] == model_commit(key) for key, read in reads.items() if "/" in key and
                   not key.startswith("datasets/")), reads  # fmt: skip
    for record in records:  # every task family's sidecar: one row per evaluated example of each split
        by_split = sidecar(store, record, cfg.sweep)
        eval_rows = record["protocol"]["eval_rows"]
        assert {split: len(rows) for split, rows in by_split.items()} == eval_rows, record["task"]
    table = _paper_table(cfg.sweep)
    if table is not None:
        assert cli_main(["report", cfg.sweep, "--store", str(store), "--out", str(tmp_path), "--paper", table]) == 0
        assert (tmp_path / cfg.sweep / "tables" / f"paper_{table}.md").read_text().count("|") > 10
