"""Full fine-tuning: every parameter of the model trains. The baseline every PEFT table starts with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peftbench.methods.base import Method, RunContext, register
from safetensors.torch import load_model, save_model

WEIGHTS = "model.safetensors"


@register
class FullFineTuning(Method):
    name = "full"
    uses_rank = False
    trains_base = True

    def apply(self, model: torch.nn.Module, params: object, ctx: RunContext) -> torch.nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def save(self, model: torch.nn.Module, out_dir: str) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_model(model, str(Path(out_dir) / WEIGHTS))  # handles tied weights

    def load(self, base_model: torch.nn.Module, out_dir: str, params: Any, ctx: RunContext) -> torch.nn.Module:
        load_model(base_model, str(Path(out_dir) / WEIGHTS))
        return self.adapt(base_model, params, ctx)
