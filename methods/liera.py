"""LieRA (Si et al. 2025, arXiv 2504.00851): a Hadamard (Lie-group) perturbation of the pretrained weight.

The paper writes W' = W0 ⊙ exp(ΔW). The reference code uses the first-order form (the default here):
W' = W0 + W0 ⊙ (s·B·A), i.e. Δ(x) = (W0 ⊙ s·B·A)·drop(x), s = α/r, A ∈ R^{r×in} Kaiming-uniform(a=√5),
B ∈ R^{out×r} zero (Subspace-Tuning `loralib/loralib/layers_LieRA.py:52-54, 66-67, 74`), so the output equals
the base model's at init and ΔW_ij = 0 wherever (W0)_ij = 0. `exact_exp: true` gives the paper's form,
W' = W0 ⊙ exp(s·B·A) = W0 + W0 ⊙ expm1(s·B·A) (our reading; the reference has no code for it).
Trainable: r(in+out) per target layer, as LoRA. Merging adds ΔW to W0 (exact).

Cost: unlike LoRA, every forward forms the out×in matrices B·A and W0 ⊙ (s·B·A) (activation memory of the
order of one weight copy per layer, as DoRA's), since the Hadamard product does not factor through x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, NativeMethod
from peftbench.methods.lowrank import LowRankParams, kaiming_
from torch import nn


@dataclass
class LieraParams(LowRankParams):
    exact_exp: bool = field(
        default=False,
        metadata={"help": "false: W0 + W0 ⊙ (s·BA), the reference's first order; true: W0 ⊙ exp(s·BA), the paper's"},
    )


class LieraLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Linear, rank: int, scale: float, dropout: float, exact_exp: bool) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.Parameter(kaiming_(torch.empty(rank, self.in_features, **self.factory)))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **self.factory))
        self.scale, self.dropout, self.exact_exp = scale, nn.Dropout(dropout), exact_exp

    def base_weight(self) -> torch.Tensor:
        """W0 as (out, in), whatever the layer's storage (GPT-2's Conv1D keeps in × out)."""
        weight = self.base_layer.weight
        return weight.T if self.transposed else weight

    def _delta_weight(self, dtype: torch.dtype) -> torch.Tensor:
        product = self.scale * (self.lora_B.to(dtype) @ self.lora_A.to(dtype))
        return self.base_weight().to(dtype) * (torch.expm1(product) if self.exact_exp else product)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x) @ self._delta_weight(x.dtype).T

    def delta_weight(self) -> torch.Tensor:
        return self._delta_weight(self.lora_A.dtype)


@register
class Liera(NativeMethod, Method):
    name = "liera"
    Params = LieraParams

    def make_layer(self, name: str, linear: nn.Linear, params: LieraParams, ctx: RunContext) -> LieraLayer:
        return LieraLayer(linear, ctx.rank, params.lora_alpha / ctx.rank, params.lora_dropout, params.exact_exp)
