"""Per-step cost of every method against the true floor and against PEFT's LoRA (`peftbench perf`).

For one model and one synthetic batch, time the training step (forward + backward + optimizer step, plus the
method's per-step hooks and auxiliary loss) of every registered method at the same rank and of three
baselines: `floor`, the frozen base with activation gradients through every layer and no weight gradient
(forward + input-gradient backward: what an adapter inside every layer cannot go below), `head_only` (only the
task head trains: the backward never enters the encoder) and `full` fine-tuning. Ratios are to the floor and
to PEFT's LoRA measured in the same process.

Timing is interleaved: `rounds` passes over all methods (A B C … A B C …), each row the median over rounds of
its per-round median step, with the spread of those round medians, so drift of the machine hits every method
alike. Methods whose step is exactly LoRA's computation (PiSSA, MiLoRA, OLoRA, rsLoRA, LoRA+, LoRA-GA, ReLoRA
between restarts) should land within ±3% of LoRA; the table says how far they are, i.e. what ratio the run
can resolve. On a GPU the steps run in bf16 autocast and are timed with CUDA events.
The harness's own overhead (its Trainer subclass, callbacks and measurement) is measured against a bare
transformers Trainer on the same model and data.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf
from peftbench.bench.measure import PeakMemory, count_params
from peftbench.bench.models import load_classifier, load_tokenizer
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import RunContext, get_method, method_names
from peftbench.methods.targets import in_head
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

BASELINES = ("floor", "head_only", "full")
# whose training step is exactly LoRA's computation: a machine that times them apart cannot resolve smaller ratios
LORA_IDENTICAL = ("pissa", "milora", "olora", "rslora", "loraplus", "lora_ga", "relora")
LABELS = 2


def synthetic_batch(vocab: int, batch: int, seq: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=generator)
    labels = torch.randint(0, LABELS, (batch,), generator=generator)
    return {
        k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}.items()
    }


CLOCKS = ("wall", "cpu")


class StepClock:
    """Time of one step: CUDA events on a GPU (no host sync inside the step); on a CPU the wall time, or with
    `clock="cpu"` the process's CPU time (what the step costs, whatever else runs on a shared machine; with one
    thread, as `--clock cpu` sets, it is the wall time the step would take on an idle core)."""

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.cuda = device.type == "cuda"
        self.cpu_time = clock == "cpu"

    def time(self, step: Callable[[], None]) -> float:
        if self.cpu_time:
            begin = time.process_time()
            step()
            return 1000 * (time.process_time() - begin)
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        step()
        return 1000 * (time.perf_counter() - begin)


def load_base(model_name: str) -> tuple[Any, torch.nn.Module]:
    """(model config, seeded classifier) of a conf/model entry; a config model needs no tokenizer."""
    spec = OmegaConf.load(CONF_DIR / "model" / f"{model_name}.yaml")
    pad = spec.config.get("pad_token_id", 0) if spec.source == "config" else load_tokenizer(spec).pad_token_id
    torch.manual_seed(0)
    return spec, load_classifier(spec, LABELS, pad)


def prepare(name: str, base: torch.nn.Module, spec: Any, ctx: RunContext) -> tuple[Any, Any, Any]:
    """(model, method, params) for a row: a baseline or a registered method applied to a copy of `base`."""
    model = copy.deepcopy(base)
    if name in BASELINES:
        for param_name, param in model.named_parameters():
            param.requires_grad_(name == "full" or (name == "head_only" and in_head(param_name, spec.head_modules)))
        if name == "floor":  # gradients flow from the loss back to the embeddings' output: every layer, no weight
            model.get_input_embeddings().register_forward_hook(lambda module, args, output: output.requires_grad_())
        return model, None, None
    method = get_method(name)
    params = method.parse({"name": name})
    torch.manual_seed(0)
    return method.adapt(model, params, ctx), method, params


def perf_context(spec: Any, rank: int, steps: int, batch: dict) -> RunContext:
    return RunContext.build(
        None, spec.target_modules, rank=rank, lr=1e-4, seed=0, head_modules=list(spec.head_modules),
        total_steps=steps, sample_batches=lambda n: [batch] * n,
    )  # fmt: skip


def measure_row(
    name: str,
    base: torch.nn.Module,
    spec: Any,
    rank: int,
    batch: dict,
    steps: int,
    warmup: int,
    bf16: bool,
    clock: str = "wall",
) -> dict[str, Any]:
    device = batch["input_ids"].device
    ctx = perf_context(spec, rank, steps + warmup, batch)
    model, method, params = prepare(name, base, spec, ctx)
    model.to(device).train()
    groups = method.optimizer_param_groups(model, params, ctx) if method else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    # the floor has no weight to update: an optimizer over a dummy parameter keeps the step's shape
    optimizer = torch.optim.AdamW(groups if groups is not None else trainable or [torch.zeros(1, requires_grad=True)])
    # the method's per-step hooks (AdaLoRA's budget, SingLoRA's ramp, ReLoRA's restarts) are part of its cost
    callbacks = method.callbacks(model, params, ctx) if method else []
    state, control = TrainerState(), TrainerControl()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
            aux = method.aux_loss(model, params) if method else None
            if aux is not None:
                loss = loss + aux
        loss.backward()
        optimizer.step()
        for callback in callbacks:
            callback.on_optimizer_step(None, state, control, optimizer=optimizer)
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        for callback in callbacks:
            callback.on_step_end(None, state, control, optimizer=optimizer)

    timer = StepClock(device, clock)
    for _ in range(warmup):
        step()
    memory = PeakMemory()  # GPU: allocated bytes; CPU: the process's peak RSS since this point
    memory.start()
    times = [timer.time(step) for _ in range(steps)]
    counts = count_params(model, spec.head_modules)
    peak = memory.stop()
    return {
        "method": name,
        "step_ms": statistics.median(times),
        "step_ms_p10": sorted(times)[len(times) // 10],
        "step_ms_p90": sorted(times)[(9 * len(times)) // 10],
        "trainable_params": counts.trainable_params,
        "peak_memory_mb": peak["peak_memory_bytes"] / 2**20,
        "peak_memory_kind": peak["peak_memory_kind"],
    }


def run_perf(
    model_name: str,
    methods: list[str],
    rank: int,
    batch_size: int,
    seq: int,
    steps: int,
    warmup: int,
    device: str,
    rounds: int = 3,
    budget_s: float | None = None,
    clock: str = "wall",
) -> pd.DataFrame:
    """The table of every row; with `budget_s`, no new row starts once that many seconds have passed (after the
    floor, head-only and LoRA rows): the rows measured so far make the table, and its attrs say where it stopped."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    stopped: str | None = None
    target = torch.device(device)
    check_clock(clock, target)
    spec, base = load_base(model_name)
    base.to(target)  # SVD inits then run on the device too
    bf16 = target.type == "cuda"
    batch = synthetic_batch(base.config.vocab_size, batch_size, seq, target)
    measure_row("head_only", base, spec, rank, batch, 2, warmup, bf16)  # process warm-up (allocator, threads)
    names = ["floor", "head_only", "lora", *[m for m in methods if m not in ("lora", *BASELINES)]]
    names += [b for b in ("full",) if b in methods]
    rounds_of: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    skipped: dict[str, str] = {}
    for index in range(rounds):  # interleaved: A B C ... A B C ..., so drift hits every method alike
        for name in [n for n in names if n not in skipped]:
            if deadline is not None and time.monotonic() > deadline and all(rounds_of[n] for n in names[:3]):
                stopped = f"the {budget_s:.0f} s budget ran out in round {index + 1} of {rounds}, before {name}"
                break
            try:
                rounds_of[name].append(measure_row(name, base, spec, rank, batch, steps, warmup, bf16, clock))
            except ConfigError as exc:  # a method that does not apply to this model (Series on an encoder)
                skipped[name] = str(exc)
                print(f"  skip {name}: {exc}", flush=True)
                continue
            if target.type == "cuda":
                torch.cuda.empty_cache()  # the row's model and optimizer are gone; give their memory back
            print(f"  round {index + 1}/{rounds} {name:16s} {rounds_of[name][-1]['step_ms']:9.2f} ms/step", flush=True)
        if stopped:
            print(f"  stopped: {stopped}", flush=True)
            break
    rows = []
    for measured in (m for name, m in rounds_of.items() if name not in skipped and m):
        medians = [row["step_ms"] for row in measured]
        median = statistics.median(medians)
        rows.append({**measured[0], "step_ms": median, "spread_pct": 100 * (max(medians) - min(medians)) / median})
    table = pd.DataFrame(rows).drop(columns=["step_ms_p10", "step_ms_p90"])
    floor = table.set_index("method").at["floor", "step_ms"]
    lora = table.set_index("method").at["lora", "step_ms"]
    table.insert(2, "vs_floor", table["step_ms"] / floor)
    table.insert(3, "vs_peft_lora", table["step_ms"] / lora)
    identical = table[table["method"].isin(LORA_IDENTICAL)]["vs_peft_lora"]
    deviation = float((identical - 1).abs().max()) if len(identical) else None
    table.attrs.update(
        model=model_name, rank=rank, batch=batch_size, seq=seq, steps=steps, warmup=warmup, rounds=rounds,
        device=device_label(target), lora_identical_max_dev=deviation, skipped=skipped, stopped=stopped,
        rounds_done={name: len(m) for name, m in rounds_of.items() if m}, clock=clock,
    )  # fmt: skip
    return table


