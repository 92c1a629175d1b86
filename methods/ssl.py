"""SSL from Subspace Tuning (Si et al. 2024, arXiv 2407.05417): scale the input-side subspace.

W' = W0·diag(l), l ∈ R^in, l = 1 at init (the paper writes Ŵ = D1·W in x·W layout), computed as
W0·(l ⊙ x), so no weight is copied. Trainable: `in` per target layer. Merging rescales W0's columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from methods.base import Method, RunContext, register
from methods.injection import AdapterLayer, NativeMethod
from methods.targets import require_targets


@dataclass
class SubspaceParams:
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )


class SslLayer(AdapterLayer):
    supports_conv1d = False  # reads the base weight as (out, in)

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        self.l_in = nn.Parameter(torch.ones(self.in_features, **self.factory))

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x * self.l_in.to(x.dtype))

    def merged_weight(self) -> torch.Tensor:
        return self.base_layer.weight * self.l_in[None, :]


@register
class Ssl(NativeMethod, Method):
    name = "ssl"
    Params = SubspaceParams
    uses_rank = False

    def validate(self, params: SubspaceParams, model: nn.Module, ctx: RunContext) -> None:
        require_targets(model, ctx.target_modules)

    def make_layer(self, name: str, linear: nn.Linear, params: SubspaceParams, ctx: RunContext) -> SslLayer:
        return SslLayer(linear)
