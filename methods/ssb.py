"""SSB from Subspace Tuning (Si et al. 2024, arXiv 2407.05417): scale both sides' subspaces.

W' = diag(l_out)·W0·diag(l_in), both ones at init, computed as l_out ⊙ (W0·(l_in ⊙ x)) + b by
`peftbench.methods.ssl.scaled_linear` (one autograd function: the output scale and the bias in one op, the gradients'
products formed once and reused, the output in the matmul's dtype under autocast; see `peftbench.methods.ssl`).
Trainable: in + out per target layer. Merging rescales W0's rows and columns.
"""

from __future__ import annotations

import torch
from peftbench.methods.base import register
from peftbench.methods.injection import AdapterLayer
from peftbench.methods.ssl import Ssl, SubspaceParams, scaled_linear
from torch import nn


class SsbLayer(AdapterLayer):
    supports_conv1d = False  # reads the base weight as (out, in)

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        self.l_in = nn.Parameter(torch.ones(self.in_features, **self.factory))
        self.l_out = nn.Parameter(torch.ones(self.out_features, **self.factory))

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_linear(x, self.base_layer.weight, self.base_layer.bias, self.l_in, self.l_out)

    def merged_weight(self) -> torch.Tensor:
        return self.l_out[:, None] * self.base_layer.weight * self.l_in[None, :]


@register
class Ssb(Ssl):
    name = "ssb"
    Params = SubspaceParams

    def make_layer(self, name: str, linear: nn.Linear, params: SubspaceParams, ctx: object) -> SsbLayer:
        return SsbLayer(linear)