def check_clock(clock: str, device: torch.device) -> None:
    if clock not in CLOCKS or (clock == "cpu" and device.type != "cpu"):
        raise ConfigError(f"--clock={clock!r} is not valid on {device.type}; valid: wall, or cpu on a CPU")


def resolution_line(table: pd.DataFrame) -> str:
    """What ratio this run can resolve: how far the methods that compute exactly LoRA's step landed from it."""
    deviation = table.attrs.get("lora_identical_max_dev")
    if deviation is None:
        return "No LoRA-identical method was timed: the run's resolution is unknown.\n"
    if deviation <= 0.03:
        return (
            f"Resolution: the methods whose step is exactly LoRA's ({', '.join(LORA_IDENTICAL)}) land within "
            f"{100 * deviation:.1f}% of it (target ±3%): ratios further than that from 1 are differences of cost.\n"
        )
    return (
        f"**Resolution: this machine cannot support ratios closer than ±{100 * deviation:.0f}% to 1.** The methods "
        f"whose step is exactly LoRA's ({', '.join(LORA_IDENTICAL)}) land up to {100 * deviation:.1f}% from it "
        "(target ±3%): read the ratios within that band as equal.\n"
    )


class StepTimer(TrainerCallback):
    """Milliseconds of each Trainer step (synchronised on a GPU)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        self._sync()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self._sync()
        self.times.append(1000 * (time.perf_counter() - self.start))


def harness_overhead(model_name: str, batch_size: int, seq: int, steps: int, rounds: int = 3) -> dict[str, float]:
    """LoRA's median step time in peftbench's Trainer (hooks, divergence guard, memory measurement)
    against a bare transformers Trainer on the same model and data, alternating `rounds` times."""
    import tempfile

    from peftbench.bench.train import BenchTrainer, DivergenceGuard

    spec, base = load_base(model_name)
    rows = [
        {k: v[0] for k, v in synthetic_batch(base.config.vocab_size, 1, seq, torch.device("cpu"), seed=i).items()}
        for i in range(batch_size * (steps + 2))
    ]
    method = get_method("lora")
    params = method.parse({"name": "lora"})
    ctx = perf_context(spec, 8, steps, {})
    medians: dict[str, list[float]] = {"bare": [], "peftbench": []}
    for _ in range(rounds):
        for kind in medians:
            model = method.adapt(copy.deepcopy(base), params, ctx)
            timer = StepTimer()
            with tempfile.TemporaryDirectory() as out:
                args = TrainingArguments(
                    output_dir=out, max_steps=steps + 2, per_device_train_batch_size=batch_size, learning_rate=1e-4,
                    report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=10, label_names=["labels"],
                    remove_unused_columns=False, logging_nan_inf_filter=False, use_cpu=not torch.cuda.is_available(),
                    bf16=torch.cuda.is_available(),
                )  # fmt: skip
                if kind == "bare":
                    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[timer])
                else:
                    callbacks = [
                        timer,
                        DivergenceGuard(),
                        *method.callbacks(model, params, ctx),
                    ]
                    trainer = BenchTrainer(
                        model=model, args=args, train_dataset=rows, callbacks=callbacks, method=method,
                        method_params=params, ctx=ctx,
                    )  # fmt: skip
                memory = PeakMemory()
                memory.start()
                trainer.train()
                memory.stop()
            medians[kind].append(statistics.median(timer.times[2:]))
    bare, ours = statistics.median(medians["bare"]), statistics.median(medians["peftbench"])
    return {"bare_trainer_ms": bare, "peftbench_ms": ours, "overhead_pct": 100 * (ours / bare - 1)}


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (bf16 autocast)"
    return f"CPU, {torch.get_num_threads()} threads (fp32)"


def write_table(table: pd.DataFrame, out_dir: Path, stem: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = table.attrs
    header = (
        f"# Step time per method — {meta['model']}, rank {meta['rank']}, batch {meta['batch']} × {meta['seq']} "
        f"tokens\n\nMeasured {date.today().isoformat()}. Device: {meta['device']}. torch {torch.__version__}. "
        f"Each row: the median over {meta['rounds']} interleaved rounds of the median of {meta['steps']} steps "
        f"after {meta['warmup']} warm-up"
        + (" (the process's CPU time per step, `--clock cpu`)" if meta.get("clock") == "cpu" else "")
        + "; `spread_pct` is the range of the round medians. Ratios are to `floor` "
        "(the frozen base with activation gradients through every layer, no weight gradient: the least an adapter "
        "in every layer can cost) and to PEFT's LoRA, measured in the same process; `head_only` trains the head "
        "alone (the backward never enters the encoder).\n\n" + resolution_line(table) + "\n"
    )
    skipped = "".join(f"- not timed, `{n}`: {why}\n" for n, why in (meta.get("skipped") or {}).items())
    if meta.get("stopped"):
        short = {n: k for n, k in meta["rounds_done"].items() if k < meta["rounds"]}
        skipped += f"- stopped early: {meta['stopped']}; rounds measured where fewer than {meta['rounds']}: {short}\n"
    path = out_dir / f"{stem}.md"
    path.write_text(
        header + table.to_markdown(index=False, floatfmt=".3f") + "\n" + ("\n" + skipped if skipped else "")
    )
    table.to_csv(out_dir / f"{stem}.csv", index=False)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftbench perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="a conf/model entry (default: %(default)s)")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or all")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="results/perf", help="written as <out>/<date>_<device>_<model>_b<B>x<S>.md")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved passes over the methods; median kept")
    parser.add_argument("--overhead", action="store_true", help="also measure the harness's overhead per step")
    parser.add_argument("--budget", type=float, default=None, help="seconds: start no row after this (a partial table)")
    parser.add_argument(
        "--clock", default="wall", choices=CLOCKS,
        help="wall time, or cpu: the process's CPU time per step on one thread (a shared CPU's other load does not "
        "count)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.clock == "cpu":
        torch.set_num_threads(1)  # CPU time of one thread is its step's time; more threads add their spin-waits
    methods = [m for m in method_names() if get_method(m).trains] if args.methods == "all" else args.methods.split(",")
    methods = ["full", *[m for m in methods if m != "full"]]
    table = run_perf(
        args.model, methods, args.rank, args.batch, args.seq, args.steps, args.warmup, args.device, args.rounds,
        args.budget, args.clock,
    )  # fmt: skip
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    stem = f"{date.today().isoformat()}_{device}_{args.model}_b{args.batch}x{args.seq}"
    path = write_table(table, Path(args.out), stem)
    if args.overhead:
        overhead = harness_overhead(args.model, args.batch, args.seq, args.steps)
        line = (
            f"\nHarness overhead (LoRA, Trainer steps): bare transformers Trainer "
            f"{overhead['bare_trainer_ms']:.2f} ms, peftbench {overhead['peftbench_ms']:.2f} ms: "
            f"{overhead['overhead_pct']:+.2f}%\n"
        )
        path.write_text(path.read_text() + line)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
