"""The results store: one JSON record per run at `<root>/<sweep>/<run_id>.json`, and beside it the run's
per-example predictions, `<run_id>.preds.jsonl.gz` (one JSON object per evaluated example).

Writes are atomic (a temp file in the same folder, fsynced, then `os.replace`), so a reader or a
re-launched sweep never sees half a record, and many jobs can write into one folder at once. The
predictions are written first and the record last: the record is the commit point, so a record never
points at a missing file; predictions a kill left without their record are replaced when the point runs
again (and `orphans` lists them).
A run whose record is complete (`ok`, or `diverged`: a deterministic outcome that the LR-sensitivity
report needs) is skipped on re-launch; a `failed` one is run again and its record replaced.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPLETED = frozenset({"ok", "diverged"})
PREDICTIONS_SUFFIX = ".preds.jsonl.gz"
STATUSES = ("ok", "diverged", "failed")
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600.0


@dataclass
class StoreScan:
    """All readable records of a sweep, and the files that could not be read (reported, not counted)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    corrupted: list[tuple[Path, str]] = field(default_factory=list)


def read_predictions_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of one predictions sidecar (`<run_id>.preds.jsonl.gz`)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Records of runs, grouped by sweep."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def sweep_dir(self, sweep: str) -> Path:
        return self.root / sweep

    def record_path(self, sweep: str, run_id: str) -> Path:
        return self.sweep_dir(sweep) / f"{run_id}.json"

    def predictions_path(self, sweep: str, run_id: str) -> Path:
        return self.sweep_dir(sweep) / f"{run_id}{PREDICTIONS_SUFFIX}"

    def sweeps(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read(self, sweep: str, run_id: str) -> dict[str, Any] | None:
        """The record of a run, or None if there is none or it cannot be read."""
        path = self.record_path(sweep, run_id)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable record %s (%s): the run will be done again", path, exc)
            return None

    def is_done(self, sweep: str, run_id: str) -> bool:
        record = self.read(sweep, run_id)
        return record is not None and record.get("status") in COMPLETED

    def _atomic_write(self, target: Path, payload: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".json")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def write(self, record: dict[str, Any]) -> Path:
        """Write a record atomically; returns its path."""
        self.sweep_dir(record["sweep"]).mkdir(parents=True, exist_ok=True)
        payload = json.dumps(record, indent=2, sort_keys=True, default=str, allow_nan=False)
        return self._atomic_write(self.record_path(record["sweep"], record["run_id"]), payload.encode())

    def write_predictions(self, sweep: str, run_id: str, rows: list[dict[str, Any]]) -> Path:
        """Write a run's per-example predictions atomically (before its record); returns the path."""
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:  # mtime 0: same rows, same bytes
            for row in rows:
                handle.write((json.dumps(row, sort_keys=True, default=str) + "\n").encode())
        return self._atomic_write(self.predictions_path(sweep, run_id), buffer.getvalue())

    def read_predictions(self, sweep: str, run_id: str) -> list[dict[str, Any]]:
        return read_predictions_file(self.predictions_path(sweep, run_id))

    def orphans(self, sweep: str) -> list[Path]:
        """Predictions files without a complete record (a run killed between its two writes)."""
        folder = self.sweep_dir(sweep)
        return sorted(
            path for path in folder.glob(f"*{PREDICTIONS_SUFFIX}")
            if not self.is_done(sweep, path.name[: -len(PREDICTIONS_SUFFIX)])
        )  # fmt: skip

    def clean_stale_temps(self, sweep: str) -> int:
        """Remove temp files of writers that died: this host's dead pids, or any over an hour old."""
        folder = self.sweep_dir(sweep)
        if not folder.is_dir():
            return 0
        host = socket.gethostname()
        removed = 0
        for tmp in folder.glob(f"{TEMP_PREFIX}*"):
            # name: .tmp-<host>-<pid>-<random>.json (the host may itself contain dashes)
            parts = tmp.name[len(TEMP_PREFIX) :].rsplit("-", 2)
            tmp_host, pid_text = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
            dead_here = tmp_host == host and pid_text.isdigit() and not _pid_alive(int(pid_text))
            try:
                old = time.time() - tmp.stat().st_mtime > STALE_TEMP_SECONDS
            except FileNotFoundError:
                continue
            if dead_here or old:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def scan(self, sweep: str) -> StoreScan:
        """Read every record of a sweep; unreadable or malformed files are listed, not counted."""
        scan = StoreScan()
        for path in sorted(self.sweep_dir(sweep).glob("*.json")):
            if path.name.startswith(TEMP_PREFIX):
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                scan.corrupted.append((path, f"not valid JSON ({type(exc).__name__})"))
                continue
            if not isinstance(record, dict) or record.get("status") not in STATUSES or "run_id" not in record:
                scan.corrupted.append((path, "not a peftbench record (no run_id or status)"))
                continue
            scan.records.append(record)
        return scan

    def iter_records(self, sweep: str) -> Iterator[dict[str, Any]]:
        yield from self.scan(sweep).records
