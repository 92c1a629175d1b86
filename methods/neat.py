"""NEAT (Zhong et al. 2024, arXiv 2410.01870) through PEFT's PEANuT with depth 0.

ΔW = s·B·σ(A·W0), with A ∈ R^{r×out} (Kaiming-uniform), B ∈ R^{out×r} (zeros), σ = ReLU: the update is a
nonlinear function of the pretrained weight, not of the input, so h = W0·x + s·B·σ(A·W0)·x equals the base
at init and merges exactly. s is a plain factor (not α/r; the reference's default is 1, its NLU scripts
sweep 0.01–0.1). PEFT's `PeanutConfig(r, depth=0, act_fn="relu", scaling=s)` computes exactly the
reference's `neat_vanilla` (depth > 0 adds PEANuT's residual r×r layers). Trainable: 2·r·out per matrix.
Reference: yibozhong/neat `natural-language-understanding/neat.py` (neat_vanilla); PEFT `tuners/peanut/layer.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import PeanutConfig, get_peft_model
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.targets import check_rank, matches, require_targets
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D


@dataclass
class NeatParams:
    scaling: float = field(default=1.0, metadata={"help": "s, the factor on the update (not α/r; reference: 1.0)"})
    act_fn: str = field(default="relu", metadata={"help": "σ, a transformers ACT2FN name (NEAT: relu)"})
    depth: int = field(default=0, metadata={"help": "residual r×r layers per side (0 = NEAT; > 0 = PEANuT)"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )

    def check(self) -> None:
        if self.act_fn not in ACT2FN:
            raise ConfigError(f"method.act_fn={self.act_fn!r} is not valid; valid choices: {', '.join(sorted(ACT2FN))}")
        if self.depth < 0:
            raise ConfigError(f"method.depth={self.depth} is not valid; give an integer >= 0")


@register
class Neat(Method):
    name = "neat"
    Params = NeatParams

    def validate(self, params: NeatParams, model: torch.nn.Module, ctx: RunContext) -> None:
        check_rank(ctx.rank, require_targets(model, ctx.target_modules))
        for name, module in model.named_modules():
            if matches(name, ctx.target_modules) and isinstance(module, Conv1D):
                raise ConfigError(
                    f"target layer {name!r} is a GPT-2 Conv1D, which PEFT's PEANuT does not wrap; valid: nn.Linear"
                )

    def apply(self, model: torch.nn.Module, params: NeatParams, ctx: RunContext) -> torch.nn.Module:
        config = PeanutConfig(
            r=ctx.rank,
            depth=params.depth,
            act_fn=params.act_fn,
            scaling=params.scaling,
            target_modules=list(ctx.target_modules),
            modules_to_save=list(ctx.head_modules),
        )
        return get_peft_model(model, config)
