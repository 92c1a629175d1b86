"""MiLoRA (Wang et al. 2024, arXiv 2406.09044): PiSSA with the r *smallest* singular triplets.

With W0 = U·diag(S)·Vᵀ: A = diag(√(S_min/s))·V_minᵀ, B = U_min·diag(√(S_min/s)), W_res = W0 − s·B·A,
so W_res + s·B·A = W0 and s·B·A is W0's minor rank-r part. Built on PEFT's LoRA layer (only the init
is ours), so a saved adapter is a plain PEFT LoRA adapter relative to the original W0 (rank 2r,
converted like PiSSA's) that `PeftModel.from_pretrained` loads onto the untouched base model.

`goat_variant: true` reproduces the MiLoRA of GOAT's code base (Facico/GOAT-PEFT
`goat/peta/src/goat/layer.py:127-142, 164-168, 209`, init_type "milora"), which GOAT's tables ran: S is
divided by s·ρ with ρ = 10 and the usual s = α/r, so the adapter holds a tenth of the minor part,
s·B·A = U_min·diag(S_min/10)·V_minᵀ, and W_res = W0 − s·B·A.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft.tuners.lora import LoraLayer
from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import LoraParams, ResidualInitLora

GOAT_RHO = 10.0  # GOAT's layer.py: `rho = 10`


@dataclass
class MiLoraParams(LoraParams):
    goat_variant: bool = field(default=False, metadata={"help": "GOAT's in-repo variant: S/(s·ρ), ρ = 10"})


@torch.no_grad()
def svd_init(layer: LoraLayer, part: Literal["major", "minor"], rho: float) -> None:
    """A, B from W0's r largest ("major", PiSSA) or smallest ("minor") singular triplets, S divided by s·ρ;
    W0 ← W0 − s·B·A, so the layer's output is unchanged."""
    weight = layer.base_layer.weight
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    rank, scale = a.shape[0], layer.scaling["default"]
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    index = slice(0, rank) if part == "major" else slice(s.numel() - rank, s.numel())
    root = torch.sqrt(s[index] / (scale * rho))
    a.copy_(root[:, None] * vh[index])
    b.copy_(u[:, index] * root[None, :])
    weight.copy_((weight.float() - scale * b.float() @ a.float()).to(weight.dtype))


def svd_init_all(peft_model: torch.nn.Module, part: Literal["major", "minor"], rho: float) -> None:
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            svd_init(module, part, rho)


@register
class MiLora(ResidualInitLora):
    name = "milora"
    Params = MiLoraParams

    def apply(self, model: torch.nn.Module, params: MiLoraParams, ctx: RunContext) -> torch.nn.Module:
        peft_model = super(ResidualInitLora, self).apply(model, params, ctx)  # plain LoRA, then our init
        svd_init_all(peft_model, "minor", GOAT_RHO if params.goat_variant else 1.0)
        return self._keep_initial(peft_model)

    def peft_options(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        return {}
