"""`peftbench plan <sweep>`: what every distinct run of a sweep will cost, before anything runs.

For each run of the grid (`peftbench.bench.grid.resolve_grid`: points after `protocol_rules`, one line per run_id):

- **Tokens.** Training: rows x epochs (or `max_steps`) x the padded length of each batch. Every task pads a batch
  to its longest row (dynamic padding, no packing), so a batch of b rows costs b x E[max of b lengths], computed
  from the task's length quantiles (bench/plan_data.yaml, measured with the task's own code) truncated at the
  run's max_seq_length; images are (image_size / patch)^2 + 1 tokens. Evaluation: each evaluation's inputs
  (classification), or prompts x beams plus new tokens x beams (generation; a generation that stops at its answer
  emits the batch's longest answer, else max_new_tokens).
- **FLOPs** (a multiply-add is 2). With N the matrix-multiply weights a token meets (embeddings excluded, the LM
  head included) and A = 4 L s d the attention's score and value products per token at context s: a forward is
  2N + A; a frozen base that gradients pass through adds the activation-gradient backward, 2N + 2A; full
  fine-tuning adds the weight gradients, 2N (6N per token in all); an adapter of P trainable parameters costs 6P
  (forward, activation and weight gradients); a model whose only trainable part is its head runs forward only.
- **Peak memory.** Weights in their dtype (trainables in float32, as every method keeps them), gradients and
  AdamW's two states of the trainables (4 + 8 bytes each), activations per layer (8h + 2f elements per token, 8h +
  4f for a gated MLP; bf16 under autocast, else float32) for the batch x length, autocast's bf16 copy of float32
  weights, a causal
  LM's logits, and when generating the KV cache (2 L kv_heads head_dim x (prompt + new) x batch x beams); which of
  24/40/80/141 GiB each run fits. Method-specific buffers (DoRA's weight norms, MoE routing) are not modelled.
- **Time.** FLOPs / (peak bf16 FLOP/s x utilisation) on a named GPU (decoding: each step at least the time to
  read the weights), and on this machine's CPU from its measured FLOP/s. The utilisation and each method's
  overhead over its FLOPs come from the step-time tables in docs/perf/ (the base rows give the rate, each method's
  row its factor), then are scaled by the runs recorded in the store on that device; the output says which.

`peftbench plan --check <sweep>` predicts every recorded run of a store on the device it ran on and prints
predicted / recorded seconds (and peak memory where a GPU recorded it), with the median error; each run is predicted
with a calibration that leaves its own record out.
"""

from __future__ import annotations

import csv
import functools
import heapq
import json
import math
import re
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf
from peftbench.core.errors import ConfigError

DATA_FILE = Path(__file__).with_name("plan_data.yaml")
PERF_DIR = Path(__file__).resolve().parents[1] / "docs" / "perf"
GIB = 1024**3
ADAMW_STATE_BYTES = 8  # exp_avg and exp_avg_sq, float32
# perf-table rows that are the base model itself: (forward only?, weight gradients?)
BASE_ROWS = {"frozen_base": (True, False), "head_only": (True, False), "floor": (False, False), "full": (False, True)}


@functools.cache
def plan_data() -> dict[str, Any]:
    return yaml.safe_load(DATA_FILE.read_text())


# ---------------------------------------------------------------- lengths


@dataclass(frozen=True)
class Lengths:
    """A length distribution from its 21 quantiles (0, 5, ..., 100 %), linear in between."""

    quantiles: tuple[float, ...]

    def expected_max(self, batch: int, cap: int | None = None) -> float:
        """E[min(max of `batch` rows, cap)]: the padded length of a batch (the CDF of the max is F^batch)."""
        u = np.linspace(0.0, 1.0, 2001)
        values = np.interp(u, np.linspace(0.0, 1.0, len(self.quantiles)), self.quantiles)
        if cap is not None:
            values = np.minimum(values, cap)
        weights = np.diff(u**batch)
        return float(np.sum(weights * (values[1:] + values[:-1]) / 2))

    def mean(self, cap: int | None = None) -> float:
        return self.expected_max(1, cap)

    def scaled(self, factor: float, shift: float = 0.0) -> Lengths:
        return Lengths(tuple(q * factor + shift for q in self.quantiles))


def task_lengths(task: str, tokenizer: str) -> tuple[dict[str, Lengths], str]:
    """({train, eval, answer}: Lengths) of a task under a tokenizer family, and where they come from."""
    lengths = plan_data()["lengths"]
    base = task if task in lengths else ("commonsense" if task.startswith("cs_") else None)
    if base is None:
        raise ConfigError(f"no token lengths for task {task!r} in bench/plan_data.yaml; known: {', '.join(lengths)}")
    entry = lengths[base]
    if "estimate" in entry:
        like = lengths[entry["estimate"]["like"]][tokenizer]
        train = Lengths(tuple(like["train"]))
        factor = entry["estimate"]["mean"] / train.mean()
        return {k: Lengths(tuple(v)).scaled(factor) for k, v in like.items()}, "estimate"
    return {k: Lengths(tuple(v)) for k, v in entry[tokenizer].items()}, f"measured ({tokenizer})"


