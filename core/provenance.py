"""What produced a record besides its config: library versions, the machine's CUDA stack, the hub revisions read.

A record carries `versions` (Python and the libraries that compute a result, and on a GPU the CUDA runtime,
cuDNN and NVIDIA driver), `git_commit`/`git_dirty` (bench.record) and `revisions`: for every hub model and dataset
the run read, `{"revision": <commit>, "locked": <whether conf/hub.lock.yaml fixed it>}`, keyed as the hub
addresses repositories (`FacebookAI/roberta-base`, `datasets/nyu-mll/glue`). `provenance_of` flattens all of it
into one comparable mapping and `differing` names what a set of records does not share, for the report side.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from collections.abc import Iterable
from typing import Any

import torch

# the libraries whose version can change a number: the model code, the adapters, the data, the training loop, the hub
LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate", "huggingface_hub")


@functools.cache
def versions() -> dict[str, str]:
    """Python's and the libraries' versions; on a GPU also `cuda` (torch's CUDA runtime), `cudnn` and
    `nvidia_driver`."""
    import importlib

    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        found[name] = importlib.import_module(name).__version__
    if torch.cuda.is_available():
        found.update(cuda_versions())
    return found


def cuda_versions() -> dict[str, str]:
    """The CUDA runtime torch was built with, cuDNN's version and the NVIDIA driver's (from nvidia-smi; absent
    where it cannot be asked)."""
    found = {"cuda": str(torch.version.cuda)}
    if torch.backends.cudnn.is_available():
        found["cudnn"] = str(torch.backends.cudnn.version())
    driver = _nvidia_driver()
    if driver:
        found["nvidia_driver"] = driver
    return found


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


# ---------- the hub revisions a run read ----------

_READ: dict[str, str | None] = {}


def note_read(key: str, revision: str | None) -> None:
    """Called where a model or dataset is loaded: the commit it was read at (see `revisions` above for `key`)."""
    _READ[key] = revision


def take_reads() -> dict[str, str | None]:
    """The revisions noted since the last call, and forget them (one process runs a sweep's points in turn)."""
    reads = dict(_READ)
    _READ.clear()
    return reads


# ---------- for the report side ----------


def provenance_of(record: dict[str, Any]) -> dict[str, Any]:
    """Everything but the config that produced a record, flat: `git_commit`, `git_dirty`, `versions.<lib>`,
    `revisions.<asset>` (the commit) and `locked.<asset>`."""
    flat: dict[str, Any] = {"git_commit": record.get("git_commit"), "git_dirty": record.get("git_dirty")}
    for name, version in (record.get("versions") or {}).items():
        flat[f"versions.{name}"] = version
    for asset, read in (record.get("revisions") or {}).items():
        flat[f"revisions.{asset}"] = read.get("revision")
        flat[f"locked.{asset}"] = read.get("locked")
    return flat


def differing(records: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    """The provenance keys whose values are not the same in every record, each with its distinct values (a key
    one record lacks counts as None there), sorted by key; empty when the records share one provenance."""
    flats = [provenance_of(r) for r in records]
    keys = sorted({k for flat in flats for k in flat})
    found = {}
    for key in keys:
        values = list(dict.fromkeys(flat.get(key) for flat in flats))
        if len(values) > 1:
            found[key] = values
    return found
