"""A researcher's own task family from their own package, no edit here: through an entry point (`peftbench.tasks`)
or `task.module=`, its task YAML on Hydra's search path — the same two roads as an outside method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import peftbench.bench.run
import pytest
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR

from tests.conftest import REPO, SMOKE, compose_run, records, run_cli

# docs/methods.md's example ("Adding a task"): the GLUE family, scoring one more number per eval split.
MY_FAMILY = '''"""GLUE classification that also reports how many rows each eval split scored."""

from typing import Any

from peftbench.tasks.base import register_family
from peftbench.tasks.glue import Glue


@register_family
class CountedGlue(Glue):
    family = "counted_glue"

    def score(self, logits: Any, references: Any, suffix: str = "") -> dict[str, float]:
        return {**super().score(logits, references, suffix), f"rows_scored{suffix}": float(len(references))}
'''
ENTRY_POINTS = "[peftbench.tasks]\ncounted_glue = my_tasks.counted\n"
SMOKE_OUTSIDE = [arg for arg in SMOKE if not arg.startswith("task=")]


def _task_yaml(name: str) -> str:
    text = (CONF_DIR / "task" / "glue_rte.yaml").read_text()
    return text.replace("name: glue_rte", f"name: {name}").replace("family: glue", "family: counted_glue")


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _run_counted_rte(tmp_path: Path, pythonpath: Path, *args: str) -> dict:
    """Run task=counted_rte at smoke scale with the outside package on PYTHONPATH; its record, checked."""
    store = tmp_path / "runs"
    done = run_cli(
        "task=counted_rte", *args, *SMOKE_OUTSIDE, f"store.root={store}", env={"PYTHONPATH": str(pythonpath)}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return _check_record(store, "counted_rte")


def _check_record(store: Path, task: str) -> dict:
    (path,) = records(store)
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record["error"]
    assert record["task"] == task and record["config"]["task"]["family"] == "counted_glue"
    assert record["metrics"]["rows_scored"] == 16  # task.max_eval_samples=16: the outside family scored them
    return record


def test_an_entry_point_task_family_runs_with_its_yaml_on_the_search_path(tmp_path: Path) -> None:
    site = _write(
        tmp_path / "site",
        {
            "my_tasks/__init__.py": "",
            "my_tasks/counted.py": MY_FAMILY,
            "my_tasks/conf/task/counted_rte.yaml": _task_yaml("counted_rte"),
            "my_tasks-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: my_tasks\nVersion: 0.1\n",
            "my_tasks-0.1.dist-info/entry_points.txt": ENTRY_POINTS,
        },
    )
    _run_counted_rte(tmp_path, site, "hydra.searchpath=[pkg://my_tasks.conf]")
    code = "from peftbench.tasks.base import TASKS; print(TASKS.names())"
    listed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{site}:{REPO}"},
    )  # fmt: skip
    assert "'counted_glue'" in listed.stdout and "'glue'" in listed.stdout, listed.stderr[-2000:]


def test_task_module_imports_a_family_without_entry_points(tmp_path: Path) -> None:
    plugin = _write(
        tmp_path / "plugin",
        {
            "their_tasks/__init__.py": "",
            "their_tasks/counted.py": MY_FAMILY,
            "conf/task/counted_rte.yaml": _task_yaml("counted_rte"),
        },
    )
    record = _run_counted_rte(
        tmp_path, plugin, "task.module=their_tasks.counted", f"hydra.searchpath=[file://{plugin}/conf]"
    )
    assert record["config"]["task"]["module"] == "their_tasks.counted"


def test_a_bad_task_module_or_family_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^task.module='no_such.module' cannot be imported: ModuleNotFoundError"):
        peftbench.bench.run.identify(compose_run(tmp_path, "+task.module=no_such.module"))
    with pytest.raises(
        ConfigError, match=r"^task.module='peftbench.tasks.glue' registers no task family 'mine'; valid choices: "
    ):
        peftbench.bench.run.identify(compose_run(tmp_path, "+task.module=peftbench.tasks.glue", "task.family=mine"))
    with pytest.raises(ConfigError, match=r"^unknown task family 'mine'; valid choices: commonsense, glue, "):
        peftbench.bench.run.identify(compose_run(tmp_path, "task.family=mine"))
