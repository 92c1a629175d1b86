"""Faults a sweep must survive: kill -9 at random moments, a run killed mid-training and resumed.

Marked slow (`make test-slow`; CI runs them): they start real processes and kill them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import peftbench.bench.run
import pytest
from peftbench.core.store import PREDICTIONS_SUFFIX, RunStore

from tests.conftest import REPO, compose_run

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
GRID = [
    "model=tiny-roberta",
    "trainer=smoke",
    "data=offline",
    "task=glue_rte",
    "task.max_eval_samples=8",
    "lr=1e-4,2e-4,3e-4,4e-4,5e-4",
    "seed=0,1,2,3",
]  # fmt: skip  (20 points)


def _sweep(store: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "peftbench.bench.run", "-m", *GRID, f"store.root={store}",
         f"hydra.sweep.dir={store.parent}/hydra"],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def test_kill_9_at_random_moments_then_relaunch_until_done(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    chance = random.Random(7)
    kills = 0
    while kills < 5:
        process = _sweep(store)
        time.sleep(chance.uniform(3.0, 12.0))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    for _ in range(5):  # relaunch until the sweep finishes on its own
        process = _sweep(store)
        if process.wait(timeout=900) == 0:
            break
    assert process.returncode == 0
    folder = store / "adhoc"
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    assert len(records) == 20 == len({r["run_id"] for r in records})  # one per point, no duplicate
    assert {r["status"] for r in records} == {"ok"}
    assert sorted((r["lr"], r["seed"]) for r in records) == sorted(
        (lr, seed) for lr in (1e-4, 2e-4, 3e-4, 4e-4, 5e-4) for seed in range(4)
    )  # fmt: skip
    sidecars = {p.name for p in folder.glob(f"*{PREDICTIONS_SUFFIX}")}
    assert (
        sidecars == {r["predictions_file"] for r in records} == {f"{r['run_id']}{PREDICTIONS_SUFFIX}" for r in records}
    )
    assert RunStore(store).orphans("adhoc") == []  # no sidecar without its record, no record without its sidecar
    assert all(len(RunStore(store).read_predictions("adhoc", r["run_id"])) == 8 for r in records)  # complete files
    logs = {p.name for p in (folder / "logs").iterdir()}
    assert logs == {f"{r['run_id']}.log" for r in records}  # each run's library chatter, appended across relaunches
    leftovers = [
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix != ".json" and p.name not in sidecars and p.parent.name != "logs"
    ]  # fmt: skip
    assert leftovers == []  # no temp files, no partial checkpoints
    assert not list(folder.glob("*.json.*"))


KILL_AT_SAVE = """
import os, signal, sys
import peftbench.bench.checkpoints as c
original = c.MarkCompleteCheckpoints.on_save
def on_save(self, args, state, control, **kwargs):
    result = original(self, args, state, control, **kwargs)
    if state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)  # preempted right after a complete checkpoint
    return result
c.MarkCompleteCheckpoints.on_save = on_save
import runpy
sys.argv = ["peftbench.bench.run", *sys.argv[1:]]
runpy.run_module("peftbench.bench.run", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "setup",
    [
        # PEFT's LoRA on an encoder; a hand-written method on a decoder whose embeddings are tied
        ["model=tiny-roberta", "task=glue_rte", "method.lora_dropout=0.1"],
        [
            "method=singlora",
            "model=tiny-llama",
            "+model.config.tie_word_embeddings=true",
            "task=gsm8k",
            "task.generation.max_new_tokens=4",
        ],
    ],
    ids=["lora-roberta", "singlora-tied-llama"],
)
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path: Path, setup: list[str]) -> None:
    overrides = [*setup, "trainer.max_steps=8", "trainer.checkpoint_steps=2", "lr=1e-3"]
    uninterrupted = peftbench.bench.run.run(compose_run(tmp_path / "a", *overrides))
    assert uninterrupted["resumed_from_step"] is None

    store = tmp_path / "b"
    args = ["trainer=smoke", "data=offline", "task.max_eval_samples=16", *overrides, f"store.root={store}"]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_SAVE.format(step=6), *args], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not list((store / "adhoc").glob("*.json"))  # killed: no record yet
    work = store / "adhoc" / ".work" / uninterrupted["run_id"]
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    (work / "checkpoint-8").mkdir()  # a checkpoint the kill interrupted: no marker, so ignored and removed

    resumed = peftbench.bench.run.run(compose_run(store, *overrides))
    assert resumed["run_id"] == uninterrupted["run_id"]
    assert resumed["resumed_from_step"] == 6 and resumed["steps"] == 8
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["final_loss"] == pytest.approx(uninterrupted["final_loss"], rel=1e-6)
    assert not work.exists()  # checkpoints are gone once the record is written
