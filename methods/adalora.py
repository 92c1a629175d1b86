"""AdaLoRA (Zhang et al. 2023, arXiv 2303.10512) through PEFT's `AdaLoraConfig`.

Each layer starts at `init_r` SVD-form triplets (P·diag(E)·Q) and the budget is pruned by importance
to `target_r` per layer on average between `tinit` and `total_step − tfinal`. What the run's `rank` means
differs between papers: `rank_means: target` (the AdaLoRA paper: rank = target_r, init_r = 1.5 × rank)
or `rank_means: initial` (Subspace Tuning's and LLM-Adapters' tables, whose params column counts r
triplets per layer, LoRA's count + r: rank = init_r, target_r = `target_share` × rank, as Subspace Tuning's
DeBERTaV3 scripts start at 2 and prune to 1; `init_share` starts a task above the rank, as their MNLI and CoLA
scripts start at 3 for the same target 1).
`tinit` / `tfinal` are optimizer steps (>= 1, as the papers' scripts give them) or shares of the total (< 1).
`total_step` comes from the trainer; a callback calls `update_and_allocate` after every optimizer
step, before the gradients are zeroed, as PEFT requires. The orthogonality regulariser
`orth_reg_weight`·R_orth (PEFT's form) enters the loss through `aux_loss`: PEFT adds it in
`AdaLoraModel.forward`, which the task-less `PeftModel` that `get_peft_model` returns here never calls
(its forward runs the wrapped model directly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import AdaLoraConfig, get_peft_model
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.lora import LoraParams
from peftbench.methods.lowrank import orth_reg
from peftbench.methods.targets import check_rank, require_targets
from transformers import TrainerCallback


@dataclass
class AdaLoraParams(LoraParams):
    rank_means: Literal["target", "initial"] = field(
        default="target", metadata={"help": "target: rank = target_r (init 1.5×); initial: rank = init_r"}
    )
    target_share: float = field(
        default=0.5, metadata={"help": "rank_means=initial: target_r = target_share × rank (at least 1)"}
    )
    init_share: float = field(
        default=1.0, metadata={"help": "rank_means=initial: init_r = init_share × rank (1.5: start at 3 for r 2)"}
    )
    init_r: int | None = field(
        default=None, metadata={"help": "rank_means=target: starting rank per layer; null = 1.5 × rank (12 for 8)"}
    )
    tinit: float = field(
        default=0.1, metadata={"help": "warm-up before pruning: steps (>= 1) or a share of total steps (< 1)"}
    )
    tfinal: float = field(
        default=0.2, metadata={"help": "final fine-tuning with the budget fixed: steps or a share (< 1)"}
    )
    deltaT: int = field(default=10, metadata={"help": "steps between two budget allocations"})
    beta1: float = field(default=0.85, metadata={"help": "EMA coefficient of the importance sensitivity"})
    beta2: float = field(default=0.85, metadata={"help": "EMA coefficient of the importance uncertainty"})
    orth_reg_weight: float = field(default=0.1, metadata={"help": "weight of the orthogonality regulariser"})

    def check(self) -> None:
        super().check()
        if self.deltaT < 1:
            raise ConfigError(f"method.deltaT={self.deltaT} is not valid; give a positive integer")
        if not 0.0 < self.target_share <= 1.0:
            raise ConfigError(f"method.target_share={self.target_share} is not valid; give a value in (0, 1]")
        if self.init_share < 1.0:
            raise ConfigError(f"method.init_share={self.init_share} is not valid; give a value >= 1 (init_r >= rank)")


def _steps(value: float, total: int) -> int:
    return int(round(value * total)) if value < 1 else int(value)


class _BudgetCallback(TrainerCallback):
    """Calls `update_and_allocate(step)` after each optimizer step, before `zero_grad`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.calls = 0

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        self.model.base_model.update_and_allocate(state.global_step)
        self.calls += 1
        return control


@register
class AdaLora(Method):
    name = "adalora"
    Params = AdaLoraParams

    def adalora_config(self, params: AdaLoraParams, ctx: RunContext) -> AdaLoraConfig:
        total = ctx.total_steps
        tinit, tfinal = _steps(params.tinit, total), _steps(params.tfinal, total)
        if tinit >= total - tfinal:
            raise ConfigError(
                f"method.tinit={params.tinit} and method.tfinal={params.tfinal} leave no pruning phase in "
                f"{total} steps; need tinit < total_steps - tfinal"
            )
        if params.rank_means == "initial":
            init_r, target_r = round(params.init_share * ctx.rank), max(1, round(params.target_share * ctx.rank))
        else:
            init_r, target_r = params.init_r or ctx.rank + ctx.rank // 2, ctx.rank
        return AdaLoraConfig(
            init_r=init_r,
            target_r=target_r,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=params.deltaT,
            beta1=params.beta1,
            beta2=params.beta2,
            orth_reg_weight=params.orth_reg_weight,
            total_step=total,
            lora_alpha=params.lora_alpha,
            lora_dropout=params.lora_dropout,
            target_modules=list(ctx.target_modules),
            bias=params.bias,
            modules_to_save=list(ctx.head_modules),
        )

    def validate(self, params: AdaLoraParams, model: torch.nn.Module, ctx: RunContext) -> None:
        config = self.adalora_config(params, ctx)
        if config.init_r < config.target_r:
            raise ConfigError(f"method.init_r={params.init_r} is below rank={ctx.rank}; give init_r >= rank")
        check_rank(config.init_r, require_targets(model, ctx.target_modules))

    def apply(self, model: torch.nn.Module, params: AdaLoraParams, ctx: RunContext) -> torch.nn.Module:
        return get_peft_model(model, self.adalora_config(params, ctx))

    def callbacks(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> list[TrainerCallback]:
        return [_BudgetCallback(model)]

    def aux_loss(self, model: torch.nn.Module, params: AdaLoraParams) -> torch.Tensor | None:
        """orth_reg_weight · R_orth, R_orth = the mean over layers and factors of ‖PᵀP − I‖_F (P = lora_B) and
        ‖QQᵀ − I‖_F (Q = lora_A), unsquared: PEFT's `AdaLoraModel.forward` form."""
        if params.orth_reg_weight == 0:
            return None
        pairs = [(m.lora_A["default"], m.lora_B["default"]) for m in model.modules() if _is_svd_layer(m)]
        penalty = orth_reg(pairs)
        return None if penalty is None else params.orth_reg_weight * penalty


def _is_svd_layer(module: torch.nn.Module) -> bool:
    return hasattr(module, "lora_E") and "default" in getattr(module, "lora_A", {})