def template_tokens(template: str | None) -> int:
    """Tokens a task's input_template adds to its fields: ~4 characters per BPE token of its fixed text."""
    if not template:
        return 0
    return math.ceil(len(re.sub(r"\{[^}]*\}", "", template)) / 4)


# ---------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Arch:
    """What the cost model needs of a model as loaded for a task (its head included)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    gated: bool
    causal: bool
    matmul_params: int  # weights a token multiplies through in a forward (per patch for images)
    total_params: int
    head_params: int
    image_tokens: int | None


@functools.cache
def _arch(model_json: str, kind: str, labels: int) -> Arch:
    import torch
    from peftbench.bench.param_count import meta_model
    from peftbench.methods.targets import in_head
    from transformers.pytorch_utils import Conv1D

    model_cfg = OmegaConf.create(json.loads(model_json))
    head = (
        {} if kind == "causal-lm" else {"num_labels": labels, **({"problem_type": "regression"} if labels == 1 else {})}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = meta_model(model_cfg, kind, **head)
    config = model.config
    model_type = config.model_type
    text = getattr(config, "vision_config", None) if kind == "image-classification" else config
    text = text or config
    heads_names = list(model_cfg.get("head_modules") or []) if kind != "causal-lm" else []
    matmul = 0
    for name, module in model.named_modules():
        once = any(part in name.split(".") for part in [*heads_names, "pooler", "text_model"])
        if once:
            continue
        if isinstance(module, torch.nn.Linear | Conv1D | torch.nn.Conv2d):  # Conv2d: a patch embedding, per patch
            matmul += module.weight.numel()
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    head_params = sum(p.numel() for n, p in model.named_parameters() if in_head(n, heads_names))
    heads = text.num_attention_heads
    hidden = text.hidden_size
    image_tokens = None
    if kind == "image-classification":
        image_tokens = (text.image_size // text.patch_size) ** 2 + 1
    return Arch(
        layers=text.num_hidden_layers, hidden=hidden, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or hidden // heads,
        ffn=getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden,
        vocab=getattr(text, "vocab_size", 0), gated=model_type in ("llama", "mistral", "qwen2"),
        causal=kind == "causal-lm", matmul_params=matmul, total_params=total, head_params=head_params,
        image_tokens=image_tokens,
    )  # fmt: skip


def arch_of(model_cfg: dict[str, Any], kind: str, labels: int) -> Arch:
    return _arch(json.dumps(model_cfg, sort_keys=True), kind, labels)


@functools.cache
def _adapter_params(counted_json: str) -> int:
    """The trainable parameters a run's method adds or frees outside the task head, counted by applying it to the
    model's architecture on the meta device (`bench.param_count`). They depend on the method, the model, the rank
    and the kind of task, not on the task's labels (the head is counted apart) or its data: one count serves all."""
    from peftbench.bench.param_count import count_on_meta

    cfg = OmegaConf.create(json.loads(counted_json))
    cfg.rank = cfg.rank if cfg.rank is not None else 8
    cfg.lr, cfg.seed, cfg.data = 1e-4, 0, "hub"  # none changes a count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return count_on_meta(cfg).adapter


# ---------------------------------------------------------------- one run


@dataclass
class RunCost:
    """The predicted cost of one run (FLOPs, seconds and bytes are per run)."""

    key: dict[str, Any]  # method, model, task, rank, lr, seed
    train_rows: int
    steps: int
    train_tokens: float
    eval_tokens: float
    generated_tokens: float
    train_flops: float
    eval_flops: float
    trainable: int
    total_params: int
    memory: dict[str, float]  # bytes: weights, gradients, optimizer, activations, generation, peak
    lengths_source: str
    seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    weight_bytes_read: float = 0.0  # per decoding step (memory-bound floor of generation)
    decode_steps: float = 0.0
    prefill_flops: float = 0.0
    method_factor: float = 1.0

    @property
    def peak_gib(self) -> float:
        return self.memory["peak"] / GIB

    def fits(self) -> int | None:
        """The smallest capacity (GiB) this run fits, or None."""
        data = plan_data()
        need = self.peak_gib + data["overhead_gib"]
        return next((c for c in data["capacities_gib"] if need <= c), None)


def _tokenizer_family(model: str) -> str:
    families = plan_data()["tokenizers"]
    return families.get(model, families["default"])


