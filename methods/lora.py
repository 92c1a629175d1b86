"""LoRA (Hu et al. 2021, arXiv 2106.09685) through HF PEFT.

h = W0 x + s · B A x with A ∈ R^{r×in} (Kaiming-uniform), B ∈ R^{out×r} (zeros), s = lora_alpha / r,
so the model's output at init equals the base model's. Trainable: r·(in + out) per target layer,
plus the task head (PEFT `modules_to_save`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model

from bench.errors import ConfigError
from methods.base import Method, RunContext, register


@dataclass
class LoraParams:
    lora_alpha: float = field(default=16.0, metadata={"help": "scaling numerator: s = lora_alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )
    bias: Literal["none", "all", "lora_only"] = field(
        default="none", metadata={"help": "which biases train: PEFT's `bias` option"}
    )

    def check(self) -> None:
        if self.lora_alpha <= 0:
            raise ConfigError(f"method.lora_alpha={self.lora_alpha} is not valid; give a positive number")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} is not valid; give a value in [0, 1)")


def lora_config(params: LoraParams, ctx: RunContext, **extra: Any) -> LoraConfig:
    """PEFT's LoraConfig for this run; `extra` carries a variant's own options (use_dora, …)."""
    return LoraConfig(
        r=ctx.rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=list(ctx.target_modules),
        bias=params.bias,
        modules_to_save=list(ctx.head_modules),
        **extra,
    )


@register
class Lora(Method):
    name = "lora"
    Params = LoraParams

    def apply(self, model: torch.nn.Module, params: LoraParams, ctx: RunContext) -> torch.nn.Module:
        return get_peft_model(model, lora_config(params, ctx))
