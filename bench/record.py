"""The run record: its schema, the environment facts it carries, and secret scrubbing.

A record is self-describing (the report never needs Hydra's output folders): every field below is
present in every record, `None` where a failed run never got that far. What produced it besides the config
(library and CUDA versions, the hub revisions read) is described in peftbench.core.provenance.
"""

from __future__ import annotations

import re
import socket
import subprocess
from datetime import UTC, datetime
from typing import Any

import torch
from peftbench.core.paths import CONF_DIR
from peftbench.core.provenance import versions

FIELDS = (
    "run_id", "sweep", "status", "error", "method", "model", "task", "rank", "lr", "seed", "data",
    "protocol", "config", "metrics", "best_metrics", "best_step", "eval_history", "predictions_file", "primary_metric",
    "trainable_params", "head_params", "total_params",
    "trainable_pct", "peak_memory_bytes", "peak_memory_reserved_bytes", "peak_memory_kind",
    "train_seconds", "run_seconds", "eval_seconds", "generated_tokens_per_second", "steps", "final_loss",
    "resumed_from_step", "inputs", "strategy", "adapter_dir", "versions", "revisions", "git_commit", "git_dirty",
    "device", "dtypes", "world_size", "started_at", "finished_at", "hostname",
)  # fmt: skip
# `hf_token`, `wandb_api_key`, `secret` match; `pad_token_id` or `max_new_tokens` do not.
_SECRET_KEY = re.compile(r"^(.*[_-])?(api[_-]?key|token|secret|password|credentials?)$", re.IGNORECASE)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(CONF_DIR.parent), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state() -> dict[str, Any]:
    """The code's commit and whether tracked files differ from it (None outside a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if commit is None or dirty is None else bool(dirty)}


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def scrub_secrets(value: Any) -> Any:
    """Drop every mapping key that looks like a credential, at any depth."""
    if isinstance(value, dict):
        return {k: scrub_secrets(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [scrub_secrets(v) for v in value]
    return value


def new_record(**fields: Any) -> dict[str, Any]:
    """A record with every schema field, filled from `fields` and the environment."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise KeyError(f"not record fields: {sorted(unknown)}")
    record: dict[str, Any] = dict.fromkeys(FIELDS)
    record.update(versions=versions(), device=device_name(), hostname=socket.gethostname(), **git_state())
    record.update(fields)
    record["config"] = scrub_secrets(record["config"])
    return record
