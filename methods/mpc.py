"""MPC, the matrix pattern constraints of Subspace Tuning (Si et al. 2024, arXiv 2407.05417), on LoRA.

No extra parameters; on ΔW = B·A (A ∈ R^{r×in}, B ∈ R^{out×r}):
- `lora_mpco` adds λ·(‖A·Aᵀ − I_r‖_F² + ‖BᵀB − I_r‖_F²) over all layers (orthogonality),
- `lora_mpcd` adds λ·(‖A·Aᵀ − I_r‖_F² + ‖BᵀB − diag(BᵀB)‖_F²) (diagonal BᵀB),
- `lora_mpcn` puts a nonlinearity between A and B: Δ(x) = B·drop(σ(A·x)), a parallel adapter, exactly as
  the reference computes it (Subspace-Tuning `loralib/loralib/layers_PA.py`, which its tables print as both
  "PA" and "LoRA+MPCn"): no α/r factor (its `scaling` is computed and never used), dropout after the
  activation. `scale: alpha_over_r` multiplies by α/r instead — a rank-dependent learning-rate change.
The paper gives no λ: `mpc_lambda` defaults to 1e-3 (our choice) and is sweepable. MPCo/MPCd use
PEFT's LoRA layers (their A and B); MPCn needs its own layer (a nonlinearity cannot be merged).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, NativeMethod
from peftbench.methods.lora import Lora, LoraParams
from torch import nn


def mpc_penalty(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], kind: Literal["o", "d"]) -> torch.Tensor | None:
    """Σ over layers of ‖AAᵀ − I‖² + ‖BᵀB − I‖² (kind "o") or ‖BᵀB − diag(BᵀB)‖² (kind "d").

    Layers of equal shapes are stacked and done in one batched product, so the cost does not grow with
    the number of layers in kernel launches.
    """
    groups: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for a, b in pairs:
        groups[(a.shape, b.shape)].append((a, b))
    total = None
    for members in groups.values():
        a = torch.stack([m[0] for m in members])  # (L, r, in)
        b = torch.stack([m[1] for m in members])  # (L, out, r)
        eye = torch.eye(a.shape[1], device=a.device, dtype=a.dtype)
        gram_a = a @ a.transpose(1, 2)
        gram_b = b.transpose(1, 2) @ b
        target_b = eye if kind == "o" else torch.diag_embed(torch.diagonal(gram_b, dim1=1, dim2=2))
        term = (gram_a - eye).pow(2).sum() + (gram_b - target_b).pow(2).sum()
        total = term if total is None else total + term
    return total


def lora_factors(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of every PEFT LoRA layer of the active adapter."""
    return [
        (m.lora_A["default"].weight, m.lora_B["default"].weight)
        for m in model.modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
    ]


@dataclass
class MpcParams(LoraParams):
    mpc_lambda: float = field(
        default=1e-3, metadata={"help": "weight λ of the constraint (ours: the paper gives none)"}
    )

    def check(self) -> None:
        super().check()
        if self.mpc_lambda < 0:
            raise ConfigError(f"method.mpc_lambda={self.mpc_lambda} is not valid; give a number >= 0")


@register
class LoraMpco(Lora):
    name = "lora_mpco"
    Params = MpcParams
    kind: Literal["o", "d"] = "o"

    def aux_loss(self, model: nn.Module, params: MpcParams) -> torch.Tensor | None:
        penalty = mpc_penalty(lora_factors(model), self.kind)
        return None if penalty is None else params.mpc_lambda * penalty


@register
class LoraMpcd(LoraMpco):
    name = "lora_mpcd"
    kind = "d"


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class MpcnParams(LoraParams):
    activation: Literal["relu", "gelu", "tanh", "silu"] = field(
        default="relu", metadata={"help": "σ between A and B (a parallel adapter's ReLU by default)"}
    )
    scale: Literal["one", "alpha_over_r"] = field(
        default="one", metadata={"help": "one: B·drop(σ(A·x)), the reference's; alpha_over_r: times lora_alpha / r"}
    )


class MpcnLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Linear, rank: int, scale: float, activation: str, dropout: float) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **self.factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **self.factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale, self.act, self.dropout = scale, ACTIVATIONS[activation](), nn.Dropout(dropout)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.act(x @ self.lora_A.to(x.dtype).T))  # dropout after σ, as the reference
        out = hidden @ self.lora_B.to(x.dtype).T
        return out if self.scale == 1.0 else out * self.scale


@register
class LoraMpcn(NativeMethod, Method):
    name = "lora_mpcn"
    Params = MpcnParams

    def make_layer(self, name: str, linear: nn.Linear, params: MpcnParams, ctx: RunContext) -> MpcnLayer:
        scale = params.lora_alpha / ctx.rank if params.scale == "alpha_over_r" else 1.0
        return MpcnLayer(linear, ctx.rank, scale, params.activation, params.lora_dropout)
