"""SSB from Subspace Tuning (Si et al. 2024, arXiv 2407.05417): scale both sides' subspaces.

W' = diag(l_out)·W0·diag(l_in), both ones at init, computed as l_out ⊙ (W0·(l_in ⊙ x)) + b.
Trainable: in + out per target layer. Merging rescales W0's rows and columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import register
from methods.injection import AdapterLayer
from methods.ssl import Ssl, SubspaceParams


class SsbLayer(AdapterLayer):
    supports_conv1d = False  # reads the base weight as (out, in)

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        self.l_in = nn.Parameter(torch.ones(self.in_features, **self.factory))
        self.l_out = nn.Parameter(torch.ones(self.out_features, **self.factory))

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x * self.l_in.to(x.dtype), self.base_layer.weight) * self.l_out.to(x.dtype)
        return out if self.base_layer.bias is None else out + self.base_layer.bias

    def merged_weight(self) -> torch.Tensor:
        return self.l_out[:, None] * self.base_layer.weight * self.l_in[None, :]


@register
class Ssb(Ssl):
    name = "ssb"
    Params = SubspaceParams

    def make_layer(self, name: str, linear: nn.Linear, params: SubspaceParams, ctx: object) -> SsbLayer:
        return SsbLayer(linear)
