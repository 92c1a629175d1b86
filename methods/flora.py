"""FLoRA (Si et al. 2024, arXiv 2405.14739): a trainable r×r core between LoRA's factors.

Δ(x) = s·B·G·A·drop(x), A ∈ R^{r×in}, G ∈ R^{r×r}, B ∈ R^{out×r}, s = α/r; computed right to left (no
out×in matrix). G = 0 at init, so the output equals the base model's; A and B are both non-zero:
`init: normal` draws them from N(0, 0.02²) as the NLU loralib (Subspace-Tuning
`loralib/loralib/layers_flora.py:34-43, 56-63, 71-73`), `init: kaiming` uses Kaiming-uniform(a=√5) as the
commonsense PEFT fork (`CR_MR/peft/src/peft/tuners/flora.py:307-310, 321-323, 355`). The NLU loralib divides
by (r + 1e-5) rather than r; we use α/r (a 1e-5/r relative difference).
Trainable: r(in+out) + r² per target layer. Merging adds s·B·G·A to W0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, NativeMethod
from peftbench.methods.lowrank import LowRankParams, kaiming_
from torch import nn


@dataclass
class FloraParams(LowRankParams):
    init: Literal["normal", "kaiming"] = field(
        default="normal",
        metadata={"help": "A, B init: normal = N(0, 0.02²), the NLU loralib's (GLUE); kaiming: the CR fork's (LLaMA)"},
    )


class FloraLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Linear, rank: int, scale: float, dropout: float, init: str) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **self.factory))
        self.lora_G = nn.Parameter(torch.zeros(rank, rank, **self.factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, **self.factory))
        for factor in (self.lora_A, self.lora_B):
            if init == "normal":
                nn.init.normal_(factor, mean=0.0, std=0.02)
            else:
                kaiming_(factor)
        self.scale, self.dropout = scale, nn.Dropout(dropout)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(x) @ self.lora_A.to(x.dtype).T
        hidden = hidden @ self.lora_G.to(x.dtype).T
        return (hidden @ self.lora_B.to(x.dtype).T) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B @ self.lora_G @ self.lora_A


@register
class Flora(NativeMethod, Method):
    name = "flora"
    Params = FloraParams

    def make_layer(self, name: str, linear: nn.Linear, params: FloraParams, ctx: RunContext) -> FloraLayer:
        return FloraLayer(linear, ctx.rank, params.lora_alpha / ctx.rank, params.lora_dropout, params.init)
