"""Forward + backward time of one SSB / SSL layer: the fused `scaled_linear` against the expression it replaced.

Rows per shape: `floor` (the frozen linear with its input gradient: what any adapter in that layer costs at
least), `ssb_earlier` / `ssb_fused` and `ssl_earlier` / `ssl_fused`. Interleaved rounds (A B C … A B C …), each
cell the median over rounds of the median of `--steps` timed steps; `over_floor_ms` is what the scaling adds.
On a GPU: bf16 autocast with a float32 input and float32 weights, as `peftbench perf --model llama7b-layers` runs
a LLaMA block (the RMSNorm output entering q/k/v/gate/up is float32), CUDA-event timing, CUDA peak memory.
Writes results/perf/<date>_<device>_ssb_forms.md and prints it.

    PYTHONPATH=. .venv/bin/python scripts/ssb_timing.py                   # CPU, small shapes (~1 min on 2 cores)
    PYTHONPATH=. .venv/bin/python scripts/ssb_timing.py --device cuda     # LLaMA-7B shapes at 8x1024 and 4x512
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from peftbench.methods.ssl import scaled_linear

CPU_SHAPES = [(1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768)]  # tokens, in, out (RoBERTa-base's linears)
GPU_SHAPES = [(t, i, o) for t in (8192, 2048) for i, o in ((4096, 4096), (4096, 11008), (11008, 4096))]


def forms(x: torch.Tensor, w: torch.Tensor, l_in: torch.Tensor, l_out: torch.Tensor) -> dict[str, Callable]:
    """name → a function returning the layer output (its backward is timed too)."""
    return {
        "floor": lambda: F.linear(x, w),
        "ssb_earlier": lambda: F.linear(x * l_in.to(x.dtype), w) * l_out.to(x.dtype),  # SsbLayer before the fusion
        "ssb_fused": lambda: scaled_linear(x, w, None, l_in, l_out),
        "ssl_earlier": lambda: F.linear(x * l_in.to(x.dtype), w),
        "ssl_fused": lambda: scaled_linear(x, w, None, l_in),
    }


def time_step(fn: Callable, grad: torch.Tensor, inputs: list[torch.Tensor], cuda: bool, autocast: bool) -> float:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    else:
        begin = time.perf_counter()
    with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=autocast):
        y = fn()
    torch.autograd.grad(y, inputs, grad.to(y.dtype), allow_unused=True)
    if cuda:
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return 1000 * (time.perf_counter() - begin)


def measure(shape: tuple[int, int, int], device: torch.device, steps: int, rounds: int) -> list[dict]:
    tokens, n_in, n_out = shape
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    x = torch.randn(tokens, n_in, device=device, requires_grad=True)
    w = torch.randn(n_out, n_in, device=device) / n_in**0.5
    l_in = torch.nn.Parameter(1 + 0.1 * torch.randn(n_in, device=device))
    l_out = torch.nn.Parameter(1 + 0.1 * torch.randn(n_out, device=device))
    grad = torch.randn(tokens, n_out, device=device)
    rows = forms(x, w, l_in, l_out)
    medians: dict[str, list[float]] = {name: [] for name in rows}
    peaks: dict[str, float] = {}
    for fn in rows.values():  # warm-up
        time_step(fn, grad, [x, l_in, l_out], cuda, cuda)
    for _ in range(rounds):
        for name, fn in rows.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            times = [time_step(fn, grad, [x, l_in, l_out], cuda, cuda) for _ in range(steps)]
            medians[name].append(statistics.median(times))
            if cuda:
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    floor = statistics.median(medians["floor"])
    out = []
    for name, values in medians.items():
        median = statistics.median(values)
        out.append({
            "tokens": tokens, "in": n_in, "out": n_out, "form": name, "ms": median, "over_floor_ms": median - floor,
            "spread_pct": 100 * (max(values) - min(values)) / median, "step_peak_mib": peaks.get(name),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    table = pd.DataFrame([row for shape in shapes for row in measure(shape, device, args.steps, args.rounds)])
    label = (
        f"{torch.cuda.get_device_name(device)}, bf16 autocast, float32 input and weights"
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads, float32"
    )
    text = (
        f"# SSB / SSL layer: fused `scaled_linear` vs the earlier expression\n\nMeasured {date.today().isoformat()}. "
        f"Device: {label}. torch {torch.__version__}. Forward + backward (input and scale gradients) of one layer; "
        f"each cell the median over {args.rounds} interleaved rounds of the median of {args.steps} steps; "
        "`over_floor_ms` = ms − the frozen linear's (`floor`).\n\n" + table.to_markdown(index=False, floatfmt=".3f")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{date.today().isoformat()}_{device.type}_ssb_forms.md"
    path.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