def _rows(task: dict[str, Any], data: str) -> tuple[int, dict[str, int]]:
    """(train rows, eval rows per split) of a run, with its caps and hold-outs applied."""
    table = plan_data()["rows"]
    name = task["name"]
    entry = table.get(name) or (table["commonsense"] if name.startswith("cs_") else None)
    if entry is None or data not in entry:
        raise ConfigError(f"no {data} row counts for task {name!r} in bench/plan_data.yaml; known: {', '.join(table)}")
    rows = entry[data]
    train = rows["train"]
    if isinstance(train, dict):  # gsm8k: the training source the task names
        train = train[task.get("train_on") or "gsm8k"]
    evals = dict(rows["eval"])
    if name.startswith("cs_") or task.get("evaluate"):
        wanted = task.get("evaluate") or [name]
        evals = {k: v for k, v in evals.items() if k in wanted}
    holdout = task.get("train_holdout")
    if holdout:
        held = int(train * holdout["fraction"])
        train -= min(held, holdout["max_rows"]) if holdout.get("max_rows") is not None else held
    if task.get("max_train_samples"):
        train = min(train, task["max_train_samples"])
    if task.get("max_eval_samples"):
        evals = {k: min(v, task["max_eval_samples"]) for k, v in evals.items()}
    return train, evals


def _evaluations(trainer: dict[str, Any], steps: int, epochs: float) -> int:
    """How many times a run evaluates: once at the end, plus each epoch's end or every N steps."""
    every = trainer.get("eval_every")
    if every == "epoch":
        return max(math.ceil(epochs), 1)
    if isinstance(every, int) and every > 0:
        return steps // every + (0 if steps % every == 0 else 1)
    return 1


def _batches(rows: int, batch: int) -> list[tuple[int, int]]:
    """(batch size, how many) for one pass over `rows` in batches of `batch` (the last one smaller)."""
    full, rest = divmod(rows, batch)
    return [(batch, full)] + ([(rest, 1)] if rest else [])


def run_cost(experiment: dict[str, Any], device: str) -> RunCost:
    """The cost of one run (its experiment, as `peftbench.bench.grid` resolves it) on `device` ("cpu" or a GPU key)."""
    from peftbench.bench.train import optimizer_steps
    from peftbench.methods.base import get_method
    from peftbench.tasks.base import build_task

    method, model, task, trainer = (experiment[k] for k in ("method", "model", "task", "trainer"))
    task_obj = build_task(OmegaConf.create(task))
    kind = task_obj.model_kind
    labels = int(task.get("num_labels") or 2)
    arch = arch_of(model, kind, labels)
    # what a count depends on: the method, the model, the rank and the kind of task (the head is counted apart)
    counted = {"method": method, "model": model, "rank": experiment["rank"],
               "task": {"name": task["family"], "family": task["family"], "num_labels": 2}}  # fmt: skip
    adapter = _adapter_params(json.dumps(counted, sort_keys=True, default=str))
    head = arch.head_params
    backbone = arch.total_params - head
    full_like = adapter >= backbone  # full fine-tuning (or an upcycled MoE of it): every base weight trains
    extra = max(adapter - backbone, 0) if full_like else adapter
    trains_layers = adapter > 0 and get_method(method["name"], method.get("module")).trains
    trainable = adapter + head
    total = backbone + head + (0 if full_like else adapter) + (extra if full_like else 0)

    train_rows, eval_rows = _rows(task, experiment["data"])
    trainer_cfg = OmegaConf.create(trainer)
    steps = optimizer_steps(train_rows, trainer_cfg) if get_method(method["name"], method.get("module")).trains else 0
    batch = int(trainer["per_device_train_batch_size"])
    accumulation = int(trainer.get("gradient_accumulation_steps") or 1)
    epochs = float(trainer["num_train_epochs"])
    cap = task.get("max_seq_length")
    tokenizer = _tokenizer_family(model["name"])
    generative = kind == "causal-lm"
    if arch.image_tokens is not None:
        lengths, source = None, "fixed (patches)"
    else:
        lengths, source = task_lengths(task["name"], tokenizer)
        extra_tokens = template_tokens(task.get("input_template"))
        if extra_tokens:
            lengths = {k: v.scaled(1.0, extra_tokens) for k, v in lengths.items()}

    def padded(rows_in_batch: int, which: str) -> float:
        if lengths is None:
            return float(arch.image_tokens)
        return lengths[which].expected_max(rows_in_batch, cap)

    # training: the batches of each epoch, or max_steps x accumulation batches
    if trainer.get("max_steps") and trainer["max_steps"] > 0:
        train_batches = [(batch, steps * accumulation)]
    else:
        per_epoch = _batches(train_rows, batch)
        whole, part = divmod(epochs, 1.0)
        train_batches = [(b, n * whole) for b, n in per_epoch]
        if part:
            train_batches.append((batch, math.ceil(part * sum(n for _, n in per_epoch))))
    train_tokens = sum(b * n * padded(b, "train") for b, n in train_batches if n)
    seq_train = padded(batch, "train")

    def attention(tokens_per_row: float) -> float:
        context = (tokens_per_row + 1) / 2 if arch.causal else tokens_per_row
        return 4 * arch.layers * context * arch.heads * arch.head_dim

    n = arch.matmul_params
    forward = 2 * (n + extra) + attention(seq_train)
    if not trains_layers:
        per_token = forward
    else:
        per_token = forward + 2 * n + 2 * attention(seq_train) + 4 * extra + (2 * n if full_like else 0)
    train_flops = train_tokens * per_token if steps else 0.0

    # evaluation
    evaluations = _evaluations(trainer, steps, epochs)
    settings = task.get("generation") or {}
    eval_tokens = generated = eval_flops = prefill_flops = decode_steps = 0.0
    gen_peak = 0.0
    base_bytes = _weight_bytes(model, device)
    act_bytes = 2 if _autocast(model, trainer, device) else 4
    if generative:
        beams = int(settings.get("num_beams", 1))
        size = int(settings.get("batch_size", 16))
        new_cap = int(settings.get("max_new_tokens", 32))
        for rows in eval_rows.values():
            for b, count in _batches(rows, size):
                prompt = lengths["eval"].mean(cap)  # prompts sorted by length: little padding
                new = (
                    min(lengths["answer"].expected_max(b) + 1, new_cap) if settings.get("stop_early", True) else new_cap
                )
                eval_tokens += count * b * beams * prompt
                generated += count * b * beams * new
                prefill_flops += count * b * beams * prompt * (2 * n + attention(prompt))
                decode_steps += count * new
                eval_flops += count * b * beams * new * (2 * n + 4 * arch.layers * (prompt + new / 2) * arch.heads
                                                         * arch.head_dim)  # fmt: skip
                kv = 2 * arch.layers * arch.kv_heads * arch.head_dim * (prompt + new) * b * beams * act_bytes
                gen_peak = max(gen_peak, kv + b * beams * arch.vocab * 4)
        eval_flops += prefill_flops
        eval_tokens *= evaluations
        generated *= evaluations
        eval_flops *= evaluations
        decode_steps *= evaluations
    else:
        size = int(trainer.get("per_device_eval_batch_size") or 64)
        for rows in eval_rows.values():
            for b, count in _batches(rows, size):
                tokens = count * b * padded(b, "eval")
                eval_tokens += tokens
                eval_flops += tokens * (2 * (n + extra) + attention(padded(b, "eval")))
        eval_tokens *= evaluations
        eval_flops *= evaluations

    memory = training_memory(
        arch, trainable=trainable, total=total, batch=batch, seq=seq_train, base_bytes=base_bytes,
        act_bytes=act_bytes, trains_layers=trains_layers, full_like=full_like,
    )  # fmt: skip
    memory["generation"] = gen_peak
    memory["peak"] = max(memory["peak"], memory["weights"] + memory["optimizer"] + gen_peak)
    weights = memory["weights"]

    key = {"method": method["name"], "model": model["name"], "task": task["name"], "rank": experiment["rank"],
           "lr": experiment["lr"], "seed": experiment["seed"]}  # fmt: skip
    return RunCost(
        key=key, train_rows=train_rows, steps=steps, train_tokens=train_tokens, eval_tokens=eval_tokens,
        generated_tokens=generated, train_flops=train_flops, eval_flops=eval_flops, trainable=trainable,
        total_params=total, memory=memory, lengths_source=source, weight_bytes_read=weights,
        decode_steps=decode_steps, prefill_flops=prefill_flops,
    )  # fmt: skip


