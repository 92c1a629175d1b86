"""End to end on a tiny model: the record, skipping, determinism, divergence and failure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import peftbench.bench.run
import pytest
import torch
from peftbench.bench.config import compute_run_id, experiment_config, normalized_axes
from peftbench.bench.record import FIELDS
from peftbench.bench.train import BenchTrainer

from tests.conftest import accuracy_of, compose_run, records, run_cli, sidecar


def test_a_run_writes_one_complete_record(store: Path) -> None:
    record = peftbench.bench.run.run(compose_run(store, "rank=4", "lr=1e-3", "seed=3"))
    files = records(store)
    assert [f.stem for f in files] == [record["run_id"]]
    on_disk = json.loads(files[0].read_text())
    assert set(on_disk) == set(FIELDS)
    assert on_disk["status"] == "ok" and on_disk["error"] is None
    assert (on_disk["method"], on_disk["model"], on_disk["task"]) == ("lora", "tiny-roberta", "glue_rte")
    assert (on_disk["rank"], on_disk["lr"], on_disk["seed"], on_disk["data"]) == (4, 1e-3, 3, "offline")
    assert on_disk["steps"] == 4 and math.isfinite(on_disk["final_loss"])
    assert on_disk["metrics"]["primary"] == on_disk["metrics"]["accuracy"]
    assert on_disk["protocol"]["name"] == "offline"
    assert on_disk["protocol"]["train_rows"] + 84 == 277  # RTE dev: 277 rows, 30% held out
    assert on_disk["protocol"]["eval_rows"] == {"eval": 16}  # capped by task.max_eval_samples
    assert on_disk["config"]["trainer"]["max_steps"] == 4
    assert on_disk["config"]["task"]["max_eval_samples"] == 16
    assert on_disk["head_params"] > 0 and on_disk["trainable_params"] > on_disk["head_params"]
    assert on_disk["peak_memory_kind"] == "cpu_rss" and on_disk["peak_memory_bytes"] > 0
    assert on_disk["train_seconds"] > 0
    assert on_disk["versions"]["torch"].startswith("2.13.0")
    assert on_disk["device"] == "cpu"
    rows = sidecar(store, on_disk)["eval"]  # the predictions sidecar, written before the record
    assert len(rows) == 16 and accuracy_of(rows) == pytest.approx(on_disk["metrics"]["accuracy"])
    assert {row["reference"] for row in rows} <= {0, 1} and {row["prediction"] for row in rows} <= {0, 1}


def test_second_identical_launch_is_skipped(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_run(store)
    first = peftbench.bench.run.run(cfg)
    mtime = records(store)[0].stat().st_mtime_ns
    with caplog.at_level("INFO", logger="peftbench"):
        assert peftbench.bench.run.run(cfg) is None
    assert f"skip {first['run_id']}: already done" in caplog.text
    assert records(store)[0].stat().st_mtime_ns == mtime
    assert (store / "adhoc" / first["predictions_file"]).stat().st_mtime_ns <= mtime  # not rewritten either


def test_same_seed_same_metrics_and_other_seed_differs(store: Path, tmp_path: Path) -> None:
    a = peftbench.bench.run.run(compose_run(store, "seed=1"))
    b = peftbench.bench.run.run(compose_run(tmp_path / "other_store", "seed=1"))
    c = peftbench.bench.run.run(compose_run(store, "seed=2"))
    assert a["run_id"] == b["run_id"]
    assert a["metrics"] == b["metrics"] and a["final_loss"] == b["final_loss"]
    same = [(p / "adhoc" / a["predictions_file"]).read_bytes() for p in (store, tmp_path / "other_store")]
    assert same[0] == same[1]  # same config, same sidecar, byte for byte
    assert c["final_loss"] != a["final_loss"]


def test_run_id_ignores_paths_loggers_and_bookkeeping(tmp_path: Path) -> None:
    def run_id(*overrides: str) -> str:
        cfg = compose_run(tmp_path / "a", *overrides)
        return compute_run_id(experiment_config(cfg, normalized_axes(cfg, uses_rank=True)))

    base = run_id()
    assert run_id("store.root=/elsewhere") == base
    assert run_id("+logger.project=x") == base
    assert run_id("sweep=demo", "model=tiny-roberta", "trainer=smoke", "data=offline", "task=glue_rte",
                  "task.max_eval_samples=16", "task.max_seq_length=128", "lr=5e-4", "rank=8") == base  # fmt: skip
    assert run_id("trainer.progress_bar=true", "store.save_adapter=true") == base
    assert run_id("lr=1e-3") != base
    assert run_id("trainer.max_steps=5") != base
    assert run_id("method.lora_alpha=8") != base


def test_full_fine_tuning_ignores_rank(store: Path) -> None:
    a = peftbench.bench.run.run(compose_run(store, "method=full", "rank=4", "lr=1e-4"))
    assert a["rank"] is None and a["config"]["rank"] is None
    assert peftbench.bench.run.run(compose_run(store, "method=full", "rank=8", "lr=1e-4")) is None  # same run_id


def test_nan_loss_gives_a_diverged_record(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = BenchTrainer.compute_loss

    def poisoned(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        loss = original(self, *args, **kwargs)
        return loss * torch.tensor(float("nan")) if self.state.global_step >= 1 else loss

    monkeypatch.setattr(BenchTrainer, "compute_loss", poisoned)
    record = peftbench.bench.run.run(compose_run(store))
    assert record["status"] == "diverged"
    assert record["error"] == "loss became NaN/inf at step 2"
    assert record["metrics"] == {} and record["steps"] == 2
    assert json.loads(records(store)[0].read_text())["status"] == "diverged"


def test_exception_gives_failed_record_and_the_next_point_runs(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(peftbench.bench.run, "train_and_evaluate", explode)
        failed = peftbench.bench.run.run(compose_run(store, "lr=1e-3"))
    assert failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    ok = peftbench.bench.run.run(compose_run(store, "lr=2e-3"))
    assert ok["status"] == "ok"
    assert peftbench.bench.run.run(compose_run(store, "lr=1e-3"))["status"] == "ok"  # failed points are re-run
    assert {json.loads(p.read_text())["status"] for p in records(store)} == {"ok"}


# ~40 s (a real multirun): in `make test-slow`, which CI runs
@pytest.mark.slow
def test_a_hydra_sweep_goes_on_after_a_failed_point(tmp_path: Path) -> None:
    """A real multirun: the hub's address refuses connections, so the first point fails; the second runs.

    (With the hub switched off instead, a missing asset stops the sweep with one line: see
    tests/reliability/test_logger_prefetch_launchers.py.)
    """
    store = tmp_path / "runs"
    done = run_cli(
        "-m", "data=hub,offline", "model=tiny-roberta", "trainer=smoke", "task=glue_rte",
        "task.max_eval_samples=8", f"store.root={store}", "hydra.sweep.dir=" + str(tmp_path / "hydra"),
        env={"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
             "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    by_data = {r["data"]: r for r in (json.loads(p.read_text()) for p in records(store))}
    assert by_data["hub"]["status"] == "failed"
    assert "nyu-mll/glue" in by_data["hub"]["error"] and "\n" not in by_data["hub"]["error"]
    assert by_data["offline"]["status"] == "ok"
