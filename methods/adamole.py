"""AdaMoLE (Liu & Luo 2024, arXiv 2405.00361): LoRA experts behind a gate with a learned, per-token threshold.

Per adapted linear, E LoRA experts (A_i Kaiming, B_i = 0, s = α/r_e), a gate p = softmax(W_g·x)
(W_g ∈ R^{E×in}, no bias) and a threshold τ(x) = τ_max·sigmoid(w_τᵀ·x + b_τ), τ_max = 1/E by default:

    expert i is selected iff p_i − τ ≥ 0,   w_i = (p_i − τ) / Σ_{j selected} (p_j − τ),
    h = W0·x + Σ_{i selected} w_i·s·B_i·A_i·drop(x)            (0 when no expert is selected)

With τ_max ≤ 1/E at least one expert is always selected (max p_i ≥ 1/E > τ); τ_max = 0 selects every
expert and the layer is a dense softmax MoE. Auxiliary loss (Switch form, on the shifted gate as the
reference): E·Σ_i f_i·P_i per layer, f_i = share of tokens selecting i, P_i = mean over tokens of p_i − τ;
summed over layers, weight `aux_loss_coef` (1e-3). Defaults are AdaMoLE's `train.py:97-99`: `expert_rank=split`,
r_e = r/E (`lora_rank // num_experts`: 32 / 8 = 4, also GOAT's budget), α 16, dropout 0.05 (one mask per expert);
`full`, r_e = r, is an extension (E times the parameters), not the original. Trainable: E·r_e·(in + out) + E·in +
in + 1 per layer.
Routed by the input: cannot merge. Built on `peftbench.methods.moe` (its `route` hook).
Reference: zefang-liu/AdaMoLE `src/adamole/layer.py` (AdaMoeLayer, AdaMoleLayer), `src/peft_model.py` (get_aux_loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.moe import MoeLoraLayer, MoeMethod
from peftbench.methods.targets import check_rank, require_targets
from torch import nn


@dataclass
class AdamoleParams:
    num_experts: int = field(default=8, metadata={"help": "E, the number of LoRA experts"})
    lora_alpha: float = field(default=16, metadata={"help": "scale numerator: s = lora_alpha / r_e"})
    expert_rank: Literal["split", "full"] = field(
        default="split", metadata={"help": "split: r_e = r/E (AdaMoLE's train.py, GOAT's budget); full: r_e = r"}
    )
    tau_max: float | None = field(
        default=None, metadata={"help": "τ_max, the threshold's ceiling; null = 1/E (the reference's default)"}
    )
    aux_loss_coef: float = field(default=1e-3, metadata={"help": "weight of the load-balancing loss"})
    lora_dropout: float = field(
        default=0.05, metadata={"help": "dropout on the experts' input, one mask per expert (AdaMoLE's: 0.05)"}
    )
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )

    def check(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"method.num_experts={self.num_experts} is not valid; give a positive integer")
        if self.lora_alpha <= 0 or self.aux_loss_coef < 0:
            raise ConfigError("method.lora_alpha must be > 0 and method.aux_loss_coef >= 0")
        if self.tau_max is not None and not 0.0 <= self.tau_max <= 1.0:
            raise ConfigError(f"method.tau_max={self.tau_max} is not valid; give a value in [0, 1] or null (1/E)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} is not valid; give a value in [0, 1)")


class AdaMoleLayer(MoeLoraLayer):
    """The MoE layer of `peftbench.methods.moe` with AdaMoLE's threshold router in place of top-k."""

    def __init__(
        self, base_layer: nn.Linear, experts: int, expert_rank: int, scale: float, tau_max: float, dropout: float
    ) -> None:
        super().__init__(base_layer, experts, expert_rank, None, scale, shared_a=False, dropout=dropout)
        self.tau_max = tau_max
        self.threshold = nn.Linear(self.in_features, 1, **self.factory)  # w_τ, b_τ: nn.Linear's init, as the reference

    def thresholds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, τ): the gate's softmax (..., E) and the threshold (..., 1), float32."""
        logits = nn.functional.linear(x, self.router.weight.to(x.dtype))
        tau = self.tau_max * torch.sigmoid(
            nn.functional.linear(x, self.threshold.weight.to(x.dtype), self.threshold.bias.to(x.dtype)).float()
        )
        return torch.softmax(logits.float(), dim=-1), tau

    def route(self, x: torch.Tensor) -> torch.Tensor:
        probs, tau = self.thresholds(x)
        shifted = probs - tau
        selected = shifted >= 0
        weights = shifted * selected
        sums = weights.sum(-1, keepdim=True)
        gates = weights / torch.where(sums == 0, torch.ones_like(sums), sums)  # none selected: all weights 0
        chosen = selected.reshape(-1, self.experts).float()
        if self.training:  # E · Σ_i f_i · P_i with f_i = share of tokens selecting i, P_i = mean of p_i − τ
            self.balance_loss = self.experts * (chosen.mean(0) * shifted.reshape(-1, self.experts).mean(0)).sum()
        else:
            self.expert_load += chosen.detach().sum(0)
        return gates.to(x.dtype)


@register
class AdaMole(MoeMethod):
    name = "adamole"
    Params = AdamoleParams

    def top_k(self, params: AdamoleParams) -> int | None:
        return None

    def expert_rank(self, params: AdamoleParams, ctx: RunContext) -> int:
        return ctx.rank // params.num_experts if params.expert_rank == "split" else ctx.rank

    def validate(self, params: AdamoleParams, model: nn.Module, ctx: RunContext) -> None:
        if params.expert_rank == "split":
            super().validate(params, model, ctx)
        else:
            check_rank(ctx.rank, require_targets(model, ctx.target_modules))

    def make_layer(self, name: str, linear: nn.Linear, params: AdamoleParams, ctx: RunContext) -> AdaMoleLayer:
        expert_rank = self.expert_rank(params, ctx)
        tau_max = 1.0 / params.num_experts if params.tau_max is None else params.tau_max
        return AdaMoleLayer(
            linear, params.num_experts, expert_rank, params.lora_alpha / expert_rank, tau_max, params.lora_dropout
        )
