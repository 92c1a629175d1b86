"""(IA)3 (Liu et al. 2022, arXiv 2205.05638) through PEFT's `IA3Config`.

Learned vectors rescale activations: W' = l ⊙ W on the output rows of each target layer (l ∈ R^out),
or on the input of the `feedforward_modules` (l ∈ R^in); l = 1 at init, so the output equals the
base. No rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import IA3Config, get_peft_model
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.targets import require_targets


@dataclass
class Ia3Params:
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to rescale; null = the model config's target_modules"}
    )
    feedforward_modules: list[str] = field(
        default_factory=list, metadata={"help": "targets whose input (not output) is rescaled: FFN layers"}
    )


@register
class Ia3(Method):
    name = "ia3"
    Params = Ia3Params
    uses_rank = False

    def validate(self, params: Ia3Params, model: torch.nn.Module, ctx: RunContext) -> None:
        require_targets(model, [*ctx.target_modules, *params.feedforward_modules])

    def apply(self, model: torch.nn.Module, params: Ia3Params, ctx: RunContext) -> torch.nn.Module:
        targets = [*ctx.target_modules, *params.feedforward_modules]
        config = IA3Config(
            target_modules=targets,
            feedforward_modules=list(params.feedforward_modules),
            modules_to_save=list(ctx.head_modules),
        )
        return get_peft_model(model, config)
