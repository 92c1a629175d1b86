"""The results store: one JSON record per run at `<root>/<sweep>/<run_id>.json`.

Writes are atomic (a temp file in the same folder, fsynced, then `os.replace`), so a reader or a
re-launched sweep never sees half a record, and many jobs can write into one folder at once.
A run whose record is complete (`ok`, or `diverged`: a deterministic outcome that the LR-sensitivity
report needs) is skipped on re-launch; a `failed` one is run again and its record replaced.
"""

from __future__ import annotations

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
STATUSES = ("ok", "diverged", "failed")
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600.0


@dataclass
class StoreScan:
    """All readable records of a sweep, and the files that could not be read (reported, not counted)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    corrupted: list[tuple[Path, str]] = field(default_factory=list)


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

    def write(self, record: dict[str, Any]) -> Path:
        """Write a record atomically; returns its path."""
        folder = self.sweep_dir(record["sweep"])
        folder.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(record, indent=2, sort_keys=True, default=str, allow_nan=False)
        prefix = f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            target = self.record_path(record["sweep"], record["run_id"])
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

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
