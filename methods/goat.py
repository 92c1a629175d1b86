"""GOAT (Fan et al. 2025, arXiv 2502.16894): LoRA-MoE with SVD-segment init, weight alignment and a scale.

With W0 = U·diag(S)·Vᵀ, the min(in, out) singular indices are split into E equal chunks; expert i takes
the first r_e indices of chunk i (`goat_mini`: the last r_e) and
A_i = diag(√(S_seg/(s·ρ)))·V_segᵀ,  B_i = U_seg·diag(√(S_seg/(s·ρ))),  so s·B_i·A_i = U_seg·diag(S_seg/ρ)·V_segᵀ.
ρ = 10 in the released code (each expert holds a tenth of its segment); ρ = 1 puts all of it in.
Weight alignment: W_res = W0 − (1/E)·Σ_i s·B_i·A_i, so under uniform routing the model equals W0.
Scale: `alpha_over_r` s = α/r_e (what the released scripts run) or `gradient_aligned`
s = √(3·η·in/r_e) (the paper's derivation; η = full-FT lr / LoRA lr, default 1).
Router, top-k and load balancing: `peftbench.methods.moe`. Trainable: E·r_e·(in + out) + in·E per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.moe import MoeLoraLayer, MoeMethod, MoeParams
from torch import nn


@dataclass
class GoatParams(MoeParams):
    init: Literal["goat", "goat_mini"] = field(
        default="goat", metadata={"help": "goat: first r_e indices of each segment; goat_mini: the last r_e"}
    )
    rho: float = field(default=10.0, metadata={"help": "ρ: each expert holds S_seg/ρ (released code: 10)"})
    scale: Literal["alpha_over_r", "gradient_aligned"] = field(
        default="alpha_over_r", metadata={"help": "s = α/r_e, or the derived s = √(3·η·in/r_e)"}
    )
    eta: float = field(default=1.0, metadata={"help": "η of the gradient-aligned scale (full-FT lr / LoRA lr)"})

    def check(self) -> None:
        super().check()
        if self.rho <= 0 or self.eta <= 0:
            raise ConfigError(f"method.rho={self.rho} and method.eta={self.eta} must be positive")


def segment_indices(dims: int, experts: int, expert_rank: int, mini: bool) -> list[torch.Tensor]:
    """The singular indices of each expert: its chunk's first (or last) r_e."""
    chunk = dims // experts
    starts = [i * chunk + (chunk - expert_rank if mini else 0) for i in range(experts)]
    return [torch.arange(start, start + expert_rank) for start in starts]


@torch.no_grad()
def goat_init(layer: MoeLoraLayer, params: GoatParams) -> None:
    """Set A_i, B_i from W0's singular segments and replace W0 by the aligned residual."""
    if layer.transposed:
        raise ConfigError("GOAT's SVD-segment init wraps nn.Linear targets; GPT-2's Conv1D is not supported")
    w0 = layer.base_layer.weight
    u, s, vh = torch.linalg.svd(w0.float(), full_matrices=False)
    chunk = s.numel() // layer.experts
    if layer.expert_rank > chunk:
        raise ConfigError(f"r_e={layer.expert_rank} exceeds the segment size {chunk} = min(in, out) / E")
    mean_update = torch.zeros_like(w0, dtype=torch.float32)
    for i, index in enumerate(segment_indices(s.numel(), layer.experts, layer.expert_rank, params.init == "goat_mini")):
        root = torch.sqrt(s[index] / (layer.scale * params.rho))
        layer.lora_A[i].copy_(root[:, None] * vh[index])
        layer.lora_B[i].copy_((u[:, index] * root[None, :]).T)  # stored as B_iᵀ
        mean_update += layer.expert_update(i).float() / layer.experts
    w0.copy_((w0.float() - mean_update).to(w0.dtype))


@register
class Goat(MoeMethod):
    name = "goat"
    Params = GoatParams
    saves_base_weights = True  # W_res replaces W0

    def scale(self, params: GoatParams, ctx: RunContext, in_features: int) -> float:
        expert_rank = self.expert_rank(params, ctx)
        if params.scale == "gradient_aligned":
            return math.sqrt(3 * params.eta * in_features / expert_rank)
        return params.lora_alpha / expert_rank

    def make_layer(self, name: str, linear: nn.Linear, params: GoatParams, ctx: RunContext) -> MoeLoraLayer:
        layer = super().make_layer(name, linear, params, ctx)
        goat_init(layer, params)
        return layer