def training_memory(
    arch: Arch,
    *,
    trainable: int,
    total: int,
    batch: int,
    seq: float,
    base_bytes: int,
    act_bytes: int,
    trains_layers: bool,
    full_like: bool,
) -> dict[str, float]:
    """Bytes of a training step at its peak (after the forward, before the backward frees the activations).

    weights: frozen ones in their dtype, trainables in float32; gradients (4 bytes) and AdamW's two states (8 bytes)
    of the trainables; activations kept for the backward, per block and token 8h + 2f elements (8h + 4f for a gated
    MLP) in the autocast dtype; one block's attention probabilities (transient); a causal LM's logits (bf16, and
    the float32 loss's copy and gradient); and autocast's bf16 copy of every float32 weight it multiplies by (a
    float32 base, or full fine-tuning's float32 trainables), kept until the forward ends. A model whose layers
    train nothing keeps only its head's input. Checked against torch.cuda.max_memory_allocated on an H200
    (tests/fixtures/plan_gpu/, docs/plan.md): within 15% for LoRA and full fine-tuning of RoBERTa and LLaMA blocks."""
    weights = (total - trainable) * base_bytes + trainable * 4
    per_token = (8 * arch.hidden + (4 if arch.gated else 2) * arch.ffn) * act_bytes
    kept = arch.layers * batch * seq * per_token if trains_layers else batch * seq * arch.hidden * act_bytes
    scores = batch * arch.heads * seq**2 * act_bytes
    logits = batch * seq * arch.vocab * (act_bytes + 8) if arch.causal else 0.0
    cast_cache = 2 * arch.matmul_params if act_bytes == 2 and (base_bytes == 4 or full_like) else 0
    memory = {
        "weights": float(weights), "gradients": trainable * 4.0, "optimizer": trainable * float(ADAMW_STATE_BYTES),
        "activations": kept + scores + logits + cast_cache,
    }  # fmt: skip
    memory["peak"] = memory["weights"] + memory["gradients"] + memory["optimizer"] + memory["activations"]
    return memory


