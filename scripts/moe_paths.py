"""The upcycled MoE layer's two paths timed against each other: where the dense one is no slower (the rule).

`python scripts/moe_paths.py [--out DIR]` times one training step's forward and backward of
`methods.ft_moe.UpcycledLinear` (E = 8, top-2) on the `dense` path (every expert on every token, the top-k gates as
a dense mask) and the `routed` path (each expert gathers its tokens, a host sync each) for linear shapes from the
tiny test models to RoBERTa-large's FFN and N tokens per batch, interleaved (dense, routed, dense, …), median of
`--reps`, as CPU time on one thread (a shared machine's other processes do not count). The rule `dense_is_faster`
in methods/ft_moe.py is read off this table. Prints a markdown table (and writes it under --out when given). Both
paths give the same output (tested in tests/methods/test_more_methods.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.methods.ft_moe import DENSE_MAX_MACS, DENSE_MAX_TOKENS, UpcycledLinear, dense_is_faster  # noqa: E402

SHAPES = [(32, 64), (384, 384), (384, 1536), (768, 3072), (1024, 4096)]  # tiny, MiniLM, base FFN, large FFN
TOKENS = [8, 32, 128, 512, 2048]
MAX_MACS = 2**33  # skip what takes seconds per step on 2 cores


def step_ms(layer: UpcycledLinear, x: torch.Tensor) -> float:
    """CPU time of the step on one thread: what the step costs, robust to other processes on a shared machine."""
    layer.zero_grad(set_to_none=True)
    begin = time.thread_time()
    out = layer(x)
    (out.square().mean() + layer.balance_loss).backward()
    return 1000 * (time.thread_time() - begin)


def time_paths(in_features: int, out_features: int, tokens: int, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    layer = UpcycledLinear(nn.Linear(in_features, out_features), experts=8, top_k=2).train()
    x = torch.randn(tokens, in_features, requires_grad=True)
    times: dict[str, list[float]] = {"dense": [], "routed": []}
    for rep in range(reps + 1):  # the first pass warms up
        for path in times:
            layer.path = path
            elapsed = step_ms(layer, x)
            if rep:
                times[path].append(elapsed)
    return {path: statistics.median(values) for path, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None, help="a folder for <date>_cpu_moe_paths.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the thread's CPU time is the step's: no time lost waiting for a shared core
    lines = [
        "# Upcycled MoE layer: dense vs routed path (CPU, 1 thread, fp32)\n",
        f"Measured {date.today().isoformat()} by `scripts/moe_paths.py --reps {args.reps}`, torch {torch.__version__}:"
        " one forward + backward of `UpcycledLinear` (E = 8, top-2), its CPU time on one thread (robust to other "
        "processes on a shared machine), median of the interleaved repetitions. "
        f"Rule in force (`methods.ft_moe.dense_is_faster`): dense when N ≤ {DENSE_MAX_TOKENS} or E·N·in·out ≤ "
        f"{DENSE_MAX_MACS:,}.\n",
        "| in × out | N tokens | E·N·in·out | dense ms | routed ms | dense / routed | rule |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for in_features, out_features in SHAPES:
        for tokens in TOKENS:
            macs = 8 * tokens * in_features * out_features
            if macs > MAX_MACS:
                continue
            ms = time_paths(in_features, out_features, tokens, args.reps)
            rule = "dense" if dense_is_faster(8, tokens, in_features, out_features) else "routed"
            line = (
                f"| {in_features} × {out_features} | {tokens} | {macs:,} | {ms['dense']:.2f} | {ms['routed']:.2f} | "
                f"{ms['dense'] / ms['routed']:.2f} | {rule} |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{date.today().isoformat()}_cpu_moe_paths.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
