"""LoRA+ (Hayou et al. 2024, arXiv 2402.12354): LoRA with lr(B) = ratio · lr(A).

The model is PEFT's LoRA; the optimizer's parameter groups come from PEFT's
`create_loraplus_optimizer`. The run's `lr` is lr(A) (and of the head), which is what the
LR-sensitivity report sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.optimizers import create_loraplus_optimizer
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import Lora, LoraParams


@dataclass
class LoraPlusParams(LoraParams):
    loraplus_lr_ratio: float = field(
        default=16.0, metadata={"help": "lr(B) / lr(A); the LoRA+ paper's default 16 (SingLoRA's table: 20)"}
    )

    def check(self) -> None:
        super().check()
        if self.loraplus_lr_ratio < 1:
            raise ConfigError(f"method.loraplus_lr_ratio={self.loraplus_lr_ratio} is not valid; give a value >= 1")


@register
class LoraPlus(Lora):
    name = "loraplus"
    Params = LoraPlusParams

    def optimizer_param_groups(
        self, model: torch.nn.Module, params: LoraPlusParams, ctx: RunContext
    ) -> list[dict[str, Any]]:
        optimizer = create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=ctx.lr, loraplus_lr_ratio=params.loraplus_lr_ratio,
            weight_decay=ctx.weight_decay,
        )  # fmt: skip
        # only what LoRA+ decides per group: AdamW filled in its own defaults (betas, eps), which would
        # override the trainer's (the LoRA+ GLUE protocol runs β2 = 0.99)
        return [{k: g[k] for k in ("params", "lr", "weight_decay")} for g in optimizer.param_groups]
