"""ReLoRA (Lialin et al. 2023, arXiv 2307.05695): LoRA merged into W0 and restarted every N steps.

Every `relora_steps` optimizer steps: W0 ← W0 + s·B·A, A re-drawn (Kaiming-uniform), B = 0 — so the
model's output is unchanged by the restart — and the optimizer state of A and B is pruned (only the
`prune_keep` share largest by magnitude kept: 0.1%) or reset. The learning rate follows the jagged
cosine schedule: cosine decay to `min_lr_ratio` over the run, times a linear re-warm-up of
`restart_warmup_steps` after each restart (and of `first_warmup_steps` at the start). Built on PEFT's
LoRA layers; W0 changes during training, so a saved adapter carries the target layers' base weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import Lora, LoraParams
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

BASE_WEIGHTS = "relora_base_weights.safetensors"


@dataclass
class ReLoraParams(LoraParams):
    relora_steps: float = field(
        default=0.25, metadata={"help": "merge-and-restart period: steps (>= 1) or a share of the run (< 1)"}
    )
    restart_warmup_steps: int = field(default=10, metadata={"help": "re-warm-up steps after each restart"})
    first_warmup_steps: int | None = field(default=None, metadata={"help": "initial warm-up; null = restart's"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "the cosine decays to this share of lr"})
    optimizer_reset: Literal["prune", "reset"] = field(
        default="prune", metadata={"help": "prune A/B optimizer state to its largest entries, or zero it"}
    )
    prune_keep: float = field(default=0.001, metadata={"help": "share of optimizer-state entries kept when pruning"})

    def check(self) -> None:
        super().check()
        if self.relora_steps <= 0 or self.restart_warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("method.relora_steps must be > 0, restart_warmup_steps >= 0, min_lr_ratio in [0, 1]")
        if not 0 <= self.prune_keep <= 1:
            raise ConfigError(f"method.prune_keep={self.prune_keep} is not valid; give a value in [0, 1]")


def lora_layers(model: torch.nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]


@torch.no_grad()
def merge_and_reset(model: torch.nn.Module) -> None:
    """W0 ← W0 + s·B·A, then A re-drawn and B = 0 in every LoRA layer (the output does not change)."""
    for layer in lora_layers(model):
        base = layer.base_layer.weight
        base.add_(layer.get_delta_weight("default").to(base.dtype))
        torch.nn.init.kaiming_uniform_(layer.lora_A["default"].weight, a=math.sqrt(5))
        torch.nn.init.zeros_(layer.lora_B["default"].weight)


@torch.no_grad()
def prune_optimizer_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], keep: float | None) -> None:
    """Keep only the `keep` share largest-magnitude entries of each moment (None: zero them all)."""
    for param in params:
        for key, value in optimizer.state.get(param, {}).items():
            if key == "step" or not torch.is_tensor(value) or value.dim() == 0:
                continue
            count = int(keep * value.numel()) if keep is not None else 0
            if count == 0:
                value.zero_()
                continue
            threshold = value.abs().flatten().kthvalue(value.numel() - count + 1).values
            value.mul_(value.abs() >= threshold)


def jagged_cosine(total: int, period: int, warmup: int, first_warmup: int, min_ratio: float) -> Callable[[int], float]:
    """ReLoRA's schedule: cosine decay to `min_ratio`, times a linear warm-up after each restart."""

    def factor(step: int) -> float:
        since = step % period if step >= period else step
        ramp = first_warmup if step < period else warmup
        warm = min(1.0, (since + 1) / ramp) if ramp > 0 else 1.0
        progress = min(step / max(total, 1), 1.0)
        return warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    return factor


class RestartCallback(TrainerCallback):
    """Merge-and-restart every `period` steps (not after the last one), then prune the optimizer state."""

    def __init__(self, model: torch.nn.Module, period: int, total: int, keep: float | None) -> None:
        self.model, self.period, self.total, self.keep = model, period, total, keep
        self.restarts = 0

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001 (Trainer's signature)
        step = state.global_step
        if step % self.period == 0 and step < self.total:
            merge_and_reset(self.model)
            if optimizer is not None:
                factors = [
                    p
                    for layer in lora_layers(self.model)
                    for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)
                ]
                prune_optimizer_state(optimizer, factors, self.keep)
            self.restarts += 1
        return control


@register
class ReLora(Lora):
    name = "relora"
    Params = ReLoraParams

    def period(self, params: ReLoraParams, ctx: RunContext) -> int:
        steps = params.relora_steps
        return max(1, round(steps * ctx.total_steps) if steps < 1 else int(steps))

    def callbacks(self, model: torch.nn.Module, params: ReLoraParams, ctx: RunContext) -> list[TrainerCallback]:
        keep = params.prune_keep if params.optimizer_reset == "prune" else None
        return [RestartCallback(model, self.period(params, ctx), ctx.total_steps, keep)]

    def lr_lambda(self, params: ReLoraParams, ctx: RunContext) -> Callable[[int], float]:
        first = params.first_warmup_steps if params.first_warmup_steps is not None else params.restart_warmup_steps
        return jagged_cosine(
            ctx.total_steps, self.period(params, ctx), params.restart_warmup_steps, first, params.min_lr_ratio
        )

    def save(self, model: torch.nn.Module, out_dir: str) -> None:
        model.save_pretrained(out_dir)
        inner = model.base_model.model
        weights = {
            name: module.base_layer.weight.detach().contiguous()
            for name, module in inner.named_modules()
            if isinstance(module, LoraLayer) and "default" in module.lora_A
        }
        save_file(weights, str(Path(out_dir) / BASE_WEIGHTS))

    def load(self, base_model: torch.nn.Module, out_dir: str, params: Any, ctx: RunContext) -> torch.nn.Module:
        with torch.no_grad():
            for name, weight in load_file(str(Path(out_dir) / BASE_WEIGHTS)).items():
                base_model.get_submodule(name).weight.copy_(weight)
        return PeftModel.from_pretrained(base_model, out_dir)
