"""Gradient accumulation check: the gradient of one optimizer step at GA = 1 against GA = k on the same rows.

`python scripts/ga_gradients.py` builds a tiny classifier and a tiny causal LM (dropout off), adapts them with a
PEFT method (LoRA), a native one (MoLoRA, balance loss off) and one with an auxiliary loss (LoRA+MPCo), and
trains one optimizer step through the harness's Trainer on the same 8 rows at GA 1 (batch 8), GA 2 (4) and
GA 4 (2). It prints the norm of the head's gradient (the classifier's `out_proj`; the LM's head is frozen; taken
before clipping, which is off), the norm of all trainable gradients, and the largest relative difference to the
definition, one forward and backward of the 8 rows as one batch outside the Trainer: equal gradients mean GA = k
trains like GA = 1 at k times the micro-batch. The LM's rows have different lengths and prompt masks, so a
per-row (rather than per-token) weighting would show, and some are trained on their inputs (label 0 kept), so a
token count that does not skip position 0 would show. docs/running.md quotes the figures.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.bench.config import CONF_DIR  # noqa: E402
from peftbench.bench.models import load_classifier, load_model  # noqa: E402
from peftbench.bench.train import BenchTrainer  # noqa: E402
from peftbench.methods.base import RunContext, get_method  # noqa: E402

ROWS = 8
# PEFT's LoRA; our MoLoRA (its balance loss off: a statistic of the micro-batch's routing, it cannot equal the
# full batch's); LoRA+MPCo, whose auxiliary loss (a penalty on the weights) is the same for any batch
METHODS: list[tuple[str, dict[str, Any]]] = [("lora", {}), ("molora", {"aux_loss_coef": 0.0}), ("lora_mpco", {})]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def spec_of(name: str, **config: Any) -> Any:
    spec = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    spec.config.update(config)
    return spec


def classifier_rows(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(5, 1000, (12,), generator=generator), "label": torch.tensor(i % 2)}
        for i in range(ROWS)
    ]


def lm_rows(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Rows of 6..20 tokens whose first 0..3 (the prompt) are masked out of the loss (none: trained on inputs)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(ROWS):
        length = 6 + (5 * i) % 15
        ids = torch.randint(5, 1000, (length,), generator=generator)
        labels = ids.clone()
        labels[: i % 4] = -100
        rows.append({"input_ids": ids, "label": labels})
    return rows


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right padding (pad 0, label -100 on padding for the LM); a classifier's labels are one per row."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = row["input_ids"]
        mask[i, : len(row["input_ids"])] = 1
    if rows[0]["label"].dim() == 0:
        labels = torch.stack([r["label"] for r in rows])
    else:
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row["label"])] = row["label"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class GradientCapture(TrainerCallback):
    """The accumulated gradients just before the optimizer step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 (Trainer's)
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return control


def adapted(base: torch.nn.Module, spec: Any, method_name: str, rows: list, **values: Any) -> tuple:
    """(model, method, params, ctx): the method on a copy of `base`, every trainable weight moved off its init."""
    method = get_method(method_name)
    params = method.parse({"name": method_name, **values})
    ctx = RunContext(
        rank=8, lr=1e-3, seed=0, target_modules=list(spec.target_modules), head_modules=list(spec.head_modules),
        total_steps=1, sample_batches=lambda n: [collate(rows)] * n,
    )  # fmt: skip
    torch.manual_seed(1)
    model = method.adapt(copy.deepcopy(base), params, ctx)
    with torch.no_grad():  # move the zero-initialised factors, so that every adapter weight has a gradient
        generator = torch.Generator().manual_seed(3)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model, method, params, ctx


def reference_gradients(base: torch.nn.Module, spec: Any, method_name: str, rows: list, **values: Any) -> dict:
    """The definition: one forward and backward of all rows as one batch (the model's mean loss + the aux loss)."""
    model, method, params, _ = adapted(base, spec, method_name, rows, **values)
    model.train()
    loss = model(**collate(rows)).loss
    aux = method.aux_loss(model, params)
    (loss + aux if aux is not None else loss).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step(
    base: torch.nn.Module, spec: Any, method_name: str, rows: list, micro_batch: int, accumulation: int, **values: Any
) -> tuple[dict[str, torch.Tensor], float]:
    """(gradients, logged loss) of one optimizer step through the harness's Trainer over all rows:
    `accumulation` micro-batches of `micro_batch` rows."""
    model, method, params, ctx = adapted(base, spec, method_name, rows, **values)
    capture = GradientCapture()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=1, per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=accumulation, learning_rate=1e-3, max_grad_norm=0.0, report_to="none",
            disable_tqdm=True, save_strategy="no", label_names=["labels"], remove_unused_columns=False,
            use_cpu=True, seed=0, data_seed=0, logging_steps=1,
        )  # fmt: skip
        trainer = BenchTrainer(
            model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[capture], method=method,
            method_params=params, ctx=ctx,
        )  # fmt: skip
        trainer.train()
    return capture.grads, next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)


def one_step_gradients(*args: Any, **values: Any) -> dict[str, torch.Tensor]:
    return one_step(*args, **values)[0]


def one_step_loss(*args: Any, **values: Any) -> float:
    return one_step(*args, **values)[1]


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest ‖a − b‖ / ‖a‖ over the parameters."""
    return max(float((a[n] - b[n]).norm() / a[n].norm().clamp_min(1e-30)) for n in a)


def cases() -> list[tuple[str, torch.nn.Module, Any, list, str]]:
    classifier_spec = spec_of("tiny-roberta", **NO_DROPOUT)
    lm_spec = spec_of("tiny-llama")
    torch.manual_seed(0)
    classifier = load_classifier(classifier_spec, 2, 0)
    torch.manual_seed(0)
    lm = load_model(lm_spec, "causal-lm")
    return [
        ("classifier", classifier, classifier_spec, classifier_rows(), "out_proj.weight"),
        ("causal LM", lm, lm_spec, lm_rows(), "lm_head.weight"),
    ]


def main() -> None:
    print("| model | method | GA × batch | head grad norm | all grads norm | max rel. diff to one batch of 8 |")
    print("|---|---|---|---|---|---|")
    for label, base, spec, rows, head in cases():
        for method_name, values in METHODS:
            reference = reference_gradients(base, spec, method_name, rows, **values)
            for accumulation in (1, 2, 4):
                grads = one_step_gradients(base, spec, method_name, rows, ROWS // accumulation, accumulation, **values)
                key = next((n for n in grads if n.endswith(head)), None)
                head_norm = f"{grads[key].norm():.4f}" if key else "— (no trained head)"
                total = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
                print(
                    f"| {label} | {method_name} | {accumulation} × {ROWS // accumulation} | {head_norm} | "
                    f"{total:.4f} | {relative_difference(reference, grads):.2e} |"
                )


if __name__ == "__main__":
    main()
