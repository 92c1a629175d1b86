"""SSL from Subspace Tuning (Si et al. 2024, arXiv 2407.05417): scale the input-side subspace.

W' = W0·diag(l), l ∈ R^in, l = 1 at init (the paper writes Ŵ = D1·W in x·W layout), computed as
W0·(l ⊙ x), so no weight is copied. Trainable: `in` per target layer. Merging rescales W0's columns.

SSL and SSB (`peftbench.methods.ssb`, which also scales the output side) share `scaled_linear`, one autograd function
for y = l_out ⊙ (W0·(l_in ⊙ x)) + b with its backward written out. It computes what autograd computes for that
expression — in float32 the same gradients bit for bit, the forward within one rounding (the output scale and the
bias are one fused multiply-add) — with fewer full-size passes and buffers:

- the output scale and the bias are one `addcmul` (autograd: a multiply and an add, each writing T×out);
- the products whose sums are the scales' gradients (g ⊙ z, h ⊙ x) are formed once each and reused in place (the
  T×out one becomes l_out ⊙ g, the input of the backward matmul), not as separate temporaries;
- under autocast the output is in the matmul's dtype (bf16), as a plain linear's is. The earlier expression
  multiplied the bf16 matmul output by l_out cast to the *input's* dtype — float32 where a LLaMA block's
  RMSNorm feeds the layer — so SSB's q/k/v/gate/up/down outputs, and the MLP's T×11008 intermediates after them,
  ran in float32 (SSB: 1.16× PEFT LoRA and 2.2 GiB more peak memory at 8 × 1024 on an H100, docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, NativeMethod
from peftbench.methods.targets import require_targets
from torch import nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear computes in here: autocast's where it is on, else the input's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _ScaledLinear(torch.autograd.Function):
    """y = l_out ⊙ (W·(l_in ⊙ x)) + b (l_out None: W·(l_in ⊙ x) + b) over the last dimension of x."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        l_in: torch.Tensor,
        l_out: torch.Tensor | None,
    ) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):  # the casts are explicit: the backward needs them
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            xs = (x * l_in.to(x.dtype)).to(dtype)  # the scale in the input's dtype, as W0·(l ⊙ x) rounds it
            if l_out is None:
                z, y = None, F.linear(xs, w, b)
            else:
                z = F.linear(xs, w)
                scale = l_out.to(dtype)
                y = z * scale if b is None else torch.addcmul(b, z, scale)
        ctx.save_for_backward(x, w, l_in, l_out, z)
        ctx.needs_xs = ctx.needs_input_grad[1]  # a trainable base weight (not the methods' case) needs l_in ⊙ x
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, l_in, l_out, z = ctx.saved_tensors
        grad = grad.to(w.dtype).reshape(-1, grad.shape[-1])
        grad_l_out = grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        if l_out is None:
            grad_z = grad
        else:
            product = grad * z.reshape(-1, z.shape[-1])  # g ⊙ z: its column sums are l_out's gradient
            grad_l_out = product.sum(0, dtype=torch.float32).to(l_out.dtype)
            grad_z = torch.mul(grad, l_out.to(w.dtype), out=product)  # l_out ⊙ g, in the same buffer
        if ctx.needs_xs:
            xs = (x * l_in.to(x.dtype)).to(w.dtype).reshape(-1, x.shape[-1])
            grad_weight = grad_z.T @ xs
        hidden = (grad_z @ w).to(x.dtype)  # ∂L/∂(l_in ⊙ x)
        grad_x = (hidden * l_in.to(x.dtype)).view_as(x) if ctx.needs_input_grad[0] else None
        grad_l_in = hidden.mul_(x.reshape(-1, x.shape[-1])).sum(0, dtype=torch.float32).to(l_in.dtype)
        return grad_x, grad_weight, grad_bias, grad_l_in, grad_l_out


def scaled_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    l_in: torch.Tensor,
    l_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """l_out ⊙ (W·(l_in ⊙ x)) + b (without l_out: W·(l_in ⊙ x) + b), W stored (out, in) as nn.Linear's."""
    return _ScaledLinear.apply(x, weight, bias, l_in, l_out)


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
        return scaled_linear(x, self.base_layer.weight, self.base_layer.bias, self.l_in)

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
