"""TriLoRA (Feng et al. 2024, arXiv 2405.11236) and TriLoRA+MPCo (Subspace Tuning, arXiv 2407.05417).

Δ(x) = s·B·diag(e)·A·drop(x), A ∈ R^{r×in}, B ∈ R^{out×r}, e ∈ R^r; computed right to left (no out×in
matrix). Init as the reference: A and B both Kaiming-uniform(a=√5) (non-zero), e = 0, so the output
equals the base model's at init and at step 0 only e receives a gradient (∂L/∂A and ∂L/∂B carry a factor e).
Scaling: the NLU loralib adds the update unscaled (s = 1, `scale: one`, the default; Subspace-Tuning
`loralib/loralib/layers_trilora.py:52-54, 66-68, 76`); the commonsense PEFT fork multiplies by
s = α/r (`scale: alpha_over_r`; `CR_MR/peft/src/peft/tuners/trilora.py:307-310, 321-323, 355-356`).
Trainable: r(in+out) + r per target layer. Merging adds s·B·diag(e)·A to W0.

`trilora_mpco` adds the MPCo term λ·Σ_layers(‖AAᵀ − I‖_F² + ‖BᵀB − I‖_F²) to the loss (`peftbench.methods.mpc`);
`penalty: adalora_orth` uses AdaLoRA's orthogonality regulariser instead (PEFT's form, mean of unsquared
norms; AdaLoRA weighs it 0.1), the reading of TriLoRA+MPCo as AdaLoRA's parametrisation without pruning.

λ defaults to 1e-7, not LoRA-MPCo's 1e-3, because TriLoRA's B is Kaiming-uniform with fan-in r (entries
U(±1/√r), variance 1/(3r)), so BᵀB ≈ out/(3r)·I at init and the term starts at ≈ Σ_layers out²/(9r), where
LoRA's zero B starts it at ≈ 1.4·r per layer. No reference code or value exists (the paper gives none); the
weight is chosen so that the term starts of the task loss's order (cross-entropy ≈ 0.7 on a 2-class task):
measured on the six linears of every block (`scripts/trilora_mpco_init.py`), λ·penalty at init is 0.81, 0.41,
0.20, 0.10 on RoBERTa-base/DeBERTa-v3-base at r 2, 4, 8, 16 and 2.9–0.36 on RoBERTa-large — at 1e-3 it was
8,138 at r 2 on RoBERTa-base, four orders above the loss it regularises, and the step would be the penalty's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, NativeMethod, adapter_layers_of
from peftbench.methods.lowrank import LowRankParams, kaiming_, orth_reg
from peftbench.methods.mpc import mpc_penalty
from torch import nn


@dataclass
class TriLoraParams(LowRankParams):
    scale: Literal["one", "alpha_over_r"] = field(
        default="one",
        metadata={"help": "one: unscaled, the NLU loralib's (GLUE); alpha_over_r: times lora_alpha / r (CR fork)"},
    )


@dataclass
class TriLoraMpcoParams(TriLoraParams):
    mpc_lambda: float = field(
        default=1e-7,
        metadata={
            "help": "weight λ of the constraint (ours: the paper gives none; 1e-7 starts it of the loss's order)"
        },
    )
    penalty: Literal["mpco", "adalora_orth"] = field(
        default="mpco",
        metadata={"help": "mpco: Σ ‖AAᵀ−I‖² + ‖BᵀB−I‖²; adalora_orth: AdaLoRA's mean ‖·−I‖_F (weight 0.1 there)"},
    )

    def check(self) -> None:
        super().check()
        if self.mpc_lambda < 0:
            raise ConfigError(f"method.mpc_lambda={self.mpc_lambda} is not valid; give a number >= 0")


class TriLoraLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Linear, rank: int, scale: float, dropout: float) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.Parameter(kaiming_(torch.empty(rank, self.in_features, **self.factory)))
        self.lora_B = nn.Parameter(kaiming_(torch.empty(self.out_features, rank, **self.factory)))
        self.lora_E = nn.Parameter(torch.zeros(rank, **self.factory))
        self.scale, self.dropout = scale, nn.Dropout(dropout)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        hidden = (self.dropout(x) @ self.lora_A.to(x.dtype).T) * self.lora_E.to(x.dtype)
        out = hidden @ self.lora_B.to(x.dtype).T
        return out if self.scale == 1.0 else out * self.scale

    def delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B @ (self.lora_E[:, None] * self.lora_A)


@register
class TriLora(NativeMethod, Method):
    name = "trilora"
    Params = TriLoraParams

    def make_layer(self, name: str, linear: nn.Linear, params: TriLoraParams, ctx: RunContext) -> TriLoraLayer:
        scale = params.lora_alpha / ctx.rank if params.scale == "alpha_over_r" else 1.0
        return TriLoraLayer(linear, ctx.rank, scale, params.lora_dropout)


def trilora_factors(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of every TriLoRA layer."""
    return [(layer.lora_A, layer.lora_B) for layer in adapter_layers_of(model, TriLoraLayer)]


@register
class TriLoraMpco(TriLora):
    name = "trilora_mpco"
    Params = TriLoraMpcoParams

    def aux_loss(self, model: nn.Module, params: TriLoraMpcoParams) -> torch.Tensor | None:
        pairs = trilora_factors(model)
        penalty = mpc_penalty(pairs, "o") if params.penalty == "mpco" else orth_reg(pairs)
        return None if penalty is None else params.mpc_lambda * penalty
