"""LoRA-GA (Wang et al. 2024, arXiv 2407.05000) through PEFT's `init_lora_weights="lora_ga"`.

Before training, the gradient of each target weight is estimated on a few batches of the task's
training split (`calibration_batches`); A and B are taken from its SVD so that the first step of
LoRA approximates the full fine-tuning gradient, and W_res = W0 − s·B·A.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import LoraGAConfig, get_peft_model
from peft.tuners.lora import preprocess_loraga

from bench.errors import ConfigError
from methods.base import RunContext, register
from methods.lora import LoraParams, ResidualInitLora, lora_config


@dataclass
class LoraGaParams(LoraParams):
    calibration_batches: int = field(default=8, metadata={"help": "training batches used to estimate gradients"})
    direction: Literal["ArBr", "A2rBr", "ArB2r", "random"] = field(
        default="ArB2r", metadata={"help": "which gradient singular vectors go to A and B (PEFT's option)"}
    )
    scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = field(
        default="stable", metadata={"help": "scaling of the init (PEFT's option; the paper's 'stable')"}
    )
    stable_gamma: int = field(default=16, metadata={"help": "γ of the stable scaling"})

    def check(self) -> None:
        super().check()
        if self.calibration_batches < 1:
            raise ConfigError(
                f"method.calibration_batches={self.calibration_batches} is not valid; give a positive integer"
            )


@register
class LoraGa(ResidualInitLora):
    name = "lora_ga"
    Params = LoraGaParams

    def peft_options(self, params: LoraGaParams, ctx: RunContext) -> dict[str, Any]:
        ga = LoraGAConfig(direction=params.direction, scale=params.scale, stable_gamma=params.stable_gamma)
        return {"init_lora_weights": "lora_ga", "lora_ga_config": ga}

    def apply(self, model: torch.nn.Module, params: LoraGaParams, ctx: RunContext) -> torch.nn.Module:
        config = lora_config(params, ctx, **self.peft_options(params, ctx))
        batches = ctx.sample_batches(params.calibration_batches)
        device = next(model.parameters()).device

        def train_step() -> None:
            for batch in batches:
                model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()

        preprocess_loraga(model, config, train_step)
        return self._keep_initial(get_peft_model(model, config))
