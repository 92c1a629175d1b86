"""Sweeps through a real SLURM cluster (`hydra/launcher=slurm`): records arrive, a preempted job resumes.

They need a cluster that answers `sinfo`: `make test-slurm` starts a one-node one on this machine
(scripts/slurm_local.sh: munge, slurmctld and slurmd on localhost; root and apt) and runs them.
The default suite leaves them out (marker `slurm`); CI runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peftbench.bench.checkpoints import MARKER

from tests.conftest import REPO, records

pytestmark = pytest.mark.slurm
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# the shipped launcher config, sized down to one CPU node
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]  # fmt: skip
POINT = ["model=tiny-roberta", "trainer=smoke", "data=offline", "task=glue_rte", "task.max_eval_samples=8"]


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, check=False).stdout.split()
    if not {"idle", "mix", "alloc"} & set(states):
        pytest.fail("no SLURM cluster answers `sinfo`; run `make test-slurm` (starts one with scripts/slurm_local.sh)")


def _launch(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    log = (tmp_path / "launcher.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "peftbench.bench.run", "-m", *SLURM, *POINT, *overrides,
         f"store.root={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in records(tmp_path / "runs")]


def _finish(process: subprocess.Popen, tmp_path: Path) -> None:
    assert process.wait(timeout=900) == 0, (tmp_path / "launcher.log").read_text()[-3000:]


def test_a_sweep_through_slurm_writes_one_record_per_point(tmp_path: Path) -> None:
    _finish(_launch(tmp_path, "lr=1e-4,2e-4,5e-4"), tmp_path)
    written = _records(tmp_path)
    assert sorted(r["lr"] for r in written) == [1e-4, 2e-4, 5e-4]
    assert {r["status"] for r in written} == {"ok"} and len({r["run_id"] for r in written}) == 3
    [script] = (tmp_path / "sweep" / ".submitit").glob("*/*_submission.sh")
    text = script.read_text()
    assert "#SBATCH --array=0-2%3" in text and "#SBATCH --job-name=peftbench-adhoc" in text
    assert "source .venv/bin/activate" in text
    assert "export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in text
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*_*/*_result.pkl"))) == 3  # each ran as an array task


def test_a_preempted_job_is_requeued_and_resumes_from_its_last_complete_checkpoint(tmp_path: Path) -> None:
    process = _launch(tmp_path, "lr=1e-4", "trainer.max_steps=600", "trainer.checkpoint_steps=50")
    work = tmp_path / "runs" / "adhoc" / ".work"
    deadline = time.monotonic() + 300
    while not list(work.glob(f"*/checkpoint-*/{MARKER}")):
        assert time.monotonic() < deadline and process.poll() is None, "no complete checkpoint before the job ended"
        time.sleep(0.2)
    job = subprocess.run(["squeue", "-h", "-o", "%i", "--name=peftbench-adhoc"], capture_output=True, text=True,
                         check=True).stdout.split()[0]  # fmt: skip
    # what SLURM sends before preempting (submitit asks for USR2 120 s ahead): submitit requeues the job
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _finish(process, tmp_path)
    [record] = _records(tmp_path)
    assert record["status"] == "ok" and record["steps"] == 600
    assert record["resumed_from_step"] is not None and record["resumed_from_step"] % 50 == 0
    assert 50 <= record["resumed_from_step"] < 600
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    assert not list(work.iterdir())  # the run's checkpoints are gone once its record is written
