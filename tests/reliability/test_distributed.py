"""Several processes, one run (torchrun, gloo on CPU): one record written by rank 0, every eval example scored
once, and a run that loses a process leaves nothing behind and completes when launched again.

Marked slow (`make test-slow`; CI runs them): each starts two real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peftbench.core.store import RunStore

from tests.conftest import REPO

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
KILL_RANK_1 = """
import os, signal, sys
sys.path.insert(0, os.getcwd())  # the checkout under test, not an installed copy
import peftbench.bench.checkpoints as c
original = c.MarkCompleteCheckpoints.on_step_end
def on_step_end(self, args, state, control, **kwargs):
    if state.global_step == 2 and int(os.environ["RANK"]) == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # one process of the run dies
    return original(self, args, state, control, **kwargs)
c.MarkCompleteCheckpoints.on_step_end = on_step_end
import runpy
runpy.run_module("peftbench.bench.run", run_name="__main__")  # as `python -m bench.run` runs it
"""


def _torchrun(
    store: Path, *overrides: str, script: str | None = None, port: int = 29511
) -> subprocess.CompletedProcess:
    entry = ["-m", "peftbench.bench.run"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    if script:  # torchrun runs a file or a module; a file holding the patched entry point
        path = store.parent / f"entry_{port}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        entry = [str(path)]
    command = [*launcher, *entry, "model=tiny-roberta", "trainer=smoke", "data=offline", f"store.root={store}",
               "trainer.max_steps=4", *overrides]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def _records(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "adhoc").glob("*.json"))]


def test_two_processes_one_classifier_record_and_each_example_once(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    result = _torchrun(store, "task=glue_rte", "task.max_eval_samples=15")
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = _records(store)
    assert record["status"] == "ok" and record["world_size"] == 2
    rows = RunStore(store).read_predictions("adhoc", record["run_id"])
    assert sorted(r["id"] for r in rows) == list(range(15))  # 15 rows over 2 processes: each once
    assert record["metrics"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 15)


def test_two_processes_one_generation_record_and_each_prompt_once(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    result = _torchrun(
        store, "model=tiny-llama", "task=gsm8k", "task.max_eval_samples=5", "task.generation.max_new_tokens=4",
        "task.max_seq_length=160", port=29512,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = _records(store)
    assert record["status"] == "ok" and record["world_size"] == 2
    rows = RunStore(store).read_predictions("adhoc", record["run_id"])
    assert [r["id"] for r in rows] == list(range(5)) and all("text" in r for r in rows)
    assert record["metrics"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 5)


def test_a_lost_process_leaves_nothing_and_a_relaunch_completes(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    overrides = ["task=glue_rte", "task.max_eval_samples=8"]
    killed = _torchrun(store, *overrides, script=KILL_RANK_1, port=29513)
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-2000:]  # rank 1 died mid-run
    folder = store / "adhoc"
    assert not folder.exists() or not [p for p in folder.iterdir() if p.is_file()]  # no record, no predictions
    again = _torchrun(store, *overrides, port=29514)
    assert again.returncode == 0, again.stderr[-3000:]
    (record,) = _records(store)
    assert record["status"] == "ok" and (folder / record["predictions_file"]).exists()
    assert RunStore(store).orphans("adhoc") == []


FSDP_PROBE = """
import os, sys
sys.path.insert(0, os.getcwd())  # the checkout under test, not an installed copy
import transformers
original = transformers.Trainer.train
def train(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    with open(os.environ["FSDP_PROBE"] + f".{self.args.process_index}", "w") as handle:
        handle.write(f"{self.is_fsdp_enabled} {type(self.model_wrapped).__name__}")
    return result
transformers.Trainer.train = train
import runpy
runpy.run_module("peftbench.bench.run", run_name="__main__")  # as `python -m bench.run` runs it
"""


def test_fsdp_settings_reach_accelerate() -> None:
    """trainer=fsdp gives accelerate's FSDP plugin full sharding with one decoder layer per unit."""
    from peftbench.bench.grid import sweep_config
    from peftbench.bench.train import training_arguments

    cfg = sweep_config("none", ["model=tiny-llama", "method=full", "trainer=fsdp", "task=gsm8k"])
    plugin = training_arguments(
        cfg.trainer, {"lr": cfg.lr, "seed": cfg.seed}, "/tmp/fsdp-args", use_bf16=False
    ).fsdp_plugin_args
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["auto_wrap_policy"].upper() == "TRANSFORMER_BASED_WRAP"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_config_runs_over_two_processes(tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer=fsdp (the documented way to run a 7B model over a node's GPUs) on two CPU processes (gloo): accelerate
    shards only on accelerators, so on CPU it runs data-parallel; the sharded run itself needs GPUs."""
    store = tmp_path / "runs"
    probe = tmp_path / "probe"
    monkeypatch.setitem(ENV, "FSDP_PROBE", str(probe))
    result = _torchrun(
        store, "model=tiny-llama", f"method={method}", "trainer=fsdp", "task=gsm8k", "trainer.max_steps=2",
        "trainer.per_device_train_batch_size=2", "task.max_eval_samples=4", "task.generation.max_new_tokens=4",
        "task.max_seq_length=160", "trainer.checkpoint_steps=0", script=FSDP_PROBE, port=29515 + (method == "lora"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = _records(store)
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["config"]["trainer"]["fsdp"] == "full_shard auto_wrap"
    for rank in (0, 1):  # accelerate's CPU path: data-parallel (on GPUs: FullyShardedDataParallel)
        assert (probe.parent / f"probe.{rank}").read_text().split() == ["False", "DistributedDataParallel"]
