"""Full fine-tuning: every parameter of the model trains. The baseline every PEFT table starts with."""

from __future__ import annotations

import torch

from methods.base import Method, RunContext, register


@register
class FullFineTuning(Method):
    name = "full"
    uses_rank = False

    def apply(self, model: torch.nn.Module, params: object, ctx: RunContext) -> torch.nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
