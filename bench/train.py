"""Train one model with transformers' Trainer, plus the method's hooks, and evaluate it.

The method contributes optimizer parameter groups, callbacks and an auxiliary loss through its
interface (`peftbench.methods.base.Method`); this module never names a method. A NaN/inf training loss stops
training and makes the run `diverged` (it is recorded, never dropped).

`trainer.val_loss_every: N` (with `task.held_out` rows) is LLM-Adapters' and DoRA's checkpoint choice, done by the
Trainer as their finetune.py asks it to (`eval_steps`, `save_steps`, `load_best_model_at_end`): the held-out loss
every N optimizer steps, a checkpoint at each, and the weights of the lowest-loss checkpoint restored at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.checkpoints import MarkCompleteCheckpoints
from peftbench.bench.console import quiet_progress
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext
from peftbench.tasks.base import Task, TaskData
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

PASSED_THROUGH = (
    "num_train_epochs",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "weight_decay",
    "lr_scheduler_type",
    "max_grad_norm",
    "logging_steps",
    "fsdp",
)


@dataclass
class TrainOutcome:
    """What training and evaluation produced; `diverged_at_step` is set when the loss went NaN/inf.

    `metrics` are the final model's; `history` holds the evaluations during training (`trainer.eval_every`),
    each with its `step`, the final one included, so the best can be picked where a protocol reports it.
    `held_out_losses` are the held-out losses by step (`trainer.val_loss_every`) and `restored_step` the step whose
    weights were restored (the lowest loss) and evaluated."""

    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    eval_seconds: float | None = None
    generated_tokens_per_second: float | None = None
    train_seconds: float = 0.0
    steps: int = 0
    final_loss: float | None = None
    diverged_at_step: int | None = None
    held_out_losses: list[dict[str, Any]] = field(default_factory=list)
    restored_step: int | None = None


def optimizer_steps(train_rows: int, trainer_cfg: DictConfig) -> int:
    """The number of optimizer steps the Trainer will take (what schedules and AdaLoRA need)."""
    if trainer_cfg.max_steps and trainer_cfg.max_steps > 0:
        return int(trainer_cfg.max_steps)
    batches = math.ceil(train_rows / trainer_cfg.per_device_train_batch_size)
    per_epoch = max(batches // trainer_cfg.gradient_accumulation_steps, 1)
    return int(math.ceil(per_epoch * trainer_cfg.num_train_epochs))


def batch_sampler(
    dataset: Any, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], batch_size: int, seed: int
) -> Callable[[int], list[dict[str, torch.Tensor]]]:
    """`n -> n` collated training batches from a seeded shuffle (for data-driven adapter inits and few-shot
    searches); `sample(n, batch_size=b)` makes them b rows each."""

    default_size = batch_size

    def sample(n: int, batch_size: int | None = None) -> list[dict[str, torch.Tensor]]:
        size = batch_size or default_size
        rows = dataset.shuffle(seed=seed).select(range(min(n * size, len(dataset))))
        return [collate([rows[j] for j in range(i, min(i + size, len(rows)))]) for i in range(0, len(rows), size)]

    return sample


class DivergenceGuard(TrainerCallback):
    """Stop at the first logged NaN/inf loss and remember the step."""

    def __init__(self) -> None:
        self.diverged_at_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (Trainer's signature)
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged_at_step is None:
            self.diverged_at_step = state.global_step
            control.should_training_stop = True
        return control


class PeriodicEvaluation(TrainerCallback):
    """Evaluate with the task's own metrics every `every` optimizer steps, or at each epoch's end ("epoch").

    The protocols that report the best dev score (Subspace Tuning, the LoRA paper's GLUE runs) evaluate during
    training; the last step is left to the final evaluation, which follows at once.
    """

    def __init__(self, trainer: Trainer, task: Task, data: TaskData, every: int | str) -> None:
        self.trainer, self.task, self.data, self.every = trainer, task, data, every
        # kept beside the checkpoints, so a preempted run resumes with the evaluations it had made
        self.path = Path(trainer.args.output_dir) / "eval_history.json"
        self.history: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else []

    def _evaluate(self, state) -> None:  # noqa: ANN001
        if state.global_step >= state.max_steps or any(h["step"] == state.global_step for h in self.history):
            return
        self.history.append({"step": state.global_step, **self.task.evaluate(self.trainer, self.data).metrics})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.history))

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        if isinstance(self.every, int) and state.global_step % self.every == 0:
            self._evaluate(state)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.every == "epoch":
            self._evaluate(state)
        return control


def check_eval_every(value: Any) -> int | str | None:
    """`trainer.eval_every`: null (once, at the end), a positive number of steps, or "epoch"."""
    if value is None or value == "epoch" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ConfigError(f"trainer.eval_every={value!r} is not valid; give null, a positive number of steps or 'epoch'")


def check_compile(value: Any) -> bool:
    """`trainer.compile`: true or false."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"trainer.compile={value!r} is not valid; give true or false")


def check_val_loss_every(value: Any, held_out: Any) -> int | None:
    """`trainer.val_loss_every`: null, or a positive number of steps, which needs `task.held_out` rows to score."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"trainer.val_loss_every={value!r} is not valid; give null or a positive number of steps")
    if held_out is None:
        raise ConfigError(
            f"trainer.val_loss_every={value} needs held-out rows to score; set task.held_out={{rows: 120, seed: 42}}"
        )
    return value


def best_evaluation(history: list[dict[str, Any]], primary: str) -> dict[str, Any] | None:
    """The evaluation with the highest primary metric (the earliest on ties), or None without history."""
    scored = [h for h in history if isinstance(h.get(primary), int | float) and math.isfinite(h[primary])]
    return max(scored, key=lambda h: (h[primary], -h["step"])) if scored else None


def transformers_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under PEFT's wrapper or ours (`get_base_model`), whose class decides its loss."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def loss_is_token_level(model: torch.nn.Module) -> bool:
    """Whether the model's loss is transformers' causal-LM loss: it shifts the labels, sums the tokens' losses and
    divides by `num_items_in_batch` when given one (the rule the Trainer applies to the model it unwraps)."""
    base = transformers_model(model)
    causal = LOSS_MAPPING.get(getattr(base, "loss_type", None)) is ForCausalLMLoss
    return causal and not getattr(getattr(base, "config", None), "is_encoder_decoder", False)


class BenchTrainer(Trainer):
    """The Trainer with the method's auxiliary loss and optimizer parameter groups, and gradient accumulation
    that trains as one batch: GA = k gives the gradient of GA = 1 at k times the micro-batch.

    With transformers 5 the Trainer no longer divides by the accumulation steps when the model takes loss kwargs
    (PEFT's wrapper and ours do), on the understanding that the model divides its summed loss by the accumulated
    batch's `num_items_in_batch`. A causal LM's loss does (token-level over the accumulated batch); a classifier's
    need not (RoBERTa's is the micro-batch's mean, LLaMA's divides by the count): without care the gradient grew
    k-fold at GA k. So `compute_loss` returns each micro-batch's share of the accumulated batch's loss itself.
    """

    # compute_loss returns a loss already scaled for gradient accumulation in training: the Trainer adds no division
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, method: Method, method_params: Any, ctx: RunContext, **kwargs: Any) -> None:
        self.method, self.method_params, self.ctx = method, method_params, ctx
        super().__init__(*args, **kwargs)
        self.token_level = loss_is_token_level(self.model)
        # The Trainer counts `num_items_in_batch` over labels[..., 1:] only for a causal LM it can see: it looks
        # through PEFT's wrapper, not ours, and counted a trained-on first token our model's loss never sees.
        self._loss_shifts_labels = self.token_level

    def items_in(self, inputs: dict[str, Any]) -> torch.Tensor:
        """This micro-batch's items, counted as the Trainer counts `num_items_in_batch` (labels other than -100)."""
        labels = inputs["shift_labels"] if "shift_labels" in inputs else inputs["labels"]
        if self.token_level and "shift_labels" not in inputs:
            labels = labels[..., 1:]
        return labels.ne(-100).sum()

    def _device_factor(self) -> int:
        """What the Trainer multiplies a loss divided by a global `num_items_in_batch` by (the DDP mean divides)."""
        if not self.args.average_tokens_across_devices:
            return 1
        return self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        training = model.training
        steps = getattr(self, "current_gradient_accumulation_steps", 1) if training else 1
        if self.token_level:
            # the model sums its tokens' losses over the accumulated batch's count: token-level, already scaled
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            scaled = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        else:
            # the micro-batch's mean, whatever the head does with a count (it is not passed), weighted by the
            # micro-batch's share of the accumulated rows (unequal when an epoch's last batch is short)
            items = self.items_in(inputs) if training and num_items_in_batch is not None else None
            loss, outputs = super().compute_loss(model, inputs, True)
            scaled = items is not None
            if scaled:
                loss = loss * (items / num_items_in_batch * self._device_factor())
        if training and not scaled:  # no count: the Trainer's own rule, each micro-batch weighs 1/k
            loss = loss / steps
        aux = self.method.aux_loss(model, self.method_params)
        if aux is not None:  # once per optimizer step, as at GA 1: each of the k micro-batches adds a k-th
            loss = loss + aux / steps
        return (loss, outputs) if return_outputs else loss

    # A hand-written method's checkpoint holds what its saved adapter holds (adapter, head, any base
    # weight it changes), as PEFT's does: the Trainer would save the whole state dict, which fails on
    # tied embeddings and writes the frozen base of a 7B model at every checkpoint.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.method.own_checkpoints(self.model):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.method.save(self.model, output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        return None

    def _load_best_model(self) -> None:
        """`load_best_model_at_end` for a method that writes its own checkpoints (`_save`): its own loader."""
        if not self.method.own_checkpoints(self.model):
            return super()._load_best_model()
        self.method.load_weights(self.model, self.state.best_model_checkpoint)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = model or self.model
        if not self.method.own_checkpoints(model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.method.load_weights(model, resume_from_checkpoint)
        return None

    def create_optimizer(self, model=None):  # noqa: ANN001
        if self.optimizer is None:
            groups = self.method.optimizer_param_groups(self.model, self.method_params, self.ctx)
            if groups is not None:
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                self.optimizer = optimizer_cls(groups, **kwargs)
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        factor = self.method.lr_lambda(self.method_params, self.ctx)
        if factor is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler


def training_arguments(trainer: DictConfig, axes: dict[str, Any], output_dir: str, use_bf16: bool) -> TrainingArguments:
    """TrainingArguments from the trainer config and the run's validated axes (its lr and seed)."""
    every = trainer.get("val_loss_every")
    # the held-out loss picks the checkpoint (LLM-Adapters' finetune.py:286-292): a checkpoint at each evaluation,
    # which also serves a preempted run's resume in place of checkpoint_steps; only the loss is kept (no logits)
    best = {"eval_strategy": "steps", "eval_steps": every, "save_strategy": "steps", "save_steps": every,
            "load_best_model_at_end": True, "metric_for_best_model": "loss", "greater_is_better": False,
            "prediction_loss_only": True}  # fmt: skip
    checkpoints = {
        "eval_strategy": "no",
        # checkpoints for resuming a preempted run (peftbench.bench.checkpoints); two kept, so a kill during the
        # newest save still leaves a complete one
        "save_strategy": "steps" if trainer.checkpoint_steps > 0 else "no",
        "save_steps": max(int(trainer.checkpoint_steps), 1),
    }
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=float(axes["lr"]),
        seed=int(axes["seed"]),
        data_seed=int(axes["seed"]),
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        label_names=["labels"],
        remove_unused_columns=False,  # tokenized splits hold only model inputs; wrapped models hide their signature
        logging_strategy="steps",
        logging_nan_inf_filter=False,  # keep NaN/inf visible: they make a run `diverged`
        **(best if every else checkpoints),
        save_total_limit=2,  # with load_best_model_at_end the Trainer keeps the best checkpoint besides
        report_to="none",
        disable_tqdm=not trainer.progress_bar,
        torch_compile=check_compile(trainer.get("compile", False)),
        dataloader_num_workers=0,
        **{key: trainer[key] for key in PASSED_THROUGH},
        fsdp_config=OmegaConf.to_container(trainer.fsdp_config, resolve=True) if trainer.get("fsdp_config") else None,
    )


def held_out_choice(trainer: Trainer) -> tuple[list[dict[str, Any]], int | None]:
    """(the held-out losses by step, the step whose weights `load_best_model_at_end` restored; None: none saved)."""
    losses = [  # JSON has no NaN: a non-finite loss is null (never the lowest)
        {"step": e["step"], "loss": e["eval_loss"] if math.isfinite(e["eval_loss"]) else None}
        for e in trainer.state.log_history
        if "eval_loss" in e
    ]
    best = trainer.state.best_model_checkpoint
    return losses, None if best is None else int(Path(best).name.removeprefix("checkpoint-"))


def train_and_evaluate(
    model: torch.nn.Module,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    task: Task,
    data: TaskData,
    method: Method,
    method_params: Any,
    ctx: RunContext,
    args: TrainingArguments,
    resume_from: str | None = None,
    eval_every: int | str | None = None,
) -> TrainOutcome:
    """Train (unless the method does not: `Method.trains`), then evaluate with the task's own metrics (skipped if
    training diverged)."""
    guard = DivergenceGuard()
    trainer = BenchTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.held_out if args.load_best_model_at_end else None,
        data_collator=collate,
        callbacks=[guard, MarkCompleteCheckpoints(), *method.callbacks(model, method_params, ctx)],
        method=method,
        method_params=method_params,
        ctx=ctx,
    )
    quiet_progress(trainer)
    periodic = PeriodicEvaluation(trainer, task, data, eval_every) if eval_every is not None else None
    if periodic is not None:
        trainer.add_callback(periodic)
    if method.trains:
        result = trainer.train(resume_from_checkpoint=resume_from)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        final_loss = losses[-1] if losses else result.training_loss
        outcome = TrainOutcome(
            steps=trainer.state.global_step, final_loss=float(final_loss), train_seconds=result.metrics["train_runtime"]
        )
        if args.load_best_model_at_end:
            outcome.held_out_losses, outcome.restored_step = held_out_choice(trainer)
        if guard.diverged_at_step is not None or not math.isfinite(result.training_loss):
            outcome.diverged_at_step = guard.diverged_at_step or trainer.state.global_step
            return outcome
    else:  # the method fitted the model in `apply` (LoRAHub's search): evaluated as it is, no optimizer step
        outcome = TrainOutcome()
    started = time.perf_counter()
    evaluation = task.evaluate(trainer, data)
    outcome.eval_seconds = time.perf_counter() - started
    outcome.generated_tokens_per_second = evaluation.generated_tokens_per_second
    outcome.metrics.update(evaluation.metrics)
    outcome.predictions = evaluation.predictions
    if periodic is not None:
        outcome.history = [*periodic.history, {"step": outcome.steps, **outcome.metrics}]
    outcome.metrics.update(method.extra_metrics(model))
    return outcome