def _weight_bytes(model: dict[str, Any], device: str) -> int:
    """Bytes per frozen weight: the entry's `dtype` on a GPU, its `cpu_dtype` on CPU (float32 unless said)."""
    name = (model.get("cpu_dtype") if device == "cpu" else model.get("dtype")) or "float32"
    return 2 if name in ("bfloat16", "float16") else 4


def _autocast(model: dict[str, Any], trainer: dict[str, Any], device: str) -> bool:
    """bf16 autocast: a bf16 base always; trainer.bf16 on a GPU (peftbench.bench.run's rule)."""
    return _weight_bytes(model, device) == 2 or (device != "cpu" and bool(trainer.get("bf16")))


# ---------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """FLOP/s a device reaches on the base model's work, each method's factor over its FLOPs, and why."""

    device: str  # "cpu" or a GPU key of plan_data.yaml
    flops_per_second: float
    method_factors: dict[str, float] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    peak: float | None = None  # bf16 FLOP/s (GPU)
    bandwidth: float | None = None  # bytes/s (GPU)

    @property
    def utilisation(self) -> float | None:
        return self.flops_per_second / self.peak if self.peak else None

    def factor(self, method: str) -> float:
        if method in self.method_factors:
            return self.method_factors[method]
        return self.method_factors.get("lora", 1.0) if method != "full" else 1.0

    def describe(self) -> str:
        rate = (f"{self.utilisation:.2f} of {self.peak / 1e12:.0f} TFLOP/s bf16" if self.peak
                else f"{self.flops_per_second / 1e9:.0f} GFLOP/s")  # fmt: skip
        return f"{rate} ({'; '.join(self.sources)})"


@dataclass(frozen=True)
class PerfTable:
    device: str  # "cpu" or the GPU's name
    model: str
    batch: int
    seq: int
    rows: dict[str, tuple[float, int]]  # method -> (step seconds, trainable params)
    path: Path


def perf_tables(folder: Path = PERF_DIR) -> list[PerfTable]:
    """The published step-time tables (docs/perf/*.csv), each read with the header of its .md: the model, batch and
    length (`# Step time per method — <model>, rank R, batch B × S tokens`) and the device (`Device: ...`). A table
    of another shape, or of a model without a conf/model entry, is not a calibration source and is left out."""
    from peftbench.core.paths import CONF_DIR

    tables = []
    for path in sorted(folder.glob("*.csv")):
        md = path.with_suffix(".md")
        text = md.read_text() if md.exists() else ""
        header = re.search(r"Step time per method — ([\w.-]+), rank \d+, batch (\d+) × (\d+) tokens", text)
        device_line = re.search(r"Device: ([^.(]+)", text)
        if header is None or device_line is None or not (CONF_DIR / "model" / f"{header.group(1)}.yaml").exists():
            continue
        device = device_line.group(1).strip()
        device = "cpu" if device.startswith("CPU") else device
        with path.open() as handle:
            rows = {r["method"]: (float(r["step_ms"]) / 1000, int(float(r["trainable_params"])))
                    for r in csv.DictReader(handle) if r.get("step_ms")}  # fmt: skip
        tables.append(PerfTable(device, header.group(1), int(header.group(2)), int(header.group(3)), rows, path))
    return tables


def perf_row_flops(table: PerfTable, method: str, trainable: int) -> float:
    """FLOPs of one step of a perf-table row: `peftbench perf`'s synthetic batch (full length, 2 labels)."""
    from omegaconf import OmegaConf as OC
    from peftbench.core.paths import CONF_DIR

    model_cfg = OC.to_container(OC.load(CONF_DIR / "model" / f"{table.model}.yaml"), resolve=True)
    arch = arch_of(model_cfg, "sequence-classification", 2)
    tokens = table.batch * table.seq
    attn = 4 * arch.layers * table.seq * arch.heads * arch.head_dim
    n = arch.matmul_params
    if method in BASE_ROWS:
        forward_only, weight_grads = BASE_ROWS[method]
        extra = 0
    else:
        extra = max(trainable - arch.head_params, 0)
        forward_only, weight_grads = extra == 0, extra >= arch.total_params - arch.head_params
        extra = 0 if weight_grads else extra
    per_token = 2 * (n + extra) + attn
    if not forward_only:
        per_token += 2 * n + 2 * attn + 4 * extra + (2 * n if weight_grads else 0)
    return tokens * per_token


def _device_kind(device: str) -> str:
    return "cpu" if device == "cpu" else "gpu"


def gpu_key(name: str) -> str | None:
    """The plan_data GPU key of a device name (a record's `device`, a perf table's), or None."""
    for key, spec in plan_data()["gpus"].items():
        if name == key or any(m in name for m in spec["match"]):
            return key
    return None


