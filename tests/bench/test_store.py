"""The results store: atomic writes, a writer killed mid-write, unreadable files, stale temp files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from peftbench.core.store import TEMP_PREFIX, RunStore

from tests.conftest import REPO


def record(run_id: str, status: str = "ok", sweep: str = "s") -> dict:
    return {"run_id": run_id, "sweep": sweep, "status": status, "metrics": {"primary": 0.5}}


def test_write_read_and_done(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write(record("a"))
    store.write(record("b", "diverged"))
    store.write(record("c", "failed"))
    assert store.read("s", "a")["status"] == "ok"
    assert store.is_done("s", "a") and store.is_done("s", "b") and not store.is_done("s", "c")
    assert not store.is_done("s", "missing")
    assert sorted(r["run_id"] for r in store.iter_records("s")) == ["a", "b", "c"]
    assert not list((tmp_path / "s").glob(f"{TEMP_PREFIX}*"))


def test_nan_never_enters_a_record(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        RunStore(tmp_path).write({**record("a"), "final_loss": float("nan")})
    assert not list((tmp_path / "s").iterdir())  # neither the record nor its temp file


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write(record("a"))
    assert list((tmp_path / "s").iterdir()) == []


def test_writer_killed_during_write_leaves_no_record_and_is_redone(tmp_path: Path) -> None:
    """kill -9 while the record is being written: no `<run_id>.json`, the temp file is cleaned later."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from peftbench.core.store import RunStore
        def hang(fd):
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = hang
        RunStore({str(tmp_path)!r}).write({{"run_id": "a", "sweep": "s", "status": "ok"}})
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    folder = tmp_path / "s"
    assert not (folder / "a.json").exists()
    assert len(list(folder.glob(f"{TEMP_PREFIX}*"))) == 1  # the dead writer's partial temp file

    store = RunStore(tmp_path)
    assert not store.is_done("s", "a")
    assert store.clean_stale_temps("s") == 1
    store.write(record("a"))
    assert [p.name for p in folder.iterdir()] == ["a.json"]


def test_live_writers_temp_files_are_kept(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    import socket

    live = folder / f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-abc.json"
    live.write_text("{")
    assert RunStore(tmp_path).clean_stale_temps("s") == 0
    old = time.time() - 7200
    os.utime(live, (old, old))
    assert RunStore(tmp_path).clean_stale_temps("s") == 1


def test_corrupted_and_foreign_files_are_reported_not_counted(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write(record("a"))
    (tmp_path / "s" / "b.json").write_text('{"run_id": "b", "sta')
    (tmp_path / "s" / "c.json").write_text(json.dumps({"hello": 1}))
    scan = store.scan("s")
    assert [r["run_id"] for r in scan.records] == ["a"]
    assert sorted(p.name for p, _ in scan.corrupted) == ["b.json", "c.json"]
    assert not store.is_done("s", "b")  # an unreadable record is redone, not trusted


def test_predictions_sidecars_and_their_orphans(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from peftbench.bench.cli import main as cli_main

    store = RunStore(tmp_path)
    rows = [{"split": "eval", "id": i, "prediction": i % 2, "reference": 1, "correct": i % 2 == 1} for i in range(5)]
    store.write_predictions("s", "a", rows)
    store.write({**record("a"), "predictions_file": "a.preds.jsonl.gz"})
    store.write_predictions("s", "b", rows)  # killed before its record
    store.write_predictions("s", "c", rows)
    failed = {"method": "lora", "task": "glue_rte", "rank": 8, "lr": 1e-4, "seed": 0, "error": "boom"}
    store.write({**record("c", "failed"), **failed})  # a failed record is no commit point: its point runs again
    assert store.read_predictions("s", "a") == rows
    assert store.predictions_path("s", "a").read_bytes() == store.predictions_path("s", "b").read_bytes()
    assert [p.name for p in store.orphans("s")] == ["b.preds.jsonl.gz", "c.preds.jsonl.gz"]
    assert store.scan("s").corrupted == []  # sidecars are not records, nor foreign files
    assert cli_main(["status", "s", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 ok, 0 diverged, 1 failed" in out
    assert out.count("predictions without a record (replaced when the point runs again)") == 2
    assert "b.preds.jsonl.gz" in out and "a.preds.jsonl.gz" not in out
