"""32 processes writing records into one store folder at once: nothing lost, corrupt or duplicated."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from peftbench.bench.record import new_record
from peftbench.core.store import RunStore

WRITERS, PER_WRITER = 32, 8


def _write_many(root: str, writer: int) -> None:
    store = RunStore(root)
    for i in range(PER_WRITER):
        # every writer also writes run "shared-<i>": the same point finished by several jobs at once
        for run_id in (f"w{writer:02d}-{i}", f"shared-{i}"):
            store.write(new_record(run_id=run_id, sweep="conc", status="ok", method="lora", model="m", task="t",
                                   rank=8, lr=1e-3, seed=0, metrics={"primary": writer / 100}, config={}))  # fmt: skip


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # forked: the imports are shared
    workers = [context.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    folder = tmp_path / "conc"
    files = sorted(folder.iterdir())
    assert [f for f in files if not f.name.endswith(".json")] == []  # no temp or partial files left
    names = {f.stem for f in files}
    assert names == {f"w{w:02d}-{i}" for w in range(WRITERS) for i in range(PER_WRITER)} | {
        f"shared-{i}" for i in range(PER_WRITER)
    }  # fmt: skip
    for f in files:
        record = json.loads(f.read_text())  # every file is one whole record
        assert record["run_id"] == f.stem and record["status"] == "ok"
    scan = RunStore(tmp_path).scan("conc")
    assert scan.corrupted == [] and len(scan.records) == WRITERS * PER_WRITER + PER_WRITER