def calibrate(device: str, records: list[dict[str, Any]] | None = None, exclude: str | None = None) -> Calibration:
    """The device's FLOP/s and each method's factor from docs/perf/ (base rows: the rate; a method's row: its
    factor), then scaled by the median predicted/recorded train seconds of `records` run on that device (the record
    `exclude` left out)."""
    data = plan_data()
    gpu = data["gpus"].get(device) if device != "cpu" else None
    if device != "cpu" and gpu is None:
        raise ConfigError(f"unknown GPU {device!r}; valid choices: cpu, {', '.join(data['gpus'])}")
    peak = gpu["bf16_tflops"] * 1e12 if gpu else None
    tables = [t for t in perf_tables() if _device_kind(t.device) == _device_kind(device)]
    own = [t for t in tables if device == "cpu" or gpu_key(t.device) == device]
    tables = own or tables  # this GPU's own tables where there are any, else every GPU's (utilisation assumed alike)
    utilisations, factors, sources = [], defaultdict(list), []
    for table in tables:
        rates = {m: perf_row_flops(table, m, p) / s for m, (s, p) in table.rows.items()}
        base = statistics.median(rates[m] for m in BASE_ROWS if m in rates)
        table_peak = None if device == "cpu" else plan_data()["gpus"].get(gpu_key(table.device) or "", {}).get(
            "bf16_tflops")  # fmt: skip
        utilisations.append(base if device == "cpu" else base / (table_peak * 1e12) if table_peak else None)
        for method, rate in rates.items():
            factors[method].append(base / rate)
        sources.append(f"docs/perf/{table.path.name} ({table.device}, {len(table.rows)} rows)")
    utilisations = [u for u in utilisations if u]
    if utilisations:
        rate = statistics.median(utilisations) * (peak or 1.0)
    else:
        rate = data["default_utilisation"] * peak if peak else 50e9
        sources.append("no docs/perf table for this device: assumed " + (
            f"{data['default_utilisation']:.2f} of peak" if peak else "50 GFLOP/s"))  # fmt: skip
    calibration = Calibration(device, rate, {m: statistics.median(f) for m, f in factors.items()}, sources, peak,
                              gpu["bandwidth_tbs"] * 1e12 if gpu else None)  # fmt: skip
    mine = [r for r in records or [] if _record_device(r) == device and r.get("run_id") != exclude]
    ratios = []
    for record in mine:
        try:
            cost = record_cost(record, device)
        except (ConfigError, KeyError, TypeError):  # a record the plan cannot model (another harness version)
            continue
        if cost is None or not record.get("train_seconds"):
            continue
        predict_times(cost, calibration)
        ratios.append(cost.train_seconds / record["train_seconds"])
    if ratios:
        scale = statistics.median(ratios)
        calibration.flops_per_second *= scale
        what = "this machine's" if device == "cpu" else "recorded"
        calibration.sources.append(f"x {scale:.2f} from {len(ratios)} of {what} runs in the store")
    return calibration


def _record_device(record: dict[str, Any]) -> str | None:
    device = record.get("device")
    if device in (None, "cpu"):
        return "cpu" if device == "cpu" else None
    return gpu_key(device)


def predict_times(cost: RunCost, calibration: Calibration) -> RunCost:
    """Seconds of a run under a calibration: FLOPs over the calibrated rate (x the method's factor for training);
    decoding at least the time to read the weights once per step on a GPU."""
    rate = calibration.flops_per_second
    cost.method_factor = calibration.factor(cost.key["method"])
    cost.train_seconds = cost.train_flops * cost.method_factor / rate
    decode_flops = cost.eval_flops - cost.prefill_flops
    if cost.decode_steps and calibration.bandwidth:
        floor = cost.decode_steps * cost.weight_bytes_read / calibration.bandwidth
        cost.eval_seconds = cost.prefill_flops / rate + max(decode_flops / rate, floor)
    else:
        cost.eval_seconds = cost.eval_flops / rate
    cost.seconds = cost.train_seconds + cost.eval_seconds
    return cost


def record_cost(record: dict[str, Any], device: str) -> RunCost | None:
    """The predicted cost of a recorded run from the config it recorded (None when it cannot be planned)."""
    config = record.get("config") or {}
    if not all(k in config for k in ("method", "model", "task", "trainer")):
        return None
    experiment = {k: config[k] for k in ("method", "model", "task", "trainer")}
    experiment.update(rank=record.get("rank"), lr=record.get("lr"), seed=record.get("seed"), data=record.get("data"))
    return run_cost(experiment, device)


# ---------------------------------------------------------------- a sweep


