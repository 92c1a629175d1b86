"""What every run measures: parameter counts, peak memory, wall time.

Parameter counts follow the papers' convention that the new task head is trainable in every method
but reported apart (`head_params`). PEFT keeps a frozen copy of a `modules_to_save` head under
`original_module`; that copy is never used in the forward pass, so it is not counted.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from peftbench.methods.targets import in_head

_UNUSED_COPY = ".original_module."


@dataclass(frozen=True)
class ParamCounts:
    """Trainable, head and total parameters of a (wrapped) model."""

    trainable_params: int
    head_params: int
    total_params: int

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / self.total_params


def count_params(model: torch.nn.Module, head_modules: Iterable[str]) -> ParamCounts:
    """Count trainable / head / total parameters; each shared tensor is counted once."""
    head_modules = list(head_modules)
    seen: set[int] = set()
    trainable = head = total = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or _UNUSED_COPY in f".{name}.":
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            if in_head(name, head_modules):
                head += param.numel()
    return ParamCounts(trainable, head, total)


def _cpu_peak_rss_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory from `start()` to `stop()`.

    GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (kind `cuda_allocated`),
    plus the reserved peak. CPU: the process's peak resident set (kind `cpu_rss`); on Linux the
    high-water mark is reset at start, so runs in one multirun process do not inherit each other's peak.
    """

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.kind = "cuda_allocated" if self.cuda else "cpu_rss"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        # Linux: "5" resets the peak-RSS mark. Elsewhere the peak covers the whole process.
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def stop(self) -> dict[str, int | str | None]:
        if self.cuda:
            torch.cuda.synchronize()
            return {
                "peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
                "peak_memory_reserved_bytes": int(torch.cuda.max_memory_reserved()),
                "peak_memory_kind": self.kind,
            }
        return {
            "peak_memory_bytes": _cpu_peak_rss_bytes(),
            "peak_memory_reserved_bytes": None,
            "peak_memory_kind": self.kind,
        }


class Stopwatch:
    """Wall-clock seconds, synchronising the GPU at both ends so queued kernels are counted."""

    def __enter__(self) -> Stopwatch:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
