"""VeRA (Kopiczko et al. 2024, arXiv 2310.11454) through PEFT's `VeraConfig`.

ΔW = Λ_b·B·Λ_d·A with A ∈ R^{r×in}, B ∈ R^{out×r} random, frozen and shared by all layers (drawn
from `projection_prng_key`); only the vectors λ_d ∈ R^r and λ_b ∈ R^out train (λ_b = 0 at init, so the
output equals the base). The paper uses r = 256, larger than many layers' sides, so the rank is not
capped by min(in, out) here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import VeraConfig, get_peft_model
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.targets import require_targets


@dataclass
class VeraParams:
    d_initial: float = field(default=0.1, metadata={"help": "initial value of λ_d"})
    vera_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    projection_prng_key: int = field(default=0, metadata={"help": "seed of the shared frozen projections A, B"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )

    def check(self) -> None:
        if not 0.0 <= self.vera_dropout < 1.0:
            raise ConfigError(f"method.vera_dropout={self.vera_dropout} is not valid; give a value in [0, 1)")


@register
class Vera(Method):
    name = "vera"
    Params = VeraParams

    def validate(self, params: VeraParams, model: torch.nn.Module, ctx: RunContext) -> None:
        require_targets(model, ctx.target_modules)

    def apply(self, model: torch.nn.Module, params: VeraParams, ctx: RunContext) -> torch.nn.Module:
        config = VeraConfig(
            r=ctx.rank,
            d_initial=params.d_initial,
            vera_dropout=params.vera_dropout,
            projection_prng_key=params.projection_prng_key,
            save_projection=True,
            target_modules=list(ctx.target_modules),
            modules_to_save=list(ctx.head_modules),
        )
        return get_peft_model(model, config)