@dataclass
class SweepPlan:
    sweep: str
    device: str
    gpus: int
    points: int
    runs: list[RunCost]
    calibration: Calibration

    def totals(self, by: str | None) -> dict[str, dict[str, float]]:
        groups: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for cost in self.runs:
            group = groups[str(cost.key[by]) if by else "sweep"]
            group["runs"] += 1
            group["train_tokens"] += cost.train_tokens
            group["eval_tokens"] += cost.eval_tokens + cost.generated_tokens
            group["flops"] += cost.train_flops + cost.eval_flops
            group["seconds"] += cost.seconds
            group["peak_gib"] = max(group["peak_gib"], cost.peak_gib)
        return groups

    def wall_seconds(self) -> float:
        """The sweep's wall time on `gpus` devices, one run each at a time (longest runs placed first)."""
        loads = [0.0] * self.gpus
        for seconds in sorted((c.seconds for c in self.runs), reverse=True):
            heapq.heapreplace(loads, loads[0] + seconds)
        return max(loads)


def plan_sweep(sweep: str, overrides: list[str] | None = None, device: str | None = None, gpus: int = 1,
               store: str | None = None) -> SweepPlan:  # fmt: skip
    """Every distinct run of a sweep with its predicted cost on `device` (default: plan_data's default GPU)."""
    from peftbench.bench.grid import resolve_grid
    from peftbench.core.store import RunStore

    if gpus < 1:
        raise ConfigError(f"--gpus {gpus} is not valid; give a positive integer")
    grid = resolve_grid(sweep, overrides)
    if device is None:  # a sweep of models on this machine (the demos) runs on its CPU; the paper sweeps on a GPU
        local = all(e["model"].get("source") != "hub" for e in grid.experiments.values())
        device = "cpu" if local else plan_data()["default_gpu"]
    records = _all_records(RunStore(store)) if store else []
    calibration = calibrate(device, records)
    shared: dict[str, RunCost] = {}
    runs = []
    for run_id, experiment in grid.experiments.items():
        cost_key = json.dumps({k: v for k, v in experiment.items() if k not in ("lr", "seed")}, sort_keys=True,
                              default=str)  # fmt: skip
        if cost_key not in shared:
            shared[cost_key] = predict_times(run_cost(experiment, device), calibration)
        cost = shared[cost_key]
        runs.append(RunCost(**{**cost.__dict__, "key": {**cost.key, "lr": experiment["lr"],
                                                         "seed": experiment["seed"], "run_id": run_id}}))  # fmt: skip
    return SweepPlan(sweep, device, gpus, len(grid.points), runs, calibration)


