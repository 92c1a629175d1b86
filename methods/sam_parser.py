"""SAM-PARSER (Peng et al. 2023, arXiv 2308.14604): fine-tune the singular values of each target weight.

At injection every target W0 (out×in) is decomposed once in float32, W0 = U·diag(σ)·Vᵀ (thin SVD,
k = min(in, out)); U, V and σ are frozen buffers and the fine-tuned singular values are σ' = σ + δ with the
change δ ∈ R^k trainable, initialised to 0: W' = U·diag(σ')·Vᵀ (the bias stays frozen; the rank plays no role).
Computed as W0·x + U·(δ ⊙ Vᵀx), which equals U·diag(σ')·Vᵀ·x up to the SVD's float32 round-off, is exactly the
base model at init, and forms no out×in matrix (k(in+out) per token). Trainable: min(in, out) per layer.
Merging adds U·diag(δ)·Vᵀ to W0. U, V and σ are not saved: `load` recomputes them from the base
weight (a sign flip of a pair (u_i, v_i) leaves U·diag(σ')·Vᵀ unchanged).

Why the change trains rather than σ' itself: the Trainer's weight decay (AdamW's decoupled λ·θ) pulls every
trainable tensor to 0. On σ' that shrinks W0 itself — (1 − lr·λ) per step, ×0.80 over a Subspace Tuning STS-B
run at weight decay 0.1 — where on every other adapter it pulls the update to 0, i.e. towards W0. On δ it does the
latter; without decay the two parametrisations take the same Adam steps (the gradient is the same, the init
differs by the constant σ). The reference sets no rule (its σ' never reaches the optimizer, below).
Reference: Subspace-Tuning `loralib/loralib/layers_SAMPARSER.py:52, 63-69`, which computes the SVD at the
first forward and assigns σ' as a *new* Parameter then — after the Trainer built its optimizer, so σ' is
never updated and only the head trains. `reproduce_frozen_sigma: true` freezes σ' to reproduce that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, InjectedModel, NativeMethod, adapter_layers_of
from peftbench.methods.targets import require_targets
from torch import nn


@dataclass
class SamParserParams:
    reproduce_frozen_sigma: bool = field(
        default=False,
        metadata={"help": "true: σ' stays frozen (head-only training), the reference's defect; false: σ' trains"},
    )
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )


class SamParserLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        weight = base_layer.weight.detach().to(**self.factory)
        # the thin SVD runs on meta tensors too (shapes only: parameter counting)
        u, sigma, vh = torch.linalg.svd(weight.T if self.transposed else weight, full_matrices=False)
        self.register_buffer("U", u, persistent=False)  # (out, k)
        self.register_buffer("Vh", vh, persistent=False)  # (k, in)
        self.register_buffer("sigma0", sigma, persistent=False)  # (k,)
        self.sigma_shift = nn.Parameter(torch.zeros_like(sigma))  # δ = σ' − σ: weight decay pulls it to 0, not W0

    @property
    def sigma(self) -> torch.Tensor:
        """σ' = σ + δ, the fine-tuned singular values."""
        return self.sigma0 + self.sigma_shift

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return ((x @ self.Vh.to(x.dtype).T) * self.sigma_shift.to(x.dtype)) @ self.U.to(x.dtype).T

    def delta_weight(self) -> torch.Tensor:
        return (self.U * self.sigma_shift) @ self.Vh

    def reference_weight(self) -> torch.Tensor:
        """U·diag(σ')·Vᵀ, the reference's weight (equal to the merged weight up to the SVD's round-off)."""
        return (self.U * self.sigma) @ self.Vh


@register
class SamParser(NativeMethod, Method):
    name = "sam_parser"
    Params = SamParserParams
    uses_rank = False

    def validate(self, params: SamParserParams, model: nn.Module, ctx: RunContext) -> None:
        require_targets(model, ctx.target_modules)

    def make_layer(self, name: str, linear: nn.Linear, params: SamParserParams, ctx: RunContext) -> SamParserLayer:
        return SamParserLayer(linear)

    def apply(self, model: nn.Module, params: SamParserParams, ctx: RunContext) -> InjectedModel:
        injected = super().apply(model, params, ctx)
        if params.reproduce_frozen_sigma:
            for layer in adapter_layers_of(injected, SamParserLayer):
                layer.sigma_shift.requires_grad_(False)
        return injected