def _all_records(store: Any) -> list[dict[str, Any]]:
    return [r for sweep in store.sweeps() for r in store.iter_records(sweep) if r.get("status") == "ok"]


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def describe_plan(plan: SweepPlan, detail: bool = False) -> str:
    device = "this machine's CPU" if plan.device == "cpu" else plan_data()["gpus"][plan.device]["name"]
    hours = "CPU-hours" if plan.device == "cpu" else "GPU-hours"
    lines = [f"plan of sweep {plan.sweep!r}: {plan.points} grid points, {len(plan.runs)} runs, on {device}",
             f"  rate: {plan.calibration.describe()}"]  # fmt: skip
    sources = sorted({c.lengths_source for c in plan.runs})
    lines.append(f"  token lengths: {', '.join(sources)} (bench/plan_data.yaml)")
    header = f"  {'':<22} {'runs':>5} {'train tok':>10} {'eval tok':>10} {'FLOPs':>9} {'peak GiB':>8} {hours:>10}"
    for by in ("method", "task", None):
        groups = plan.totals(by)
        lines.append(f"per {by}:" if by else "whole sweep:")
        lines.append(header)
        for name, g in groups.items():
            lines.append(f"  {name:<22} {int(g['runs']):>5} {_si(g['train_tokens']):>10} {_si(g['eval_tokens']):>10} "
                         f"{_si(g['flops']):>9} {g['peak_gib']:>8.1f} {g['seconds'] / 3600:>10.2f}")  # fmt: skip
    fits: dict[Any, int] = defaultdict(int)
    for cost in plan.runs:
        fits[cost.fits()] += 1
    caps = plan_data()["capacities_gib"]
    fit_text = ", ".join(f"{fits[c]} on {c} GB" for c in caps if fits[c])
    if fits[None]:
        fit_text += f", {fits[None]} on none of them"
    lines.append(f"fits (smallest of {'/'.join(map(str, caps))} GB, peak + {plan_data()['overhead_gib']} GiB): "
                 f"{fit_text}")  # fmt: skip
    total = sum(c.seconds for c in plan.runs)
    lines.append(f"total: {total / 3600:.2f} {hours}" + (
        f"; {_hours(plan.wall_seconds())} wall on {plan.gpus} {'GPUs' if plan.gpus > 1 else 'GPU'} "
        "(one run per GPU at a time)" if plan.device != "cpu" else ""))  # fmt: skip
    if detail:
        lines.append("runs (one line per cost; runs that differ only in lr and seed cost the same):")
        seen: dict[str, int] = defaultdict(int)
        first: dict[str, RunCost] = {}
        for cost in plan.runs:
            label = f"{cost.key['method']} {cost.key['model']} {cost.key['task']} r{cost.key['rank']}"
            seen[label] += 1
            first.setdefault(label, cost)
        for label, cost in first.items():
            gib = {k: v / GIB for k, v in cost.memory.items()}
            lines.append(
                f"  {label} x{seen[label]}: {cost.steps} steps, {_si(cost.train_tokens)} train tok, "
                f"{_si(cost.train_flops + cost.eval_flops)}FLOP, {cost.trainable:,} trainable, "
                f"peak {cost.peak_gib:.1f} GiB (weights {gib['weights']:.1f}, "
                f"grads+AdamW {gib['gradients'] + gib['optimizer']:.1f}, act. {gib['activations']:.1f}, "
                f"gen. {gib['generation']:.1f}), {cost.seconds:.0f} s"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- --check


@dataclass(frozen=True)
class CheckRow:
    run_id: str
    label: str
    device: str
    predicted: float
    recorded: float
    predicted_gib: float | None
    recorded_gib: float | None

    @property
    def ratio(self) -> float:
        return self.predicted / self.recorded


def check_store(sweep: str, store_root: str) -> list[CheckRow]:
    """Every ok record of a sweep predicted on the device it ran on (its own record left out of the calibration)."""
    from peftbench.core.store import RunStore

    store = RunStore(store_root)
    records = [r for r in store.iter_records(sweep) if r.get("status") == "ok" and r.get("run_seconds")]
    if not records:
        raise ConfigError(f"no ok record of sweep {sweep!r} under {store_root!r}: nothing to check")
    everything = _all_records(store)
    rows = []
    for record in records:
        device = _record_device(record)
        if device is None:
            continue
        cost = record_cost(record, device)
        if cost is None:
            continue
        predict_times(cost, calibrate(device, everything, exclude=record["run_id"]))
        recorded_gib = None
        if record.get("peak_memory_kind") == "cuda_allocated" and record.get("peak_memory_bytes"):
            recorded_gib = record["peak_memory_bytes"] / GIB
        label = f"{record['method']} {record['task']} r{record['rank']} lr={record['lr']:g} s{record['seed']}"
        rows.append(CheckRow(record["run_id"], label, device, cost.seconds, float(record["run_seconds"]),
                             cost.peak_gib if recorded_gib is not None else None, recorded_gib))  # fmt: skip
    return rows


def median_error(rows: list[CheckRow]) -> float:
    """The median of |predicted / recorded - 1| over the rows."""
    return statistics.median(abs(r.ratio - 1) for r in rows)


def describe_check(sweep: str, rows: list[CheckRow]) -> str:
    lines = [f"plan --check of sweep {sweep!r}: {len(rows)} recorded runs, each predicted with a calibration that "
             "leaves its own record out"]  # fmt: skip
    lines.append(f"  {'run':<12} {'device':<6} {'run':<38} {'pred s':>8} {'rec s':>8} {'ratio':>6} {'pred GiB':>9} "
                 f"{'rec GiB':>8}")  # fmt: skip
    for r in rows:
        memory = (f"{r.predicted_gib:>9.2f} {r.recorded_gib:>8.2f}" if r.recorded_gib is not None
                  else f"{'-':>9} {'-':>8}")  # fmt: skip
        lines.append(f"  {r.run_id:<12} {r.device:<6} {r.label:<38} {r.predicted:>8.1f} {r.recorded:>8.1f} "
                     f"{r.ratio:>6.2f} {memory}")  # fmt: skip
    lines.append(f"median time error: {median_error(rows):.1%} (|predicted / recorded - 1|)")
    memory = [r for r in rows if r.recorded_gib]
    if memory:
        error = statistics.median(abs(r.predicted_gib / r.recorded_gib - 1) for r in memory)
        lines.append(f"median peak-memory error: {error:.1%} over {len(memory)} GPU records")
    else:
        lines.append("peak memory: no GPU record (a CPU's resident set is not the model's peak; see docs/plan.md)")
    return "\n".join(lines)


CSV_FIELDS = ("run_id", "method", "model", "task", "rank", "lr", "seed", "train_rows", "steps", "train_tokens",
              "eval_tokens", "generated_tokens", "train_flops", "eval_flops", "trainable", "total_params",
              "weights_gib", "gradients_gib", "optimizer_gib", "activations_gib", "generation_gib", "peak_gib",
              "fits_gib", "train_seconds", "eval_seconds", "seconds")  # fmt: skip


def write_csv(plan: SweepPlan, path: str) -> Path:
    """One row per run: its key, tokens, FLOPs, parameters, memory parts (GiB), smallest fitting GPU and seconds."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for cost in plan.runs:
            row = {**cost.key, **{f"{k}_gib": v / GIB for k, v in cost.memory.items() if k != "peak"}}
            row.update(peak_gib=cost.peak_gib, fits_gib=cost.fits())
            row.update({k: getattr(cost, k) for k in CSV_FIELDS if hasattr(cost, k) and k != "peak_gib"})
            writer.writerow({k: row.get(k) for k in CSV_FIELDS})
    return out
